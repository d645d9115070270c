"""Several `phase=improve` runs side by side (one per filter, as the controls are run): one line per run of a
held-out metric by round, and the same figures as a Markdown table.

    python -m autocritic.improve.compare <run dir> <run dir> ... [--metric greedy_accuracy] [--out filters.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from autocritic.errors import AutocriticError, CheckpointError
from autocritic.evaluation.plots import lines_plot
from autocritic.improve.loop import ROUNDS, read_run_file


def read_run(run_dir: Path) -> tuple[str, list[dict]]:
    """(the run's label: its filter and threshold, its rounds) of one improve run directory."""
    if not (Path(run_dir) / ROUNDS).is_file():
        raise CheckpointError(f"{run_dir} is not an improve run directory ({ROUNDS} is missing): pass <run dir> of phase=improve.")
    run = read_run_file(run_dir, hint=".")
    settings, rounds = run["settings"], run["rounds"]
    label = str(settings.get("filter", "?"))
    if settings.get("threshold") is not None and settings.get("filter") in ("critic", "likelihood"):
        label += f" ({settings['threshold']})"
    return label, rounds


def unique_labels(labels: list[str]) -> list[str]:
    """Two runs with the same filter get #2, #3 ... so neither line hides the other."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out


def compare(run_dirs: list[Path], metric: str, out: Path | None) -> str:
    """The Markdown table of `metric` by round for each run; with `out`, the plot written there."""
    runs = [read_run(path) for path in run_dirs]
    labels = unique_labels([label for label, _ in runs])
    depth = max(len(rounds) for _, rounds in runs)
    series: dict[str, list[float | None]] = {}
    for label, (_, rounds) in zip(labels, runs, strict=True):
        by_round = {r["round"]: r["metrics"].get(metric) for r in rounds}
        if all(value is None for value in by_round.values()):
            known = sorted(rounds[0]["metrics"]) if rounds else []
            raise AutocriticError(f"no round of the {label} run has {metric!r}; its metrics: {', '.join(known)}")
        series[label] = [by_round.get(r) for r in range(depth)]
    if out is not None:
        lines_plot(out, series, list(range(depth)), "round", metric, "self-training by filter")
    header = "| filter | " + " | ".join(f"round {r}" for r in range(depth)) + " |"
    rule = "|---|" + "---|" * depth
    rows = [f"| {label} | " + " | ".join("—" if v is None else f"{v:.3f}" for v in values) + " |"
            for label, values in series.items()]
    return "\n".join([header, rule, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autocritic.improve.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="improve run directories (each holds rounds.json)")
    parser.add_argument("--metric", default="greedy_accuracy", help="a held-out metric of rounds.json (default: greedy_accuracy)")
    parser.add_argument("--out", type=Path, help="write the plot here (PNG)")
    args = parser.parse_args(argv)
    try:
        print(compare(args.runs, args.metric, args.out))
    except AutocriticError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.out is not None:
        print(f"plot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
