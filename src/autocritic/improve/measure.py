"""A round's figures on held-out problems, read from its export on disk: greedy accuracy, majority@K, pass@K,
best-of-K by the critic and by likelihood, the critic's AUROC (all answers, and within a problem), and diversity.
The pools and metrics of the rerank suite (evaluation/metrics.py); `judge` and `answer_of` say, per world, whether
an answer is right and which answer it commits to (what majority vote groups by)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from autocritic.evaluation.metrics import Pool, auroc, best_of_n_curve, canonical, rate, within_problem_auroc
from autocritic.evaluation.rerank import mean_logprob
from autocritic.inference.generation import CriticGenerator, GenerationSettings
from autocritic.model.export import load_critic


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def measure_export(
    export: Path,
    prompts: Sequence[str],
    truths: Sequence[str],
    judge: Callable[[int, str], bool],
    answer_of: Callable[[str], str | None],
    samples: int,
    temperature: float,
    max_new_tokens: int,
    stop: tuple[str, ...],
    batch_size: int,
    seed: int,
) -> dict:
    """`judge(problem index, text)`: is it right; `answer_of(text)`: the answer it commits to."""
    loaded = load_critic(export)
    generator = CriticGenerator(loaded.model, loaded.tokenizer, loaded.template, batch_size=batch_size)
    common = dict(max_new_tokens=max_new_tokens, stop=stop, seed=seed)
    greedy = generator.generate(prompts, GenerationSettings(**common))
    sampled = generator.generate(
        prompts,
        GenerationSettings(
            **common, do_sample=True, temperature=temperature, top_k=0, top_p=1.0, n=samples, return_logprobs=True
        ),
    )
    pools = [
        Pool(truth, [answer_of(x.text) for x in row], [judge(i, x.text) for x in row], [x.score for x in row],
             [mean_logprob(x) for x in row])
        for i, (truth, row) in enumerate(zip(truths, sampled, strict=True))
    ]
    # N = K: every subset is the whole pool; the draw only orders it, which the methods ignore (ties: first).
    curve = best_of_n_curve(pools, [samples], subsets=1, seed=seed)
    at = lambda method: _rounded(curve[method][samples]["accuracy"])  # noqa: E731
    scores = [x for p in pools for x in p.scores]
    labels = [x for p in pools for x in p.correct]
    return {
        "problems": len(pools),
        "greedy_accuracy": _rounded(rate([judge(i, row[0].text) for i, row in enumerate(greedy)])),
        "sample_accuracy": _rounded(rate(labels)),
        f"majority@{samples}": at("majority"),
        f"pass@{samples}": at("pass_at_n"),
        f"best_of_{samples}_critic": at("best_of_n"),
        f"best_of_{samples}_likelihood": at("likelihood"),
        "critic_auroc": _rounded(auroc(scores, labels)),
        "critic_within_auroc": _rounded(within_problem_auroc(pools)[0]),
        "likelihood_within_auroc": _rounded(within_problem_auroc(pools, of="likelihoods")[0]),
        "distinct_answers": round(sum(len({canonical(a) for a in p.answers}) for p in pools) / max(1, len(pools)), 3),
    }
