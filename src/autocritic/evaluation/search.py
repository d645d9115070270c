"""Suite "search": does searching the steps with the step critic solve problems that sampling does not?

    held-out problems that take steps, of the family the backbone learned: "chain" ("What is 58+27-19?" solved one
    operation per line) or "countdown" ("Use 3 5 8 1 to make 19.": most first steps lead nowhere)
        greedy              one greedy answer
        majority@N          the most frequent final answer of N samples (self-consistency)
        best-of-N           the N samples' best by the outcome critic (`outcome_ckpt`), or else by the step
                            critic read at the answer's end
        step best-of-N      the N samples' best by the step critic: each sample's lowest step probability (the
                            process-reward reranking of Lightman et al.; no search)
        likelihood best-of-N  the N samples' best by their mean token log-probability
        search (critic)     beam search over steps valued by the step critic, for each shape expand x beam
        search (likelihood) the same search valued by the model's own likelihood of the path (the control)
        search (rollouts)   the beam valued by greedy rollouts, for each shape expand x beam x branch depths: distinct
                            first steps (`rollout_resample`), more of them while the critic doubts every answer
                            (`rollout_widen`, `rollout_threshold`), a finished path valued by `rollout_aggregate`
        dfs (critic)        ToT's depth-first search with pruning and backtracking
        pass@N              any of the N samples is right (the ceiling of reranking)

Every method is reported as success rate (95% interval) against the mean number of sampled tokens per problem,
for all problems and by number of operations; best-of-N is compared with each search at the search's own token
count (interpolated on its curve). The step critic's AUROC is measured on every step the searches wrote, labelled
exactly by the family's checker. The trees of a few problems are drawn.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from autocritic.data.stepwise import step_prefix
from autocritic.errors import AutocriticError, ConfigError
from autocritic.evaluation import plots
from autocritic.evaluation.context import EvalContext
from autocritic.evaluation.metrics import auroc, ci95, sigmoid, with_ci
from autocritic.evaluation.report import SuiteResult, Table
from autocritic.evaluation.rerank import mean_logprob
from autocritic.formats import ANSWER_PREFIX, STEP_SEPARATOR
from autocritic.inference.generation import CriticGenerator, GenerationSettings, Sample
from autocritic.inference.rerank import majority_vote
from autocritic.inference.search import AGGREGATES, SearchResult, SearchSettings, search_many
from autocritic.inference.stepper import CriticStepper
from autocritic.labelling.steps import split_steps
from autocritic.model.export import read_critic_config
from autocritic.model.reference import resolve_backbone
from autocritic.offline.labelling import answer_of, is_right
from autocritic.offline.pretrain import BUILD_INFO
from autocritic.offline.steps import step_labels as exact_step_labels
from autocritic.offline.tasks import STEP_FAMILIES, Problem, prompt_of
from autocritic.progress import track

DEFAULT_FAMILY = "chain"  # for a backbone whose pretraining mix is not known (yours, a full fine-tune)
STOP = ("\n\n",)


def step_family(export: Path) -> str:
    """The step family the export's offline backbone was pretrained on most (its build_info.json mix), read before
    the model loads. A backbone pretrained on none cannot write a step (every method would score 0): a clear error.
    A backbone without build info is not known not to: the chain family."""
    try:
        backbone = Path(resolve_backbone(Path(export), read_critic_config(export)["backbone"]))
        mix = json.loads((backbone / BUILD_INFO).read_text())["settings"]["mix"]
        shares = {family: float(mix.get(family) or 0) for family in STEP_FAMILIES}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, AutocriticError):
        return DEFAULT_FAMILY
    family = max(shares, key=lambda f: shares[f])
    if shares[family] <= 0:
        raise ConfigError(
            f"suite search: the backbone of {export} ({backbone}) was pretrained without a step family (its "
            f"{BUILD_INFO} mix has no share of {' or '.join(STEP_FAMILIES)}), so it cannot write the steps the suite "
            "asks for and every method would score 0. Evaluate a critic of `python train.py experiment=steps "
            "phase=transfer` or `experiment=countdown` (ckpt=<its export>, or suites=[search] alone finds the "
            "newest), or leave search out of suites."
        )
    return family


@dataclass
class Settings:
    family: str | None = None  # chain | countdown; None: the step family the export's backbone learned
    n_problems: int = 300  # TEST problems of every length, reported together and by number of operations
    n_samples: int = 16  # the largest N of the sampling methods
    ns: tuple[int, ...] = (1, 2, 4, 8, 16)
    subsets: int = 16  # random subsets of the N-sample pool averaged at each N
    temperature: float = 0.8
    max_new_tokens: int = 96
    shapes: tuple[str, ...] = ("2x1", "4x1", "4x2", "8x2")  # beam searches: expand x beam
    # beam searches whose states are valued by their greedy rollouts: expand x beam x branch depths
    rollout_shapes: tuple[str, ...] = ()
    rollout_resample: int = 1  # rollouts: rounds that sample a state's repeated steps again
    rollout_widen: int = 1  # rollouts: rounds of `expand` more first steps while the best answer is doubted
    rollout_threshold: float = 0.5  # rollouts: an answer valued below is doubted
    rollout_aggregate: str = "last"  # rollouts: a finished path's value from its steps' probabilities (min | product | last)
    dfs_expand: int = 4
    dfs_threshold: float = 0.5
    max_depth: int = 8
    max_step_tokens: int = 24
    greedy_first: bool = True  # searches: the first of each state's steps is the greedy one
    outcome_ckpt: str | None = (
        None  # an export of an outcome critic (data=offline-steps-outcome) for best-of-N
    )
    headline_shape: str = "4x2"
    trees: int = 3  # problems (of the most operations) whose search trees are drawn
    batch: int = 8  # beam searches run in lockstep (each keeps its own random stream: results do not depend on it)

    def __post_init__(self) -> None:
        for shape in self.shapes:
            parse_shape(shape)
        for shape in self.rollout_shapes:
            parse_rollout_shape(shape)
        if self.headline_shape not in (*self.shapes, *self.rollout_shapes):
            raise ValueError(
                f"headline_shape={self.headline_shape!r} is not among shapes={list(self.shapes)} or "
                f"rollout_shapes={list(self.rollout_shapes)}"
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be above 0 (the methods sample)")
        for name in ("dfs_threshold", "rollout_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a probability in [0, 1]")
        if self.rollout_aggregate not in AGGREGATES:
            raise ValueError(f"rollout_aggregate={self.rollout_aggregate!r}: use one of {list(AGGREGATES)}")
        if self.family is not None and self.family not in STEP_FAMILIES:
            raise ValueError(f"family={self.family!r} is not a step family: use one of {list(STEP_FAMILIES)}")


def parse_shape(shape: str) -> tuple[int, int]:
    """ "4x2" -> expand 4, beam 2."""
    return _shape_parts(shape, ("expand", "beam"), "search", "4x2")


def parse_rollout_shape(shape: str) -> tuple[int, int, int]:
    """ "8x2x2" -> expand 8, beam 2, branch depth 2."""
    return _shape_parts(shape, ("expand", "beam", "branch depths"), "rollout", "8x1x1")


def _shape_parts(shape: str, names: tuple[str, ...], kind: str, example: str) -> tuple[int, ...]:
    try:
        parts = tuple(int(part) for part in str(shape).lower().split("x"))
    except ValueError:
        parts = ()
    if len(parts) != len(names):
        form = "x".join(f"<{name}>" for name in names)
        raise ValueError(f"{kind} shape {shape!r} is not {form}, e.g. {example}")
    if min(parts) < 1:
        raise ValueError(f"{kind} shape {shape!r}: {', '.join(names[:-1])} and {names[-1]} must be at least 1")
    return parts


def solved(problem: Problem, text: str) -> bool:
    """Right final answer on an answer line (a cut-off chain whose last number happens to match is not solved)."""
    return ANSWER_PREFIX in text and is_right(problem, text)


def sampled_tokens(sample: Sample) -> int:
    """Tokens the model sampled: the kept ones and the one that stopped it."""
    return len(sample.token_ids) + (sample.finish_reason in ("stop", "eos"))


@dataclass
class Point:
    """One method at one budget: success per problem (a fraction when averaged over subsets) and tokens."""

    success: list[float]
    tokens: list[float]

    def summary(self, rows: Sequence[int] | None = None) -> dict:
        rows = range(len(self.success)) if rows is None else rows
        success = [self.success[i] for i in rows]
        tokens = [self.tokens[i] for i in rows]
        return {
            "success": sum(success) / len(success) if success else None,
            "ci95": ci95(success),
            "tokens": sum(tokens) / len(tokens) if tokens else None,
            "problems": len(success),
        }


def sampling_points(
    pools: Sequence[Sequence[Sample]],
    outcome: Sequence[Sequence[float]],
    by_steps: Sequence[Sequence[float]],
    right: Sequence[Sequence[bool]],
    answers: Sequence[Sequence[str | None]],
    ns: Sequence[int],
    subsets: int,
    seed: int,
) -> dict[str, dict[int, Point]]:
    """{method: {N: Point}} for majority, best-of-N (outcome critic), step best-of-N, likelihood best-of-N and
    pass@N."""
    methods = ("majority", "best_of_n", "step_best_of_n", "likelihood", "pass_at_n")
    out: dict[str, dict[int, Point]] = {m: {} for m in methods}
    rng = random.Random(seed)
    for n in ns:
        points = {m: Point([], []) for m in methods}
        for samples, scores, step_values, ok, said in zip(
            pools, outcome, by_steps, right, answers, strict=True
        ):
            totals = dict.fromkeys(methods, 0.0)
            tokens = 0.0
            for _ in range(subsets if n < len(samples) else 1):
                subset = rng.sample(range(len(samples)), n)
                tokens += sum(sampled_tokens(samples[i]) for i in subset)
                winner = majority_vote([said[i] for i in subset])
                totals["majority"] += winner is not None and ok[next(i for i in subset if said[i] == winner)]
                totals["best_of_n"] += ok[max(subset, key=lambda i: scores[i])]
                totals["step_best_of_n"] += ok[max(subset, key=lambda i: step_values[i])]
                totals["likelihood"] += ok[max(subset, key=lambda i: mean_logprob(samples[i]))]
                totals["pass_at_n"] += any(ok[i] for i in subset)
            draws = subsets if n < len(samples) else 1
            for m in methods:
                points[m].success.append(totals[m] / draws)
                points[m].tokens.append(tokens / draws)
        for m in methods:
            out[m][n] = points[m]
    return out


def at_tokens(curve: Sequence[tuple[float, float]], tokens: float) -> tuple[float, bool]:
    """Success of a (tokens, success) curve at `tokens`, linear in log tokens between its points; True when
    `tokens` lies outside the curve (the nearest end is used)."""
    points = sorted(curve)
    if tokens <= points[0][0]:
        return points[0][1], tokens < points[0][0]
    if tokens >= points[-1][0]:
        return points[-1][1], tokens > points[-1][0]
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 <= tokens <= x1:
            share = 0.0 if x1 == x0 else (math.log(tokens) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + share * (y1 - y0), False
    raise AssertionError("unreachable")


def outcome_scorer(ctx: EvalContext, s: Settings):
    """Scores of whole answers: the outcome critic's, or the step critic's read where a step ends."""
    if s.outcome_ckpt:
        outcome = CriticGenerator.from_export(s.outcome_ckpt, device=ctx.generator.device)
        return outcome.score_texts, "outcome critic"
    step = ctx.generator
    return (
        lambda prompts, texts: step.score_texts(prompts, [t + STEP_SEPARATOR for t in texts])
    ), "step critic"


def lowest_step_probabilities(
    generator: CriticGenerator, prompts: Sequence[str], texts: Sequence[str]
) -> list[float]:
    """Each text's lowest step probability under the step critic, every step prefix read where the critic was
    trained to read it (after the step's separator); each distinct prefix scored once."""
    prefixes = []
    for prompt, text in zip(prompts, texts, strict=True):
        steps = split_steps(text, STEP_SEPARATOR)
        prefixes.append(
            [(prompt, step_prefix(steps, count, STEP_SEPARATOR)) for count in range(1, len(steps) + 1)]
        )
    distinct = list(dict.fromkeys(pair for row in prefixes for pair in row))
    scores = dict(
        zip(distinct, generator.score_texts([p for p, _ in distinct], [r for _, r in distinct]), strict=True)
    )
    return [min((sigmoid(scores[pair]) for pair in row), default=0.0) for row in prefixes]


def sampling_curves(
    ctx: EvalContext, s: Settings, problems: Sequence[Problem], prompts: Sequence[str]
) -> tuple[dict[str, dict[str, Point]], str]:
    """Greedy, and every method that reranks or votes over N samples, for N in `s.ns`; the outcome scorer's name."""
    generator = ctx.generator
    common = dict(max_new_tokens=s.max_new_tokens, stop=STOP, seed=ctx.seed)
    greedy = [row[0] for row in generator.generate(prompts, GenerationSettings(**common))]
    pools = generator.generate(
        prompts,
        GenerationSettings(
            **common, do_sample=True, temperature=s.temperature, n=s.n_samples, return_logprobs=True
        ),
    )
    every_prompt = [p for p, row in zip(prompts, pools, strict=True) for _ in row]
    every_text = [x.text for row in pools for x in row]
    score_outcome, outcome_name = outcome_scorer(ctx, s)

    def per_problem(flat: list[float]) -> list[list[float]]:
        return [flat[i * s.n_samples : (i + 1) * s.n_samples] for i in range(len(pools))]

    outcome = per_problem(score_outcome(every_prompt, every_text))
    by_steps = per_problem(lowest_step_probabilities(generator, every_prompt, every_text))
    right = [[solved(p, x.text) for x in row] for p, row in zip(problems, pools, strict=True)]
    answers = [
        [answer_of(p, x.text) if ANSWER_PREFIX in x.text else None for x in row]
        for p, row in zip(problems, pools, strict=True)
    ]
    ns = tuple(sorted({n for n in s.ns if n <= s.n_samples} | {s.n_samples}))
    greedy_point = Point(
        [float(solved(p, g.text)) for p, g in zip(problems, greedy, strict=True)],
        [float(sampled_tokens(g)) for g in greedy],
    )
    curves: dict[str, dict[str, Point]] = {"greedy": {"1": greedy_point}}
    points = sampling_points(pools, outcome, by_steps, right, answers, ns, s.subsets, ctx.seed)
    for method, by_n in points.items():
        curves[method] = {f"N={n}": point for n, point in by_n.items()}
    return curves, outcome_name


@dataclass
class Searched:
    """The searches' curves, the headline search's steps (critic scores and exact labels) and the trees drawn."""

    curves: dict[str, dict[str, Point]]
    step_scores: list[float]
    step_labels: list[bool]
    drawn: list[tuple[Problem, SearchResult]]


def search_curves(
    ctx: EvalContext, s: Settings, problems: Sequence[Problem], prompts: Sequence[str]
) -> Searched:
    """Beam search valued by the step critic and by the likelihood for each shape, the step critic's beam with
    rollouts for each rollout shape, and DFS with the step critic."""
    stepper = CriticStepper(ctx.generator)
    base = SearchSettings(
        max_depth=s.max_depth,
        max_step_tokens=s.max_step_tokens,
        temperature=s.temperature,
        greedy_first=s.greedy_first,
        seed=ctx.seed,
    )
    longest = max(p.level for p in problems)
    out = Searched({}, [], [], [])
    runs = [(value, shape) for value in ("critic", "likelihood") for shape in s.shapes]
    runs += [("rollout", shape) for shape in s.rollout_shapes]
    for value, shape in track([*runs, ("dfs", f"{s.dfs_expand}")], desc="search: searches"):
        if value == "dfs":
            settings = replace(base, strategy="dfs", expand=s.dfs_expand, threshold=s.dfs_threshold)
        elif value == "rollout":
            expand, beam, depth = parse_rollout_shape(shape)
            settings = replace(
                base,
                expand=expand,
                beam=beam,
                rollouts=True,
                branch_depth=depth,
                resample=s.rollout_resample,
                widen=s.rollout_widen,
                threshold=s.rollout_threshold,
                aggregate=s.rollout_aggregate,
            )
        else:
            expand, beam = parse_shape(shape)
            settings = replace(base, value=value, expand=expand, beam=beam)
        point = Point([], [])
        results = search_many(stepper, prompts, settings, batch=s.batch)
        for problem, result in zip(problems, results, strict=True):
            point.success.append(float(result.finished and solved(problem, result.response())))
            point.tokens.append(float(result.sampled_tokens))
            if value in ("critic", "rollout") and shape == s.headline_shape:
                nodes = [node for node in result.root.walk() if node.parent is not None]
                labels = [exact_step_labels(problem, node.steps)[-1] for node in nodes]
                out.step_scores += [node.score for node in nodes]
                out.step_labels += labels
                # the trees worth a look: the longest problems, where the search met a wrong step
                if problem.level == longest and len(out.drawn) < s.trees and not all(labels):
                    out.drawn.append((problem, result))
        out.curves.setdefault("dfs" if value == "dfs" else f"search_{value}", {})[shape] = point
    return out


def run(ctx: EvalContext, s: Settings) -> SuiteResult:
    if not isinstance(ctx.generator, CriticGenerator):
        raise ValueError(
            "the search suite needs a CriticGenerator (an export): it reads the model's own states"
        )
    problems = ctx.test_problems(s.family or DEFAULT_FAMILY, s.n_problems)
    prompts = [prompt_of(p) for p in problems]
    levels = sorted({p.level for p in problems})
    by_level = {level: [i for i, p in enumerate(problems) if p.level == level] for level in levels}
    longest = levels[-1]
    curves, outcome_name = sampling_curves(ctx, s, problems, prompts)
    searched = search_curves(ctx, s, problems, prompts)
    curves |= searched.curves
    step_scores, step_labels, drawn = searched.step_scores, searched.step_labels, searched.drawn

    groups = {"all": None} | {f"{level} operations": rows for level, rows in by_level.items()}
    summary = {
        method: {
            label: {group: point.summary(rows) for group, rows in groups.items()}
            for label, point in points.items()
        }
        for method, points in curves.items()
    }
    comparisons = compare(summary, s, groups)
    figures = {
        "n_problems": len(problems),
        "problems_by_operations": {str(level): len(rows) for level, rows in by_level.items()},
        "outcome_scorer": outcome_name,
        "methods": summary,
        "comparisons": comparisons,
        "step_critic": {
            "auroc": auroc(step_scores, step_labels),
            "steps": len(step_scores),
            "right_fraction": sum(step_labels) / len(step_labels) if step_labels else None,
            "on": f"every step of search (critic, {s.headline_shape})",
        },
        "settings": {k: v for k, v in s.__dict__.items()},
    }
    plot_files = []
    if ctx.out_dir is not None:
        plot_files.append(plots.search_curves_plot(ctx.plot_path("search.png"), summary, list(groups)))
        for i, (problem, result) in enumerate(drawn):
            labels = {
                id(n): exact_step_labels(problem, n.steps)[-1]
                for n in result.root.walk()
                if n.parent is not None
            }
            path = ctx.plot_path(f"search_tree_{i + 1}.png")
            plot_files.append(
                plots.search_tree_plot(path, result, labels, f"{problem.question} = {problem.answer}")
            )
    return SuiteResult(
        "search",
        figures,
        tables_of(summary, comparisons, figures, s, groups),
        plot_files,
        headline_of(figures, s, longest),
        notes=trees_text(drawn),
    )


def compare(summary: dict, s: Settings, groups: dict) -> dict:
    """Each critic search against greedy and against best-of-N at the search's own tokens, per group."""
    out = {}
    searches = [("search_critic", shape) for shape in s.shapes]
    searches += [("search_rollout", shape) for shape in s.rollout_shapes]
    for method, shape in searches:
        for group in groups:
            found = summary[method][shape][group]
            if found["success"] is None:
                continue
            greedy = summary["greedy"]["1"][group]["success"]
            curve = [(p[group]["tokens"], p[group]["success"]) for p in summary["best_of_n"].values()]
            best_of_n, outside = at_tokens(curve, found["tokens"])
            likelihood = summary["search_likelihood"].get(shape, {}).get(group, {}).get("success")
            out.setdefault(shape, {})[group] = {
                "search": found["success"],
                "tokens": found["tokens"],
                "greedy": greedy,
                "times_greedy": found["success"] / greedy if greedy else None,
                "best_of_n_at_tokens": best_of_n,
                "best_of_n_extrapolated": outside,
                "points_over_best_of_n": 100 * (found["success"] - best_of_n),
                "points_over_likelihood_search": 100 * (found["success"] - likelihood)
                if likelihood is not None
                else None,
            }
    return out


def tables_of(summary: dict, comparisons: dict, figures: dict, s: Settings, groups: dict) -> list[Table]:
    labels = {
        "greedy": "greedy",
        "majority": "majority@N",
        "best_of_n": f"best-of-N ({figures['outcome_scorer']})",
        "step_best_of_n": "best-of-N (step critic, lowest step)",
        "likelihood": "likelihood best-of-N",
        "pass_at_n": "pass@N (ceiling)",
        "search_critic": "beam search, step critic",
        "search_likelihood": "beam search, likelihood",
        "search_rollout": "beam search valued by greedy rollouts, step critic",
        "dfs": "DFS, step critic",
    }
    rows = []
    for method, points in summary.items():
        for label, by_group in points.items():
            rows.append(
                [labels[method], label]
                + [f"{with_ci(g['success'], g['ci95'])} ({g['tokens']:.0f} tok)" for g in by_group.values()]
            )
    tables = [
        Table(
            "Success rate (95% CI) and mean sampled tokens per problem",
            ["method", "budget", *groups],
            rows,
            note=f"{figures['n_problems']} TEST problems of the {s.family or DEFAULT_FAMILY} family; samples at T={s.temperature}; "
            "search shapes are expand x beam (rollouts: x branch depths; repeated steps sampled again "
            f"{s.rollout_resample} time(s), {s.rollout_widen} widening round(s) below {s.rollout_threshold}, "
            f"a path valued by the {s.rollout_aggregate} of its steps' values); "
            f"DFS expands {s.dfs_expand} and prunes below {s.dfs_threshold}.",
        )
    ]
    compare_rows = [
        [
            shape,
            group,
            c["search"],
            c["greedy"],
            c["times_greedy"],
            c["best_of_n_at_tokens"],
            c["points_over_best_of_n"],
            c["points_over_likelihood_search"],
            c["tokens"],
        ]
        for shape, by_group in comparisons.items()
        for group, c in by_group.items()
    ]
    tables.append(
        Table(
            "Beam search with the step critic (rollouts: KxBxD) against greedy and best-of-N at the same sampled tokens",
            [
                "shape",
                "problems",
                "search",
                "greedy",
                "× greedy",
                "best-of-N at its tokens",
                "points over best-of-N",
                "points over likelihood search",
                "tokens",
            ],
            compare_rows,
        )
    )
    step = figures["step_critic"]
    tables.append(
        Table(
            "Step critic on the steps the search wrote (exact labels)",
            ["AUROC", "steps", "fraction right"],
            [[step["auroc"], step["steps"], step["right_fraction"]]],
        )
    )
    return tables


def headline_of(figures: dict, s: Settings, longest: int) -> dict:
    main = figures["comparisons"].get(s.headline_shape, {})
    everything, hardest = main.get("all", {}), main.get(f"{longest} operations", {})
    return {
        f"search {s.headline_shape} success": everything.get("search"),
        "greedy success": everything.get("greedy"),
        f"× greedy ({longest} operations)": hardest.get("times_greedy"),
        "points over best-of-N (same tokens)": everything.get("points_over_best_of_n"),
        "step critic AUROC": figures["step_critic"]["auroc"],
    }


def trees_text(drawn: Sequence[tuple[Problem, SearchResult]]) -> list[str]:
    """The drawn trees as indented text for the report: value, kept (*) or pruned (x), the chosen path (>>)."""
    notes = []
    for problem, result in drawn:
        chosen = {id(node) for node in result.best.path()}
        lines = [f"Search tree for {problem.question} (answer {problem.answer}):", "```"]
        for node in result.root.walk():
            if node.parent is None:
                continue
            right = exact_step_labels(problem, node.steps)[-1]
            mark = ">>" if id(node) in chosen else ("* " if node.kept else ("x " if node.pruned else "  "))
            lines.append(
                f"{'  ' * (node.depth - 1)}{mark} {node.step!r} value {node.value:.2f} {'right' if right else 'wrong'}"
            )
        notes.append("\n".join(lines + ["```"]))
    return notes
