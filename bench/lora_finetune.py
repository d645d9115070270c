"""Phase two with LoRA: training samples/s and peak RSS, autocritic vs Hugging Face `Trainer` + peft.

Same backbone, data, LoRA settings, batch size, learning rate and epochs; each side runs in its own process so
peak RSS is its own. Timed: the training loop alone (model loading and tokenization excluded on both sides).
Each side runs REPEATS times, alternating, and the median run is reported: one run of either varies by ±15% on a
shared 2-core machine.

    python bench/lora_finetune.py [hydra overrides]          # prints both and the ratio ours / Trainer
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import compose_config, hf_rows, peak_rss_mib, prepared_data

EPOCHS = 1
REPEATS = 3


def median_run(runs: list[dict]) -> dict:
    """The run of median throughput, with its own peak RSS."""
    return sorted(runs, key=lambda r: r["samples_per_s"])[len(runs) // 2]


def run_ours(cfg, datamodule, work: str) -> float:
    import lightning as L

    from autocritic.training.module import CriticModule, OptimSettings
    from autocritic.training.objectives import ObjectiveSettings
    from autocritic.training.run import build_critic

    critic, _ = build_critic(cfg, start=None)
    module = CriticModule(
        critic, ObjectiveSettings(kind="bce"), OptimSettings(lr=cfg.phase.lr), backbone_frozen=False
    )
    trainer = L.Trainer(
        accelerator="cpu" if not torch.cuda.is_available() else "auto",
        max_epochs=EPOCHS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=work,
    )
    loader = datamodule.train_dataloader()
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    return time.perf_counter() - start


def run_hf(cfg, datamodule, work: str) -> float:
    import datasets
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    model = AutoModelForSequenceClassification.from_pretrained(cfg.model.name_or_path, num_labels=2)
    model.config.pad_token_id = datamodule.tokenizer.pad_token_id
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=cfg.peft.r,
        lora_alpha=cfg.peft.alpha,
        lora_dropout=cfg.peft.dropout,
        target_modules=list(cfg.peft.target_modules),
    )
    model = get_peft_model(model, lora)
    args = TrainingArguments(
        output_dir=work,
        num_train_epochs=EPOCHS,
        per_device_train_batch_size=cfg.data.batch_size,
        learning_rate=cfg.phase.lr,
        lr_scheduler_type="constant",
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        logging_strategy="no",
        seed=cfg.seed,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_dict(hf_rows(datamodule, "train")),
        data_collator=DataCollatorWithPadding(datamodule.tokenizer),
    )
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def child(which: str, overrides: list[str]) -> None:
    # The Trainer side learns the classifier alone: no joint LM loss and no replay documents on either side (the
    # finetune phase turns both on; with replay files loaded, ours would also run their forward).
    cfg = compose_config(overrides + ["phase=finetune", "peft=lora", "objective.lm_weight=0", "objective.replay_weight=0"])
    datamodule = prepared_data(cfg)
    samples = len(datamodule.encoded["train"]) * EPOCHS
    with tempfile.TemporaryDirectory() as work:
        seconds = (run_ours if which == "ours" else run_hf)(cfg, datamodule, work)
    print(
        json.dumps(
            {
                "which": which,
                "samples_per_s": samples / seconds,
                "seconds": seconds,
                "peak_rss_mib": peak_rss_mib(),
            }
        )
    )


def main() -> None:
    overrides = sys.argv[1:]
    runs: dict[str, list[dict]] = {"hf": [], "ours": []}
    for _ in range(REPEATS):  # alternated, so a slow spell of a shared machine hits both sides
        for which in ("hf", "ours"):
            out = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--child", which, *overrides],
                capture_output=True,
                text=True,
                env=dict(os.environ),
            )
            if out.returncode != 0:
                sys.exit(f"{which} failed:\n{out.stderr[-3000:]}")
            runs[which].append(json.loads(out.stdout.strip().splitlines()[-1]))
    hf, ours = (median_run(runs[k]) for k in ("hf", "ours"))
    for which, rs in runs.items():
        print(f"{which:5s} samples/s per run: " + ", ".join(f"{r['samples_per_s']:.1f}" for r in rs))
    print(f"epochs {EPOCHS}  runs per side {REPEATS} (medians below)  torch threads {torch.get_num_threads()}")
    print(
        f"HF Trainer + peft:  {hf['samples_per_s']:8.1f} samples/s   peak RSS {hf['peak_rss_mib']:7.0f} MiB"
    )
    print(
        f"autocritic LoRA:    {ours['samples_per_s']:8.1f} samples/s   peak RSS {ours['peak_rss_mib']:7.0f} MiB"
    )
    print(
        f"throughput ratio (ours / Trainer): {ours['samples_per_s'] / hf['samples_per_s']:.2f}x   "
        f"peak RSS ratio (ours / Trainer): {ours['peak_rss_mib'] / hf['peak_rss_mib']:.2f}x"
    )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3:])
    else:
        main()
