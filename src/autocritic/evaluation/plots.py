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
    if xs and all(isinstance(x, int) for x in xs):  # rounds, counts: no 0.5 ticks
        ax.set_xticks(sorted(set(xs)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


_SEARCH_STYLES = {  # method: (label, colour, marker)
    "greedy": ("greedy", "black", "s"),
    "majority": ("majority@N", "tab:orange", "o"),
    "best_of_n": ("best-of-N (outcome)", "tab:blue", "o"),
    "step_best_of_n": ("best-of-N (step critic)", "tab:cyan", "o"),
    "likelihood": ("likelihood best-of-N", "tab:gray", "o"),
    "pass_at_n": ("pass@N (ceiling)", "tab:green", "."),
    "search_critic": ("beam search, step critic", "tab:red", "D"),
    "search_likelihood": ("beam search, likelihood", "tab:purple", "D"),
    "search_rollout": ("beam search, greedy rollouts", "tab:olive", "P"),
    "dfs": ("DFS, step critic", "tab:brown", "*"),
}


def search_curves_plot(path: Path, summary: Mapping[str, Mapping[str, Mapping]], groups: Sequence[str]) -> str:
    """Success rate against mean sampled tokens per problem, one panel per group of problems."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.8), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=True):
        for method, points in summary.items():
            label, colour, marker = _SEARCH_STYLES.get(method, (method, None, "o"))
            xy = sorted((p[group]["tokens"], p[group]["success"]) for p in points.values() if p[group]["success"] is not None)
            if xy:
                style = ":" if method == "pass_at_n" else "-"
                ax.plot(*zip(*xy, strict=True), marker=marker, linestyle=style, color=colour, label=label)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(plt.matplotlib.ticker.NullFormatter())
        ax.set_xlabel("sampled tokens per problem")
        ax.set_ylabel("success rate")
        ax.set_ylim(0, 1)
        ax.set_title(f"{group} problems" if group == "all" else group)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def search_tree_plot(path: Path, result, right: Mapping[int, bool], title: str) -> str:
    """A search tree left to right: each node a step with its value, green while the path is right and red once it
    is not; kept states outlined, pruned ones faded, the chosen path drawn thick. Siblings that wrote the same step
    are one box marked "xN"."""
    plt = _pyplot()
    chosen = {id(node) for node in result.best.path()} | {id(result.root)}
    y: dict[int, float] = {}
    boxes: list[tuple] = []  # (node, count)
    edges: list[tuple] = []  # (parent, node)
    next_row = [0.0]

    def place(node) -> float:
        groups: dict[str, list] = {}
        for child in node.children:
            groups.setdefault(child.step, []).append(child)
        ys = []
        for same in groups.values():
            # the chosen or kept twin stands for the group, and only it is expanded further
            shown = next((c for c in same if id(c) in chosen), next((c for c in same if c.children), same[0]))
            ys.append(place(shown))
            boxes.append((shown, len(same)))
            edges.append((node, shown))
        if not ys:
            y[id(node)] = next_row[0]
            next_row[0] += 1
        else:
            y[id(node)] = sum(ys) / len(ys)
        return y[id(node)]

    place(result.root)
    depth = max((n.depth for n, _ in boxes), default=1)
    rows = max(next_row[0], 1)
    fig, ax = plt.subplots(figsize=(2.3 * (depth + 1), max(3.0, 0.5 * rows + 1)))
    for parent, child in edges:
        thick = id(child) in chosen
        ax.plot([parent.depth, child.depth], [y[id(parent)], y[id(child)]], color="black" if thick else "0.75",
                linewidth=2.5 if thick else 0.8, zorder=1)
    ax.text(0, y[id(result.root)], "question", ha="center", va="center", fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white"}, zorder=2)
    for n, count in boxes:
        colour = "#b7e4b0" if right.get(id(n)) else "#f4b6b6"
        text = n.step if len(n.step) <= 18 else n.step[:17] + "…"
        fade = 0.45 if n.pruned else 1.0
        label = f"{text}\n{n.value:.2f}" + (f"  x{count}" if count > 1 else "")
        ax.text(n.depth, y[id(n)], label, ha="center", va="center", fontsize=7, alpha=fade, zorder=2,
                bbox={"boxstyle": "round", "facecolor": colour, "edgecolor": "black" if n.kept else "0.7",
                      "linewidth": 1.6 if n.kept else 0.6, "alpha": fade})
    ax.set_xlim(-0.6, depth + 0.6)
    ax.set_ylim(rows - 0.4, -0.6)  # the first child on top
    ax.axis("off")
    fig.suptitle(f"{title}\ngreen: still right, red: wrong; outlined: kept; thick: chosen; value = lowest step "
                 "probability so far", fontsize=9)
    return _save(fig, path)
