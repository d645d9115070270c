"""Replay documents of the offline default: fresh documents from the pretraining generator, which
`phase=finetune` keeps training the language model on (data/replay.py), so fine-tuning on arithmetic answers
does not wear away dialogue, summaries and ReAct.

data/offline/replay/documents.jsonl   one {"segments": [[text, trained], ...]} per line
data/offline/replay/info.json         settings and fingerprint: equal settings skip the build
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from autocritic.offline.documents import check_mix, iter_documents
from autocritic.offline.pretrain import MIX, PretrainSettings, recorded_fingerprint, settings_fingerprint
from autocritic.settings import at_least

DOCUMENTS = "documents.jsonl"
INFO = "info.json"


@dataclass(frozen=True)
class ReplaySettings:
    seed: int = 1000  # away from the pretraining seeds: new documents of the same kinds
    documents: int = 8000
    mix: dict[str, float] = field(default_factory=lambda: dict(PretrainSettings().mix), metadata=MIX)

    def __post_init__(self) -> None:
        check_mix(self.mix)
        at_least(self, 1, "documents")

    def fingerprint(self) -> str:
        return settings_fingerprint(self)


def build_replay_documents(settings: ReplaySettings, out_dir: Path, force: bool = False) -> Path:
    """Write `settings.documents` documents to out_dir/documents.jsonl; skipped when already built alike."""
    out_dir = Path(out_dir)
    info_file, documents_file = out_dir / INFO, out_dir / DOCUMENTS
    fingerprint = settings.fingerprint()
    if not force and documents_file.is_file() and recorded_fingerprint(info_file) == fingerprint:
        return documents_file
    out_dir.mkdir(parents=True, exist_ok=True)
    documents = itertools.islice(
        iter_documents(settings.seed, settings.mix),
        settings.documents,
    )
    tmp = documents_file.with_suffix(".tmp")  # renamed when complete: a crash leaves no half file
    with tmp.open("w", encoding="utf-8") as handle:
        for document in documents:
            handle.write(json.dumps({"segments": [[text, trained] for text, trained in document]}) + "\n")
    tmp.replace(documents_file)
    info = {"fingerprint": fingerprint, "settings": dataclasses.asdict(settings)}
    info_file.write_text(json.dumps(info, indent=2) + "\n")
    return documents_file
