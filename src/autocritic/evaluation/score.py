"""Suite "score": an export's scores on your own files, and how well they agree with the file's labels.

    file ──read_local_file, check_rows (as training reads it)──► rows ──score_texts (the export's template)──►
         scores_<file>.jsonl (each row + `score`, `probability`) and the metrics of the file's schema

    pointwise (label)   AUROC, accuracy (probability ≥ 0.5 against label ≥ 0.5), ECE; ROC and reliability plots
    scalar (score)      Pearson and Spearman correlation of the critic's score with the file's score
    pairwise            pairwise accuracy (chosen scored above rejected), mean margin
    stepwise (labels)   the pointwise figures over the steps (the critic read at the end of each step)

`score` is the critic's logit; `probability` its sigmoid (calibrated when the export was, `objective.calibrate`).
Pairwise rows get `chosen_score`, `rejected_score` and `probability` = sigmoid(chosen − rejected), the
Bradley–Terry probability that chosen is preferred. Stepwise rows get `step_scores` and `step_probabilities`, one
per step, each read after the step and its separator. A row's own field of the same name is kept as
`input_<name>`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef

from autocritic.chat_format import Conversation
from autocritic.data.datamodule import PLAIN_TEMPLATE, read_local_file, text_row
from autocritic.data.schemas import SCHEMAS, check_rows
from autocritic.data.stepwise import DEFAULT_SEPARATOR, expand_steps
from autocritic.errors import DataError
from autocritic.evaluation import plots
from autocritic.evaluation.context import EvalContext
from autocritic.evaluation.metrics import auroc, calibration, roc_points, sigmoid
from autocritic.evaluation.report import SuiteResult, Table

AUTO = "auto"


@dataclass
class Settings:
    files: tuple[str, ...] = ()  # json / jsonl / csv / parquet, as data.train_files
    schema: str = AUTO  # auto: the first schema (in data.schemas order) whose columns the file's first row has
    columns: dict[str, str] = field(default_factory=dict)  # as data.columns, e.g. {prompt: question}
    calibration_bins: int = 10
    step_separator: str = DEFAULT_SEPARATOR  # stepwise rows: the text ending each step, as data.step_separator

    def __post_init__(self) -> None:
        if not self.files:
            raise ValueError("score.files is empty: name your files, e.g. score.files=[my.jsonl].")
        if not self.step_separator:
            raise ValueError("step_separator is empty: steps need a separator, e.g. a newline (the default).")
        if self.schema != AUTO and self.schema not in SCHEMAS:
            raise ValueError(f"schema={self.schema!r} is unknown: use {AUTO} or one of {list(SCHEMAS)}.")


@dataclass
class ScoredFile:
    path: str
    schema: str
    raw: list[dict]  # the rows as the file holds them
    rows: list[dict]  # the same rows checked, in the schema's canonical fields


def detect_schema(
    raw: Sequence[Mapping], columns: Mapping[str, str], path: str, separator: str = DEFAULT_SEPARATOR
) -> str:
    """The first schema (in data.schemas order) whose check the file's first row passes."""
    for schema in SCHEMAS:
        try:
            check_rows(raw[:1], schema, columns, path, separator)
            return schema
        except DataError:
            continue
    needs = "; ".join(f"{schema}: {list(fields)}" for schema, fields in SCHEMAS.items())
    raise DataError(
        f"{path}, row 1: its columns {sorted(map(str, raw[0]))} fit no schema ({needs}). Map yours with "
        "score.columns.<field>=<column> (e.g. score.columns.prompt=question), or name the schema with "
        "score.schema=<schema> to see what its check says."
    )


def read_file(path: str, settings: Settings) -> ScoredFile:
    """Every row read and checked by the code training uses (file, row and fix named on a bad row)."""
    if not Path(path).expanduser().is_file():
        raise DataError(f"score.files: {path} does not exist. Pass the files to score, e.g. score.files=[my.jsonl].")
    raw = read_local_file(str(Path(path).expanduser()))
    if not raw:
        raise DataError(f"{path}: no rows to score.")
    separator = settings.step_separator
    schema = detect_schema(raw, settings.columns, path, separator) if settings.schema == AUTO else settings.schema
    rows = check_rows(raw, schema, settings.columns, path, separator)
    answers = ({"prompt", "response"}, {"prompt", "chosen", "rejected"}, {"prompt", "completions", "labels"})
    if not any(fields <= set(rows[0]) for fields in answers):
        raise DataError(f"{path}: schema {schema} gives rows without (prompt, response) or (prompt, chosen, rejected).")
    return ScoredFile(path, schema, raw, rows)


def check(settings: Settings) -> None:
    """Before the model loads: every file exists and every row is valid."""
    for path in settings.files:
        read_file(path, settings)


def with_scores(raw: Mapping, scores: Mapping[str, float]) -> dict:
    kept = {(f"input_{k}" if k in scores else k): v for k, v in raw.items()}
    return kept | dict(scores)


def correlation(fn, scores: Sequence[float], targets: Sequence[float]) -> float | None:
    """None below two rows or for a constant column (the correlation is undefined)."""
    if len(scores) < 2 or len(set(scores)) < 2 or len(set(targets)) < 2:
        return None
    value = float(fn(torch.tensor(scores, dtype=torch.float64), torch.tensor(targets, dtype=torch.float64)))
    return value if math.isfinite(value) else None


def as_text(ctx: EvalContext, scored: ScoredFile) -> list[dict]:
    """The rows with conversations rendered as training renders them: the export's tokenizer and its chat template
    (none: the Human:/AI: dialogue layout)."""
    conversation = next((r["prompt"] for r in scored.rows if isinstance(r["prompt"], Conversation)), None)
    if conversation is None:
        return scored.rows
    template = getattr(getattr(ctx.generator, "template", None), "text", PLAIN_TEMPLATE)
    if template != PLAIN_TEMPLATE:
        raise DataError(
            f"{conversation.where} is a conversation, but this export wraps every prompt in its template "
            f"{template!r}: score conversations with an export trained on conversations (data.template="
            f"'{PLAIN_TEMPLATE}'), or write the file as text prompts and responses."
        )
    return [text_row(row, ctx.generator.tokenizer) for row in scored.rows]


def score_file(ctx: EvalContext, scored: ScoredFile, settings: Settings, stem: str) -> tuple[dict, list[dict], list[str]]:
    """(figures, output rows, plot files) of one file."""
    rows, figures, plot_files = as_text(ctx, scored), {"schema": scored.schema, "rows": len(scored.rows)}, []
    if "chosen" in rows[0]:
        prompts = [r["prompt"] for r in rows]
        chosen = ctx.generator.score_texts(prompts, [r["chosen"] for r in rows])
        rejected = ctx.generator.score_texts(prompts, [r["rejected"] for r in rows])
        margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
        out = [
            with_scores(raw, {"chosen_score": c, "rejected_score": r, "probability": sigmoid(c - r)})
            for raw, c, r in zip(scored.raw, chosen, rejected, strict=True)
        ]
        figures |= {
            "pairwise_accuracy": sum(m > 0 for m in margins) / len(margins),
            "mean_margin": sum(margins) / len(margins),
        }
        return figures, out, plot_files
    if scored.schema == "stepwise":
        steps = expand_steps(rows, settings.step_separator)
        scores = ctx.generator.score_texts([r["prompt"] for r in steps], [r["response"] for r in steps])
        out, start = [], 0
        for raw, row in zip(scored.raw, rows, strict=True):
            own = scores[start : start + len(row["labels"])]
            out.append(with_scores(raw, {"step_scores": own, "step_probabilities": [sigmoid(s) for s in own]}))
            start += len(own)
        figures["steps"] = len(steps)
        labelled = label_figures(ctx, scores, [r["label"] >= 0.5 for r in steps], settings, stem)
        return figures | labelled[0], out, labelled[1]
    scores = ctx.generator.score_texts([r["prompt"] for r in rows], [r["response"] for r in rows])
    out = [with_scores(raw, {"score": s, "probability": sigmoid(s)}) for raw, s in zip(scored.raw, scores, strict=True)]
    if "label" in rows[0]:
        labelled = label_figures(ctx, scores, [r["label"] >= 0.5 for r in rows], settings, stem)
        figures |= labelled[0]
        plot_files += labelled[1]
    elif "score" in rows[0]:
        targets = [r["score"] for r in rows]
        figures |= {
            "pearson": correlation(pearson_corrcoef, scores, targets),
            "spearman": correlation(spearman_corrcoef, scores, targets),
        }
    return figures, out, plot_files


def label_figures(
    ctx: EvalContext, scores: Sequence[float], labels: Sequence[bool], settings: Settings, stem: str
) -> tuple[dict, list[str]]:
    """AUROC, accuracy and calibration of scores against 0/1 labels, and their ROC and reliability plots."""
    calib = calibration(scores, labels, settings.calibration_bins)
    figures = {
        "auroc": auroc(scores, labels),
        "accuracy": sum((sigmoid(s) >= 0.5) == y for s, y in zip(scores, labels, strict=True)) / len(labels),
        "ece": calib["ece"],
        "positive_rate": calib["positive_rate"],
        "mean_probability": calib["mean_confidence"],
    }
    plot_files = []
    roc = roc_points(scores, labels)
    if ctx.out_dir is not None:
        if roc is not None:
            plot_files.append(
                plots.roc_plot(ctx.plot_path(f"score_roc_{stem}.png"), *roc, figures["auroc"], title=f"ROC: {stem}")
            )
        plot_files.append(
            plots.reliability_plot(
                ctx.plot_path(f"score_reliability_{stem}.png"), calib["bins"], calib["quantile_bins"], calib["ece"]
            )
        )
    return figures, plot_files


def stems(paths: Sequence[str]) -> list[str]:
    """Output names: each file's stem, numbered where two files share one."""
    names = [Path(p).stem for p in paths]
    return [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names, start=1)]


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    tmp = path.with_suffix(".tmp")  # renamed when complete: never a half file
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(path)


FIGURE_COLUMNS = ("rows", "steps", "auroc", "accuracy", "ece", "pearson", "spearman", "pairwise_accuracy", "mean_margin")


def run(ctx: EvalContext, settings: Settings) -> SuiteResult:
    if not hasattr(ctx.generator, "score_texts"):
        raise DataError("the score suite needs a generator that scores texts (an export's CriticGenerator).")
    figures, plot_files, written = {}, [], []
    for path, stem in zip(settings.files, stems(settings.files), strict=True):
        file_figures, out, file_plots = score_file(ctx, read_file(path, settings), settings, stem)
        if ctx.out_dir is not None:
            target = Path(ctx.out_dir) / f"scores_{stem}.jsonl"
            write_jsonl(target, out)
            file_figures["scores_file"] = target.name
            written.append(target.name)
        figures[stem] = file_figures
        plot_files += file_plots
    columns = [c for c in FIGURE_COLUMNS if any(c in f for f in figures.values())]
    table = Table(
        "Scores of your files",
        ["file", "schema", *columns],
        [[stem, f["schema"], *(f.get(c) for c in columns)] for stem, f in figures.items()],
        note="Accuracy: probability ≥ 0.5 against label ≥ 0.5; pairwise accuracy: chosen scored above rejected.",
    )
    headline = {
        f"{stem} {name}": f[name]
        for stem, f in figures.items()
        for name in ("auroc", "accuracy", "ece", "pearson", "spearman", "pairwise_accuracy")
        if name in f
    }
    notes = [f"Per-row scores: {', '.join(f'`{name}`' for name in written)}."] if written else []
    return SuiteResult("score", figures, [table], plot_files, headline, notes)
