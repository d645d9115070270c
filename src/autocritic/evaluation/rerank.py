"""Suite "rerank" (the headline): does the critic pick right answers among the model's own samples?

    held-out problem ──few-shot prompt (as offline.generate)──► N samples, critic scores from the same passes
        greedy            the one greedy answer
        single sample     one of the N
        majority vote     most frequent extracted answer (self-consistency)
        likelihood        the highest mean token log-probability under the model itself: the baseline a
                          critic must beat (it costs nothing: generation computes those logits anyway)
        critic-weighted   votes weighted by sigmoid(score)
        best-of-N         the highest critic score
        pass@N            any of the N is right (the oracle ceiling)

N runs over 1, 2, 4, ... up to `n_samples`, each a random subset of the max-N pool (averaged over `subsets` draws).
The critic's AUROC and calibration (ECE, reliability diagram) are measured on all sampled answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from autocritic.errors import AutocriticError
from autocritic.evaluation import plots
from autocritic.evaluation.context import EvalContext
from autocritic.evaluation.metrics import (
    METHOD_LABELS,
    METHODS,
    Pool,
    auroc,
    best_of_n_curve,
    calibration,
    gap_closed,
    rate,
    roc_points,
    with_ci,
    within_problem_auroc,
)
from autocritic.evaluation.report import SuiteResult, Table
from autocritic.inference.generation import GenerationSettings
from autocritic.model.card import file_facts
from autocritic.model.export import read_critic_config
from autocritic.offline.generate import CARD, GenerateSettings
from autocritic.offline.labelling import answer_of, is_right
from autocritic.offline.tasks import SPLITS, few_shot_prompts

_OFFLINE = GenerateSettings()
FAMILY = "arithmetic"  # the offline critic data's family: checking an answer means computing it


@dataclass
class Settings:
    n_problems: int = 200
    n_samples: int = 16  # the largest N; smaller N subsample this pool
    ns: tuple[int, ...] = (1, 2, 4, 8, 16)
    subsets: int = 32
    gap_n: int = 8  # "fraction of the greedy → pass@N gap closed by best-of-N" at this N
    calibration_bins: int = 10
    # None: the value offline.generate used to make the critic's data (the distribution it was trained on), as
    # `critic_data_settings` finds it.
    temperature: float | None = None
    shots: int | None = None
    max_new_tokens: int | None = None
    stop: tuple[str, ...] | None = None
    pool_size: int | None = None

    def __post_init__(self) -> None:
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be above 0 (best-of-N samples its answers)")

    def resolved(self, offline: GenerateSettings = _OFFLINE) -> Settings:
        """Every None taken from `offline`, the settings that made the critic's data."""
        pick = lambda value, default: default if value is None else value  # noqa: E731
        return Settings(
            **{
                k: getattr(self, k)
                for k in ("n_problems", "n_samples", "subsets", "gap_n", "calibration_bins")
            },
            ns=tuple(sorted({n for n in self.ns if n <= self.n_samples} | {self.n_samples})),
            temperature=pick(self.temperature, offline.temperature),
            shots=pick(self.shots, offline.shots),
            max_new_tokens=pick(self.max_new_tokens, offline.max_new_tokens),
            stop=pick(self.stop, tuple(offline.stop)),
            pool_size=pick(self.pool_size, offline.train_problems),
        )


def critic_data_settings(export: Path) -> tuple[GenerateSettings, str]:
    """How offline.generate sampled the arithmetic critic data the export was trained on, and where that was read:
    the card.json beside the export's first train file, when that file is still the one it was trained on (same
    sha256); else offline.generate's defaults. A run that changed them (`offline.generate.max_new_tokens=32`) is
    then measured on the answers its critic learned from, not on the default's."""
    try:
        trained = read_critic_config(export)["data"]["train_files"][0]
        path = Path(trained["path"]).expanduser()
        card = json.loads((path.parent / CARD).read_text())
        if file_facts([str(path)])[0].get("sha256") != trained["sha256"]:
            return _OFFLINE, f"offline.generate's defaults ({path} changed since the export was trained)"
        made = card["settings"]
        if FAMILY not in made["families"]:
            return _OFFLINE, f"offline.generate's defaults ({path.parent / CARD} has no {FAMILY} problems)"
        keys = ("temperature", "shots", "max_new_tokens", "train_problems")
        settings = replace(_OFFLINE, **{k: made[k] for k in keys}, stop=tuple(made["stop"]))
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, AutocriticError):
        return _OFFLINE, "offline.generate's defaults (no card.json found beside the export's critic data)"
    return settings, f"the export's critic data was made ({path.parent / CARD})"


def mean_logprob(sample) -> float:
    """Length-normalised: a longer answer is not penalised for having more tokens. An empty one ranks last."""
    return sum(sample.logprobs) / len(sample.logprobs) if sample.logprobs else float("-inf")


@dataclass
class Sampled:
    """What `sample_answers` generates: the test problems, their few-shot prompts, the greedy answer and N samples."""

    problems: list
    prompts: list[str]
    greedy: list
    samples: list

    def greedy_right(self) -> list[bool]:
        return [is_right(p, row[0].text) for p, row in zip(self.problems, self.greedy, strict=True)]


def sample_answers(ctx: EvalContext, s: Settings) -> Sampled:
    splits = ctx.splits(FAMILY, s.n_problems, train=s.pool_size)
    problems = splits["test"]
    # The same prompts offline.generate writes for the test split (seed + split index).
    prompts = few_shot_prompts(problems, splits["train"], s.shots, ctx.seed + SPLITS.index("test"))
    common = dict(max_new_tokens=s.max_new_tokens, stop=s.stop, seed=ctx.seed)
    greedy = ctx.generator.generate(prompts, GenerationSettings(**common))
    sampled = ctx.generator.generate(
        prompts,
        GenerationSettings(
            **common,
            do_sample=True,
            temperature=s.temperature,
            top_k=0,
            top_p=1.0,
            n=s.n_samples,
            return_logprobs=True,
        ),
    )
    return Sampled(problems, prompts, greedy, sampled)


def pools_of(sampled: Sampled) -> list[Pool]:
    """One pool per problem, scored by the generating critic."""
    pools = []
    for problem, samples in zip(sampled.problems, sampled.samples, strict=True):
        pools.append(
            Pool(
                answer_of(problem, problem.answer),
                [answer_of(problem, x.text) for x in samples],
                [is_right(problem, x.text) for x in samples],
                [x.score for x in samples],
                None if any(x.logprobs is None for x in samples) else [mean_logprob(x) for x in samples],
            )
        )
    return pools


def sample_pools(ctx: EvalContext, s: Settings) -> tuple[list[Pool], list[tuple[bool, float | None]]]:
    """The N-sample pool of every problem and its greedy answer (right?, critic score)."""
    sampled = sample_answers(ctx, s)
    greedy_rows = [(ok, row[0].score) for ok, row in zip(sampled.greedy_right(), sampled.greedy, strict=True)]
    return pools_of(sampled), greedy_rows


def run(ctx: EvalContext, settings: Settings) -> SuiteResult:
    s = settings.resolved()
    pools, greedy_rows = sample_pools(ctx, s)
    greedy = rate([ok for ok, _ in greedy_rows])
    curve = best_of_n_curve(pools, s.ns, s.subsets, ctx.seed)
    scores = [x for p in pools for x in p.scores]
    labels = [x for p in pools for x in p.correct]
    within, mixed = within_problem_auroc(pools)
    has_likelihood = all(p.likelihoods is not None for p in pools)
    likelihood_within = within_problem_auroc(pools, of="likelihoods")[0] if has_likelihood else None
    calib = calibration(scores, labels, s.calibration_bins)
    gap_n = max((n for n in s.ns if n <= s.gap_n), default=s.n_samples)
    gap = {
        "n": gap_n,
        "greedy": greedy,
        "best_of_n": curve["best_of_n"][gap_n]["accuracy"],
        "pass_at_n": curve["pass_at_n"][gap_n]["accuracy"],
    }
    gap["closed"] = gap_closed(greedy, gap["best_of_n"], gap["pass_at_n"])
    critic = {
        "auroc": auroc(scores, labels),
        "within_problem_auroc": within,
        "likelihood_within_problem_auroc": likelihood_within,
        "likelihood_auroc": (
            auroc([x for p in pools for x in p.likelihoods], labels) if has_likelihood else None
        ),
        "problems_with_right_and_wrong": mixed,
        "ece": calib["ece"],
        "mean_confidence": calib.get("mean_confidence"),
        "sample_accuracy": calib.get("positive_rate"),
        "greedy_auroc": auroc([sc for _, sc in greedy_rows], [ok for ok, _ in greedy_rows]),
        "samples": len(scores),
    }
    figures = {
        "n_problems": len(pools),
        "settings": {
            "n_samples": s.n_samples,
            "ns": list(s.ns),
            "subsets": s.subsets,
            "temperature": s.temperature,
            "shots": s.shots,
            "max_new_tokens": s.max_new_tokens,
            "pool_size": s.pool_size,
        },
        "greedy_accuracy": greedy,
        "curve": curve,
        "critic": critic,
        "calibration_bins": calib["bins"],
        "calibration_quantile_bins": calib["quantile_bins"],
        "gap": gap,
    }

    plot_files = []
    if (path := ctx.plot_path("bestofn.png")) is not None:
        plot_files.append(plots.best_of_n_plot(path, curve, greedy))
        roc = roc_points(scores, labels)
        if roc is not None:
            plot_files.append(plots.roc_plot(ctx.plot_path("roc.png"), *roc, critic["auroc"]))
        plot_files.append(
            plots.reliability_plot(
                ctx.plot_path("reliability.png"), calib["bins"], calib["quantile_bins"], calib["ece"]
            )
        )

    rows = [["greedy", *([f"{greedy:.3f}"] * len(s.ns))]] + [
        [METHOD_LABELS[m], *(with_ci(curve[m][n]["accuracy"], curve[m][n]["ci95"]) for n in s.ns)]
        for m in METHODS
        if m in curve
    ]
    tables = [
        Table(
            "Accuracy by N (mean ± 95% CI over problems)",
            ["method", *(f"N={n}" for n in s.ns)],
            rows,
            note=f"{len(pools)} TEST {FAMILY} problems, {s.shots}-shot prompts as offline.generate writes them, "
            f"{s.n_samples} samples each at T={s.temperature} (max {s.max_new_tokens} new tokens); each N averages "
            f"{s.subsets} random subsets of the pool.",
        ),
        Table(
            "Critic on the sampled answers",
            [
                "AUROC",
                "AUROC within a problem",
                "likelihood's AUROC within a problem",
                "problems with right and wrong",
                "ECE",
                "mean sigmoid(score)",
                "fraction correct",
                "AUROC on greedy answers",
                "samples",
            ],
            [
                [
                    critic["auroc"],
                    critic["within_problem_auroc"],
                    critic["likelihood_within_problem_auroc"],
                    critic["problems_with_right_and_wrong"],
                    critic["ece"],
                    critic["mean_confidence"],
                    critic["sample_accuracy"],
                    critic["greedy_auroc"],
                    critic["samples"],
                ]
            ],
        ),
        Table(
            f"Greedy → pass@{gap_n} gap closed by best-of-{gap_n}",
            ["greedy", f"best-of-{gap_n}", f"pass@{gap_n}", "fraction closed"],
            [[gap["greedy"], gap["best_of_n"], gap["pass_at_n"], gap["closed"]]],
        ),
    ]
    headline = {
        "greedy accuracy": greedy,
        f"best-of-{gap_n} accuracy": gap["best_of_n"],
        f"majority@{gap_n} accuracy": curve["majority"][gap_n]["accuracy"],
        f"likelihood best-of-{gap_n} accuracy": curve["likelihood"][gap_n]["accuracy"] if has_likelihood else None,
        f"pass@{gap_n}": gap["pass_at_n"],
        f"gap closed @{gap_n}": gap["closed"],
        "critic AUROC": critic["auroc"],
        "critic ECE": critic["ece"],
    }
    return SuiteResult("rerank", figures, tables, plot_files, headline)
