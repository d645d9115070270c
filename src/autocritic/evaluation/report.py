"""What a suite hands back (figures, tables, plots) and the three files a run leaves: results.json (every figure),
report.md (the tables a person reads, with the plots) and the short table printed at the end."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_NAME = "results.json"
REPORT_NAME = "report.md"


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in self.rows]
        return "\n".join(lines)


@dataclass
class SuiteResult:
    """`figures` holds every number (nested dicts); `headline` the few that the printed table shows."""

    name: str
    figures: dict[str, Any]
    tables: list[Table] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)  # file names in the run dir
    headline: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def cell(value: Any) -> str:
    """A table cell: floats with 3 decimals, None as a dash, text on one line with `|` escaped."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    text = str(value).replace("\n", "⏎").replace("|", "\\|")
    return text if len(text) <= 80 else text[:77] + "..."


def jsonable(value: Any) -> Any:
    """Floats stay floats (NaN becomes null so the file is strict JSON), tuples become lists, keys strings."""
    if isinstance(value, float):
        return None if not math.isfinite(value) else value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [jsonable(v) for v in value]
    return value


def flatten(figures: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves as "a/b/c" keys (for a logger's summary)."""
    flat: dict[str, float] = {}
    for key, value in figures.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat |= flatten(value, name)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = value
    return flat


def write_results(run_dir: Path, meta: dict, results: Sequence[SuiteResult]) -> Path:
    content = {
        "meta": meta,
        "suites": {
            r.name: {"figures": r.figures, "headline": r.headline, "seconds": r.seconds, "plots": r.plots}
            for r in results
        },
    }
    path = Path(run_dir) / RESULTS_NAME
    path.write_text(json.dumps(jsonable(content), indent=2, allow_nan=False) + "\n")
    return path


def write_report(run_dir: Path, meta: dict, results: Sequence[SuiteResult]) -> Path:
    lines = [
        "# autocritic evaluation",
        "",
        f"- checkpoint: `{meta.get('ckpt')}`",
        f"- suites: {', '.join(r.name for r in results)}; seed {meta.get('seed')}; "
        f"{meta.get('seconds', 0):.0f} s on {meta.get('device', 'cpu')} ({meta.get('threads')} torch threads)",
        "",
        "## Summary",
        "",
        summary_table(results).markdown(),
    ]
    for result in results:
        lines += ["", f"## {result.name} ({result.seconds:.0f} s)", ""]
        lines += [f"{note}\n" for note in result.notes]
        for table in result.tables:
            lines += [table.markdown(), ""]
        lines += [f"![{Path(plot).stem}]({plot})" for plot in result.plots]
    path = Path(run_dir) / REPORT_NAME
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def summary_table(results: Sequence[SuiteResult]) -> Table:
    rows = [[r.name, key, value] for r in results for key, value in r.headline.items()]
    return Table("Headline figures", ["suite", "figure", "value"], rows)


def format_summary(results: Sequence[SuiteResult]) -> str:
    """The short plain-text table printed at the end of a run."""
    rows = [(r.name, key, cell(value)) for r in results for key, value in r.headline.items()]
    if not rows:
        return "(no figures)"
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows)
