"""Build the offline world end to end with default settings and print the figures:

    python -m autocritic.offline <work_dir>      # <work_dir>/backbone, <work_dir>/critic_data

Each step is skipped when its output already holds the same settings.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from autocritic.offline.evaluate import evaluate_backbone
from autocritic.offline.generate import GenerateSettings, build_critic_data
from autocritic.offline.pretrain import BUILD_INFO, PretrainSettings, build_backbone


def main(work_dir: Path) -> dict:
    backbone = build_backbone(PretrainSettings(), work_dir / "backbone")
    started = time.perf_counter()
    metrics = evaluate_backbone(backbone, progress=True)
    (backbone / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    data = build_critic_data(backbone, GenerateSettings(), work_dir / "critic_data")
    card = json.loads((data / "card.json").read_text())
    return {
        "build": json.loads((backbone / BUILD_INFO).read_text()),
        "eval": metrics,
        "critic_data": card["splits"],
        "critic_data_seconds": card["seconds"],
        "seconds_after_build": round(time.perf_counter() - started, 1),
    }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/offline")), indent=2))
