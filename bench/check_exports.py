"""Does each run's export hold the weights it was tested with? (the sharded strategies' check)

    python bench/check_exports.py <run dir>... [--test data/offline/critic/test.jsonl]

For each run: load `export/` with `load_critic`, score the test rows, and compare the AUROC with the one
`train.py` measured at the end of the run (metrics.json). Under FSDP or DeepSpeed ZeRO-3 the live module holds
shards: an export written from it fails to load or scores like another model. Also reports whether the trained
weights moved from where they started (LoRA B matrices start at zero; a full fine-tune starts at the backbone).
Prints one JSON line per run; exits 1 when an export is missing, fails to load, or disagrees.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from autocritic.evaluation.metrics import auroc
from autocritic.inference.generation import CriticGenerator
from autocritic.model.backbone import load_backbone
from autocritic.model.reference import resolve_backbone

TOLERANCE = 0.01  # bf16-mixed test inside the run vs fp32 scoring of the export


def moved(export: Path, config: dict) -> float | None:
    """Largest change of a trained backbone weight: LoRA B matrices (zero at start) or full weights."""
    mode = config["backbone"]["mode"]
    if mode == "lora":
        adapter = load_file(str(export / "adapter" / "adapter_model.safetensors"))
        return max(float(v.abs().max()) for k, v in adapter.items() if "lora_B" in k)
    if mode == "full":
        tuned = load_backbone(str(export / "backbone")).state_dict()
        start = load_backbone(resolve_backbone(export, config["backbone"])).state_dict()
        return max(float((tuned[k].float() - start[k].float()).abs().max()) for k in start)
    return None


def check(run: Path, test_rows: list[dict], device: str) -> dict:
    export = run / "export"
    result: dict = {"run": str(run)}
    try:
        generator = CriticGenerator.from_export(export, batch_size=64, device=device)
    except Exception as error:  # a half-gathered export fails here: report it, check the others
        return result | {"ok": False, "error": f"{type(error).__name__}: {error}"[:500]}
    scores = generator.score_texts([r["prompt"] for r in test_rows], [r["response"] for r in test_rows])
    measured = auroc(scores, [r["label"] >= 0.5 for r in test_rows])
    config = json.loads((export / "critic_config.json").read_text())
    in_run = json.loads((run / "metrics.json").read_text()).get("test/auroc")
    result |= {
        "mode": config["backbone"]["mode"],
        "auroc_export": measured,
        "auroc_in_run": in_run,
        "trained_weight_change": moved(export, config),
    }
    result["ok"] = (
        measured is not None
        and in_run is not None
        and abs(measured - in_run) <= TOLERANCE
        and result["trained_weight_change"] != 0.0  # None: a frozen backbone, nothing to move
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--test", type=Path, default=Path("data/offline/critic/test.jsonl"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.test.read_text().splitlines() if line.strip()]
    results = [check(run, rows, args.device) for run in args.runs]
    for result in results:
        print(json.dumps(result))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
