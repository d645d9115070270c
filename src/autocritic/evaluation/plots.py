"""PNG plots of the report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from autocritic.evaluation.metrics import METHOD_LABELS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return Path(path).name


def best_of_n_plot(path: Path, curve: Mapping[str, Mapping[int, Mapping]], greedy: float | None) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, points in curve.items():
        ns = sorted(points)
        acc = [points[n]["accuracy"] for n in ns]
        ci = [points[n]["ci95"] or 0.0 for n in ns]
        ax.errorbar(ns, acc, yerr=ci, marker="o", capsize=3, label=METHOD_LABELS.get(method, method))
    if greedy is not None:
        ax.axhline(greedy, color="black", linestyle="--", label="greedy")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (samples per problem)")
    ax.set_ylabel("accuracy")
    ax.set_title("Best-of-N on held-out arithmetic")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def roc_plot(
    path: Path,
    fpr: Sequence[float],
    tpr: Sequence[float],
    auroc: float | None,
    title: str = "Critic ROC on sampled answers",
) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, label=f"critic (AUROC {auroc:.3f})" if auroc is not None else "critic")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    return _save(fig, path)


def reliability_plot(
    path: Path, bins: Sequence[Mapping], quantile_bins: Sequence[Mapping], ece: float | None
) -> str:
    """Left: uniform bins (what ECE uses), bar height = fraction correct, count on top. Right: equal-count bins,
    fraction correct against mean confidence on log axes (readable when every probability is small)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4.2))
    filled = [b for b in bins if b["count"]]
    width = bins[0]["high"] - bins[0]["low"] if bins else 0.1
    left.bar(
        [b["low"] for b in filled],
        [b["accuracy"] for b in filled],
        width=width,
        align="edge",
        edgecolor="black",
        alpha=0.6,
        label="fraction correct",
    )
    left.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for b in filled:
        left.annotate(
            str(b["count"]), (b["low"] + width / 2, b["accuracy"]), ha="center", va="bottom", fontsize=7
        )
    left.set_xlim(0, 1)
    left.set_ylim(0, 1.05)
    left.set_xlabel("sigmoid(critic score)")
    left.set_ylabel("fraction correct")
    left.set_title(f"Reliability, uniform bins (ECE {ece:.3f})" if ece is not None else "Reliability")
    left.legend(loc="upper left", fontsize=8)
    conf = [b["confidence"] for b in quantile_bins]
    acc = [b["accuracy"] for b in quantile_bins]
    right.plot(conf, acc, marker="o", label="equal-count bins")
    low = max(min([c for c in conf + acc if c > 0], default=1e-3) / 2, 1e-6)
    right.plot([low, 1], [low, 1], color="grey", linestyle=":", label="perfect calibration")
    right.set_xscale("log")
    right.set_yscale("symlog", linthresh=low)  # a bin with no right answer sits at 0
    right.set_ylim(bottom=0)
    right.set_xlabel("mean sigmoid(critic score)")
    right.set_ylabel("fraction correct")
    right.set_title("Reliability, equal-count bins")
    right.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def lines_plot(
    path: Path,
    series: Mapping[str, Sequence[float | None]],
    xs: Sequence,
    xlabel: str,
    ylabel: str,
    title: str,
    dashed: Sequence[str] = (),
) -> str:
    """One line per series; `dashed` series are drawn dashed (e.g. a twin that would hide under another line)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in series.items():
        points = [(x, y) for x, y in zip(xs, ys, strict=False) if y is not None]
        if points:
            style = "--" if name in dashed else "-"
            ax.plot(*zip(*points, strict=True), marker="o", linestyle=style, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
