"""Best-of-N by the mean score of several critics that share a backbone (e.g. one preset trained with other seeds).

    python bench/critic_ensemble.py EXPORT EXPORT ... [--problems 200]

The rerank suite's problems and samples (the same for every export when their frozen backbone is the same: the
samples are checked to be), each export's own best-of-8, then best-of-8 by the mean of their scores, each as the
fraction of the greedy → pass@8 gap closed. One torch thread and batches of 128 rows, as `python evaluate.py`.
"""

from __future__ import annotations

import argparse

import torch

from autocritic.entry import quiet_libraries
from autocritic.evaluation.context import EvalContext
from autocritic.evaluation.metrics import best_of_n_curve, gap_closed, rate
from autocritic.evaluation.rerank import Settings, pools_of, sample_answers
from autocritic.inference.generation import CriticGenerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exports", nargs="+")
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--n", type=int, default=8)
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(1)
    settings = Settings(n_problems=args.problems).resolved()
    scores, texts = [], None
    for export in args.exports:
        sampled = sample_answers(EvalContext.for_generator(CriticGenerator.from_export(export, batch_size=128)), settings)
        these = [[x.text for x in row] for row in sampled.samples]
        if texts is not None and these != texts:
            raise SystemExit(f"{export} sampled other answers: the exports must share one frozen backbone")
        texts = these
        scores.append([[x.score for x in row] for row in sampled.samples])
        report(export, sampled, None, settings, args.n)
    mean = [[sum(v) / len(v) for v in zip(*rows, strict=True)] for rows in zip(*scores, strict=True)]
    report(f"mean of {len(args.exports)} critics", sampled, mean, settings, args.n)


def report(name: str, sampled, scores, settings: Settings, n: int) -> None:
    greedy = rate(sampled.greedy_right())
    curve = best_of_n_curve(pools_of(sampled, scores), (n,), settings.subsets, 0)
    chosen, oracle = curve["best_of_n"][n]["accuracy"], curve["pass_at_n"][n]["accuracy"]
    print(
        f"{name}: best-of-{n} {chosen:.3f} (greedy {greedy:.3f}, pass@{n} {oracle:.3f}; "
        f"gap closed {gap_closed(greedy, chosen, oracle):+.1%})",
        flush=True,
    )


if __name__ == "__main__":
    main()
