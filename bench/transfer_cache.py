"""Phase one, frozen backbone, 5 epochs: Hugging Face `Trainer` on `*ForSequenceClassification` vs autocritic.

Both train a linear head (one logit, BCE) on the same frozen model and data and are validated every epoch. autocritic computes
each example's final state once (feature cache, cold at the start) and trains the head on it; the `Trainer`
runs the frozen backbone forward on every batch of every epoch.

    python bench/transfer_cache.py [hydra overrides, e.g. model=... data=...]
Each side runs REPEATS times, alternating; prints the wall-time ratio of the median runs (Trainer / autocritic)
and both validation AUROCs.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time

import numpy as np
import torch
from common import auroc, compose_config, hf_rows, prepared_data

from autocritic.training.run import train

EPOCHS = 5
REPEATS = 3  # one run of either side varies by ±15% on a shared 2-core machine


def float_labels(rows: dict[str, list]) -> dict[str, list]:
    return rows | {"labels": [[float(y)] for y in rows["labels"]]}


def run_hf_trainer(cfg, datamodule, out_dir: str) -> tuple[float, float]:
    import datasets
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    start = time.perf_counter()
    # One logit and BCE, as autocritic's critic: the same objective on both sides (2-label cross-entropy would
    # compare two different losses, not the cache).
    model = AutoModelForSequenceClassification.from_pretrained(
        cfg.model.name_or_path, num_labels=1, problem_type="multi_label_classification"
    )
    # The same initial scale as autocritic's head (normal, std 1/sqrt(hidden+1)): both start alike.
    torch.manual_seed(cfg.seed)
    torch.nn.init.normal_(model.score.weight, std=(model.config.hidden_size + 1) ** -0.5)
    tokenizer = datamodule.tokenizer
    model.config.pad_token_id = tokenizer.pad_token_id
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("score")
    train_set, val_set = (datasets.Dataset.from_dict(float_labels(hf_rows(datamodule, s))) for s in ("train", "val"))

    def metrics(pred):
        logits, labels = pred
        return {"auroc": auroc(torch.tensor(logits[:, 0]), torch.tensor(labels[:, 0]))}

    args = TrainingArguments(
        output_dir=out_dir,
        num_train_epochs=EPOCHS,
        per_device_train_batch_size=cfg.data.batch_size,
        per_device_eval_batch_size=cfg.data.eval_batch_size,
        learning_rate=cfg.phase.lr,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        eval_strategy="epoch",
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        seed=cfg.seed,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=metrics,
    )
    trainer.train()
    # The best validation AUROC over the epochs, as autocritic's checkpoint callback reports it.
    value = max(entry["eval_auroc"] for entry in trainer.state.log_history if "eval_auroc" in entry)
    return time.perf_counter() - start, float(value)


def run_autocritic(overrides: list[str], work: str) -> tuple[float, float]:
    cfg = compose_config(
        ["head=linear", "head.confidence=false"]  # the baseline's head (the state only); the command line still wins
        + overrides
        + [
            "phase=transfer",
            f"phase.max_epochs={EPOCHS}",
            "logger=none",
            "progress_bar=none",
            f"paths.outputs={work}/outputs",
            f"paths.run_dir={work}/outputs/run",
            f"paths.cache={work}/cache",  # cold cache: its cost is part of the measurement
        ]
    )
    start = time.perf_counter()
    value = train(cfg)
    return time.perf_counter() - start, float(value)


def main() -> None:
    overrides = sys.argv[1:]
    cfg = compose_config(overrides + ["phase=transfer"])
    datamodule = prepared_data(cfg)
    n_train = len(datamodule.encoded["train"])
    runs: dict[str, list[tuple[float, float]]] = {"hf": [], "ours": []}
    for _ in range(REPEATS):  # alternated, so a slow spell of a shared machine hits both sides
        work = tempfile.mkdtemp(prefix="bench_transfer_")  # a cold feature cache every time
        try:
            runs["ours"].append(run_autocritic(overrides, work))
            runs["hf"].append(run_hf_trainer(cfg, datamodule, f"{work}/hf"))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    (hf_s, hf_auroc), (ours_s, ours_auroc) = (sorted(runs[k])[REPEATS // 2] for k in ("hf", "ours"))
    print(
        f"model {cfg.model.name_or_path}  train examples {n_train}  epochs {EPOCHS}  torch threads {torch.get_num_threads()}"
    )
    for which, timed in runs.items():
        print(f"{which:5s} seconds per run: " + ", ".join(f"{seconds:.1f}" for seconds, _ in timed))
    print(f"runs per side {REPEATS}, alternated; the median run of each side:")
    print(f"HF Trainer (frozen backbone):   {hf_s:8.1f} s   val AUROC {hf_auroc:.4f}")
    print(f"autocritic (feature cache):     {ours_s:8.1f} s   val AUROC {ours_auroc:.4f}")
    print(
        f"speed-up (Trainer / autocritic): {hf_s / ours_s:.2f}x   AUROC difference {abs(hf_auroc - ours_auroc):.4f}"
    )


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
