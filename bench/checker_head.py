"""Can a bigger head learn to check the arithmetic that the model gets wrong?

The default head reads the final state at the last token and the model's confidence. It ranks the answers to one
question a little better than the likelihood, not enough for best-of-8 to leave greedy behind. Most wrong
samples are off in the last digit (`bench/cross_critic.py`), and that digit follows from the operands' last
digits: a checker needs to compare a few positions. This trains, on the same critic data and in the same run:

- `last state`: an MLP on the final state at the last token and the confidence (the default head's inputs);
- `attention`: two transformer layers over the final states of the last `--window` tokens (question, answer) and
  the confidence, read at the last token;
- `attention + synthetic`: the same, with extra rows per TRAIN problem: the right answer and every other last
  digit, and the tens digit ±1 (hard negatives that cost no sampling);
- `tokens + synthetic`: the same layers reading the token ids instead of the model's states: what a small
  transformer learns from the text itself in the same budget;
- `states + tokens + synthetic`: the states plus a learned embedding of each token id (a final state is tuned to
  predict the next token and may blur which token it sits on).

Each prints the mean within-problem AUROC on the TEST rows (the problems with right and wrong answers; what
best-of-N relies on) next to the model's likelihood (mean token log-probability), and the AUROC over all rows.
With `--rerank EXPORT` (an export whose backbone is `--backbone`, e.g. the transfer export) it also samples the
rerank suite's problems with that export and prints best-of-N by each head against greedy, pass@N, majority, the
likelihood and the export's own critic. The heads here read features from a second pass over each text.

    python bench/checker_head.py [--backbone data/offline/backbone] [--epochs 12] [--only 'attention + synthetic'] [--rerank <transfer export>]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import torch
from torch import nn

from autocritic.evaluation.metrics import Pool, auroc, within_problem_auroc
from autocritic.model.backbone import load_backbone, load_tokenizer
from autocritic.model.critic import gather_logprobs
from autocritic.offline.tasks import evaluate_expression, format_number

QUESTION = re.compile(r"What is (.*)\?\nAnswer:$")


def read_rows(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def synthetic_rows(rows: list[dict]) -> list[dict]:
    """Per prompt: the right answer, every other last digit and the tens digit ±1."""
    out = []
    for prompt in sorted({r["prompt"] for r in rows}):
        truth = format_number(evaluate_expression(QUESTION.search(prompt).group(1)))
        out.append({"prompt": prompt, "response": " " + truth, "label": 1})
        digits = [i for i, c in enumerate(truth) if c.isdigit()]
        wrong = {truth[: digits[-1]] + d + truth[digits[-1] + 1 :] for d in "0123456789"}
        if len(digits) > 1:
            k = digits[-2]
            wrong |= {truth[:k] + str((int(truth[k]) + step) % 10) + truth[k + 1 :] for step in (1, -1)}
        wrong.discard(truth)
        out += [{"prompt": prompt, "response": " " + w, "label": 0} for w in sorted(wrong)]
    return out


@torch.no_grad()
def featurize(model, tokenizer, rows: list[dict], window: int, batch_size: int = 64) -> dict:
    """Final states and token ids of the last `window` tokens (left-padded), mean/min response log-prob."""
    states, masks, tokens, confidence = [], [], [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        prompts = [tokenizer(r["prompt"])["input_ids"] for r in chunk]
        ids = [p + tokenizer(r["response"])["input_ids"] for p, r in zip(prompts, chunk, strict=True)]
        width = max(map(len, ids))
        x = torch.full((len(ids), width), tokenizer.pad_token_id)
        mask = torch.zeros_like(x)
        for j, seq in enumerate(ids):
            x[j, width - len(seq) :], mask[j, width - len(seq) :] = torch.tensor(seq), 1
        out = model(
            input_ids=x, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), output_hidden_states=True
        )
        final = out.hidden_states[-1]
        logprobs = gather_logprobs(out.logits[:, :-1], x[:, 1:])
        for j, seq in enumerate(ids):
            response = logprobs[j, width - 1 - (len(seq) - len(prompts[j])) :]
            confidence.append(torch.stack([response.mean(), response.min()]))
            n = min(window, len(seq))
            s, m, t = torch.zeros(window, final.shape[-1]), torch.zeros(window), torch.zeros(window, dtype=torch.long)
            s[window - n :], m[window - n :], t[window - n :] = final[j, width - n :], 1, x[j, width - n :]
            states.append(s)
            masks.append(m)
            tokens.append(t)
    return {
        "states": torch.stack(states),
        "mask": torch.stack(masks),
        "tokens": torch.stack(tokens),
        "confidence": torch.stack(confidence),
        "label": torch.tensor([r["label"] for r in rows]).float(),
        "prompt": [r["prompt"] for r in rows],
    }


class LastState(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden + 2, 256), nn.GELU(), nn.Linear(256, 1))

    def forward(self, batch: dict) -> torch.Tensor:
        return self.net(torch.cat([batch["states"][:, -1], batch["confidence"]], -1)).squeeze(-1)


class Attention(nn.Module):
    def __init__(
        self, hidden: int, window: int, vocab: int | None = None, width: int = 64, layers: int = 2, both: bool = False
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden) if vocab else None
        self.both = both  # the states and the token ids, summed
        self.project = nn.Linear(hidden, width)
        self.position = nn.Parameter(torch.randn(window, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, 4, 4 * width, 0.1, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(width + 2), nn.Linear(width + 2, 1))

    def forward(self, batch: dict) -> torch.Tensor:
        x = self.embed(batch["tokens"]) if self.embed is not None else batch["states"]
        if self.both:
            x = batch["states"] + self.embed(batch["tokens"])
        z = self.layers(self.project(x) + self.position, src_key_padding_mask=batch["mask"] == 0)[:, -1]
        return self.out(torch.cat([z, batch["confidence"]], -1)).squeeze(-1)


def within_problem(scores: torch.Tensor, data: dict) -> float:
    """The rerank suite's within-problem AUROC, with the rows of one prompt as one pool."""
    pools: dict[str, Pool] = {}
    for score, label, prompt in zip(scores.tolist(), data["label"].tolist(), data["prompt"], strict=True):
        pool = pools.setdefault(prompt, Pool(truth="", answers=[], correct=[], scores=[]))
        pool.correct.append(bool(label))
        pool.scores.append(score)
    return within_problem_auroc(list(pools.values()))[0]


def joined(a: dict, b: dict) -> dict:
    return {k: a[k] + b[k] if isinstance(a[k], list) else torch.cat([a[k], b[k]]) for k in a}


def fit(model: nn.Module, train: dict, epochs: int, positive_weight: float, seed: int, batch_size: int = 128) -> None:
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    n = len(train["label"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-3, total_steps=epochs * math.ceil(n / batch_size))
    weight = torch.tensor(positive_weight)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            batch = {k: v[index] for k, v in train.items() if k != "prompt"}
            loss = nn.functional.binary_cross_entropy_with_logits(model(batch), batch["label"], pos_weight=weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


def sampled_pools(args, model, tokenizer) -> dict:
    """The rerank suite's problems, N samples each from the export; prints greedy, pass@N and the baselines, and
    returns a `report(name, scores)` for each head."""
    from autocritic.evaluation.context import EvalContext
    from autocritic.evaluation.metrics import best_of_n_curve, gap_closed, rate
    from autocritic.evaluation.rerank import Settings, pools_of, sample_answers
    from autocritic.inference.generation import CriticGenerator

    settings = Settings(n_problems=args.problems, n_samples=args.n, ns=(args.n,)).resolved()
    ctx = EvalContext.for_generator(CriticGenerator.from_export(args.rerank, batch_size=64))
    sampled = sample_answers(ctx, settings)
    rows = [
        {"prompt": prompt, "response": x.text, "label": 0}
        for prompt, row in zip(sampled.prompts, sampled.samples, strict=True)
        for x in row
    ]
    features = featurize(model, tokenizer, rows, args.window)
    greedy = rate(sampled.greedy_right())
    own = pools_of(sampled)
    n = args.n

    def best_of(pools, of: str = "best_of_n") -> float:
        return best_of_n_curve(pools, (n,), settings.subsets, ctx.seed)[of][n]["accuracy"]

    oracle = best_of(own, "pass_at_n")
    print(
        f"rerank: {len(own)} problems, {n} samples each at T={settings.temperature} by {args.rerank} "
        f"(sample text {rows[0]['response']!r}); greedy {greedy:.3f}, pass@{n} {oracle:.3f}, "
        f"majority {best_of(own, 'majority'):.3f}"
    )

    def report(name: str, scores: list[list[float]] | None, of: str = "best_of_n") -> None:
        pools = own if scores is None else pools_of(sampled, scores)
        chosen = best_of(pools, of)
        auc = within_problem_auroc(pools, "likelihoods" if of == "likelihood" else "scores")[0]
        print(
            f"  best-of-{n} by {name}: {chosen:.3f} (gap closed {gap_closed(greedy, chosen, oracle):+.1%}), "
            f"within-problem AUROC {auc:.3f}",
            flush=True,
        )

    report("likelihood", None, "likelihood")
    report("the export's critic", None)
    return {"sampled": sampled, "features": features, "report": report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="data/offline/backbone", help="the model that generated the critic data")
    parser.add_argument("--data", default="data/offline/critic")
    parser.add_argument("--window", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rerank",
        metavar="EXPORT",
        help="also best-of-N on the rerank suite's problems, sampled by this export (one whose backbone is --backbone)",
    )
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--only", nargs="*", default=None, help="heads to train, e.g. --only 'attention + synthetic'")
    args = parser.parse_args()
    model = load_backbone(args.backbone).eval()
    tokenizer = load_tokenizer(args.backbone)
    data_dir = Path(args.data)
    train_rows = read_rows(data_dir / "train.jsonl")
    extra_rows = synthetic_rows(train_rows)
    started = time.perf_counter()
    train, extra, test = (
        featurize(model, tokenizer, rows, args.window) for rows in (train_rows, extra_rows, read_rows(data_dir / "test.jsonl"))
    )
    print(
        f"{len(train_rows)} TRAIN rows (+{len(extra_rows)} synthetic), {len(test['label'])} TEST rows; "
        f"features in {time.perf_counter() - started:.0f} s"
    )
    likelihood = test["confidence"][:, 0]
    print(f"{'likelihood':24s} within-problem AUROC {within_problem(likelihood, test):.3f}  all rows {auroc(likelihood.tolist(), test['label'].bool().tolist()):.3f}")
    rerank = sampled_pools(args, model, tokenizer) if args.rerank else None
    hidden, vocab = train["states"].shape[-1], len(tokenizer)
    torch.manual_seed(args.seed)  # the heads' initial weights: loading the model left the global generator unseeded
    both = joined(train, extra)
    runs = [
        ("last state", LastState(hidden), train, 1.0),
        ("attention", Attention(hidden, args.window), train, 1.0),
        ("attention + synthetic", Attention(hidden, args.window), both, 3.0),
        ("tokens + synthetic", Attention(hidden, args.window, vocab=vocab), both, 3.0),
        ("states + tokens + synthetic", Attention(hidden, args.window, vocab=vocab, both=True), both, 3.0),
    ]
    for name, head, rows, positive_weight in runs:
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        fit(head, rows, args.epochs, positive_weight, args.seed)
        with torch.no_grad():
            scores = head({k: v for k, v in test.items() if k != "prompt"})
        print(
            f"{name:24s} within-problem AUROC {within_problem(scores, test):.3f}  all rows "
            f"{auroc(scores.tolist(), test['label'].bool().tolist()):.3f}  ({len(rows['label'])} rows, "
            f"{args.epochs} epochs, {time.perf_counter() - started:.0f} s)",
            flush=True,
        )
        if rerank:
            with torch.no_grad():
                sample_scores = head({k: v for k, v in rerank["features"].items() if k != "prompt"}).tolist()
            n = args.n
            rerank["report"](f"{name}", [sample_scores[k * n : (k + 1) * n] for k in range(len(rerank["sampled"].problems))])


if __name__ == "__main__":
    main()
