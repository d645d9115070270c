"""Best-of-N when the critic knows more than the generator: one export samples, another scores.

The rerank suite's pools (held-out arithmetic, few-shot prompts, N samples at the critic data's temperature)
from GENERATOR, scored by the generator's own critic and by CRITIC (`score_texts`, a second pass). Prints
greedy, pass@N and best-of-N by the generator's likelihood, its own critic and CRITIC, their within-problem
AUROCs, and how the wrong samples differ from the right answer.

    python bench/cross_critic.py <generator export> <critic export> [--problems 200] [--n 8]
"""

from __future__ import annotations

import argparse
from collections import Counter

from autocritic.evaluation.context import EvalContext
from autocritic.evaluation.metrics import best_of_n_curve, gap_closed, rate, within_problem_auroc
from autocritic.evaluation.rerank import Settings, pools_of, sample_answers
from autocritic.inference.generation import CriticGenerator


def error_kind(truth: str, answer: str | None) -> str:
    if answer is None:
        return "no answer"
    right, wrong = truth.lstrip("-"), answer.lstrip("-")
    if len(right) != len(wrong) or truth.startswith("-") != answer.startswith("-"):
        return "other length or sign"
    if right[:-1] == wrong[:-1]:
        return "last digit only"
    return "last digit right" if right[-1] == wrong[-1] else "several digits"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("generator")
    parser.add_argument("critic")
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--n", type=int, default=8)
    args = parser.parse_args()
    settings = Settings(n_problems=args.problems, n_samples=args.n, ns=(args.n,)).resolved()
    ctx = EvalContext.for_generator(CriticGenerator.from_export(args.generator, batch_size=64))
    sampled = sample_answers(ctx, settings)
    critic = CriticGenerator.from_export(args.critic, batch_size=64)
    flat = critic.score_texts(
        [p for p, row in zip(sampled.prompts, sampled.samples, strict=True) for _ in row],
        [x.text for row in sampled.samples for x in row],
    )
    scores = [flat[k * args.n : (k + 1) * args.n] for k in range(len(sampled.problems))]
    own, other = pools_of(sampled), pools_of(sampled, scores)
    greedy = rate(sampled.greedy_right())
    curves = {name: best_of_n_curve(pools, (args.n,), settings.subsets, ctx.seed) for name, pools in (("own", own), ("other", other))}
    n = args.n
    oracle = curves["own"]["pass_at_n"][n]["accuracy"]
    print(f"{len(own)} problems, {n} samples each at T={settings.temperature}; generator {args.generator}")
    print(f"greedy {greedy:.3f}   pass@{n} {oracle:.3f}   majority {curves['own']['majority'][n]['accuracy']:.3f}")
    for label, curve, pools, of in (
        ("likelihood", curves["own"]["likelihood"], own, "likelihoods"),
        ("own critic", curves["own"]["best_of_n"], own, "scores"),
        (f"critic {args.critic}", curves["other"]["best_of_n"], other, "scores"),
    ):
        chosen = curve[n]["accuracy"]
        print(
            f"best-of-{n} by {label}: {chosen:.3f} (gap closed {gap_closed(greedy, chosen, oracle):+.1%}), "
            f"within-problem AUROC {within_problem_auroc(pools, of=of)[0]:.3f}"
        )
    kinds = Counter(
        error_kind(pool.truth, answer) for pool in own for answer, ok in zip(pool.answers, pool.correct, strict=True) if not ok
    )
    total = sum(kinds.values())
    print(f"wrong samples ({total}): " + ", ".join(f"{kind} {count / total:.0%}" for kind, count in kinds.most_common()))


if __name__ == "__main__":
    main()
