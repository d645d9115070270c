"""Do the model's arithmetic errors depend on its few-shot examples? Likelihood averaged over other prompts.

The rerank suite's pools (held-out arithmetic, N samples at the critic data's temperature) from EXPORT; each
sample's mean token log-probability under its own prompt and under K prompts with other solved examples
(few-shot draws with other seeds). If the errors came from the examples (copying a digit from a shot), the
right answer would stay likely across prompts and the average would rank the answers to one question better.
Prints within-problem AUROC and best-of-N for the own-prompt likelihood, the K-prompt average, both, and the
critic.

    python bench/context_ensemble.py <export> [--k 4] [--problems 200] [--n 16]
"""

from __future__ import annotations

import argparse

import torch

from autocritic.data.datamodule import padded
from autocritic.evaluation.context import EvalContext
from autocritic.evaluation.metrics import best_of_n_curve, gap_closed, rate, within_problem_auroc
from autocritic.evaluation.rerank import Settings, pools_of, sample_answers
from autocritic.inference.generation import CriticGenerator
from autocritic.offline.tasks import few_shot_prompts


@torch.no_grad()
def mean_logprobs(generator: CriticGenerator, prompt: str, responses: list[str]) -> list[float]:
    """Each response's mean token log-probability after `prompt`: the first confidence feature the head reads."""
    rendered = generator.template.render_prompt(prompt)
    prompt_length = len(generator.tokenizer(rendered)["input_ids"])
    rows = [generator.tokenizer(rendered + response)["input_ids"] for response in responses]
    ids, mask = padded(rows, generator.pad_id, left=False)
    lengths = torch.full((len(rows),), prompt_length)
    output = generator.model(ids.to(generator.device), mask.to(generator.device), prompt_lengths=lengths)
    if output.confidence is None:
        raise SystemExit("this export's head does not read the model's confidence (head.confidence=false)")
    return output.confidence[:, 0].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--n", type=int, default=16)
    args = parser.parse_args()
    settings = Settings(n_problems=args.problems, n_samples=args.n).resolved()
    generator = CriticGenerator.from_export(args.export, batch_size=64)
    ctx = EvalContext.for_generator(generator)
    sampled = sample_answers(ctx, settings)
    splits = ctx.splits(settings.family, settings.n_problems, train=settings.pool_size)
    others = [few_shot_prompts(sampled.problems, splits["train"], settings.shots, 1000 + k) for k in range(args.k)]
    own = pools_of(sampled)
    averaged, both = [], []
    for index, row in enumerate(sampled.samples):
        texts = [x.text for x in row]
        per_prompt = [mean_logprobs(generator, prompts[index], texts) for prompts in others]
        mean = [sum(values) / args.k for values in zip(*per_prompt, strict=True)]
        averaged.append(mean)
        both.append([(m * args.k + lik) / (args.k + 1) for m, lik in zip(mean, own[index].likelihoods, strict=True)])
    greedy = rate(sampled.greedy_right())
    n = 8
    print(f"{len(own)} problems, {args.n} samples each at T={settings.temperature}, best-of-{n}; {args.k} other prompts")
    oracle = None
    for label, pools, of in (
        ("own-prompt likelihood", own, "likelihoods"),
        (f"{args.k}-prompt average", pools_of(sampled, averaged), "scores"),
        ("own and others", pools_of(sampled, both), "scores"),
        ("critic", own, "scores"),
    ):
        curve = best_of_n_curve(pools, (n,), settings.subsets, ctx.seed)
        method = "likelihood" if of == "likelihoods" else "best_of_n"
        oracle = curve["pass_at_n"][n]["accuracy"]
        chosen = curve[method][n]["accuracy"]
        print(
            f"{label}: within-problem AUROC {within_problem_auroc(pools, of=of)[0]:.3f}, best-of-{n} {chosen:.3f} "
            f"(gap closed {gap_closed(greedy, chosen, oracle):+.1%})"
        )
    print(f"greedy {greedy:.3f}, pass@{n} {oracle:.3f}")


if __name__ == "__main__":
    main()
