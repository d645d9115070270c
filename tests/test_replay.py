"""Replay documents: reading and validation, tokenization with trained pieces, the cycling sampler, the offline
builder, and a finetune run that really trains the language model on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import compose_train, tiny_overrides

from autocritic.data.replay import ReplayCycle, encode_documents, read_replay_files
from autocritic.errors import ConfigError, DataError
from autocritic.model.backbone import load_tokenizer
from autocritic.model.export import load_critic
from autocritic.offline.replay import ReplaySettings, build_replay_documents
from autocritic.training import run
from autocritic.training.objectives import lm_loss

STORY = "The cat sat on the mat and the dog sat on the log. " * 3


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_text_and_segment_documents_are_read(tmp_path):
    file = write_lines(
        tmp_path / "r.jsonl",
        [json.dumps({"text": "hello"}), "", json.dumps({"segments": [["Q: 1+1?", False], [" 2", True]]})],
    )
    assert read_replay_files([str(file)]) == [[("hello", True)], [("Q: 1+1?", False), (" 2", True)]]


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "r.jsonl, line 2: not valid JSON"),
        (json.dumps({"content": "x"}), "r.jsonl, line 2: a replay document must be"),
        (json.dumps({"segments": [["only a prompt", False]]}), "at least one trained piece"),
        (json.dumps({"segments": [["x", "yes"]]}), "r.jsonl, line 2"),
    ],
)
def test_a_bad_document_names_its_line(tmp_path, line, message):
    file = write_lines(tmp_path / "r.jsonl", [json.dumps({"text": "fine"}), line])
    with pytest.raises(DataError, match=message):
        read_replay_files([str(file)])


def test_missing_empty_or_wrong_kind_of_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_replay_files([str(tmp_path / "none.jsonl")])
    with pytest.raises(DataError, match="hold no document"):
        read_replay_files([str(write_lines(tmp_path / "empty.jsonl", [""]))])
    with pytest.raises(DataError, match="JSON lines"):
        read_replay_files([str(write_lines(tmp_path / "r.txt", ["text"]))])


def test_untrained_pieces_get_no_label_and_documents_are_cut(tiny_backbone):
    tokenizer = load_tokenizer(str(tiny_backbone))
    ((ids, labels),) = encode_documents([[("Human: my cat is Tom.", False), (" AI: Tom!", True)]], tokenizer, 512)
    ((long_ids, long_labels),) = encode_documents([[(STORY * 10, True)]], tokenizer, max_length=16)
    prompt = len(tokenizer("Human: my cat is Tom.", add_special_tokens=False)["input_ids"])
    assert labels[:prompt] == [-100] * prompt
    assert labels[prompt:] == ids[prompt:] and ids[-1] == tokenizer.eos_token_id
    assert len(long_ids) == 16 and long_labels == long_ids


def test_replay_cycle_goes_on_through_the_documents_each_epoch():
    sampler = ReplayCycle(size=10, length=4, seed=3)
    epochs = []
    for epoch in range(5):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
    assert all(len(e) == 4 for e in epochs)
    stream = [i for e in epochs for i in e]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))  # whole passes
    sampler.set_epoch(2)
    assert list(sampler) == epochs[2]  # a resumed run draws the same documents


def test_offline_builder_writes_and_skips(tmp_path):
    settings = ReplaySettings(documents=25)
    path = build_replay_documents(settings, tmp_path)
    documents = read_replay_files([str(path)])
    assert len(documents) == 25
    stamp = path.stat().st_mtime_ns
    build_replay_documents(settings, tmp_path)
    assert path.stat().st_mtime_ns == stamp  # same settings: not rebuilt
    build_replay_documents(ReplaySettings(documents=30), tmp_path)
    assert len(read_replay_files([str(path)])) == 30


def test_replay_is_refused_when_the_backbone_is_frozen(tiny_backbone, tiny_data, tmp_path):
    cfg = compose_train([*tiny_overrides(tiny_backbone, tiny_data, tmp_path), "objective.replay_weight=1.0"])
    with pytest.raises(ConfigError, match="replay_weight>0 trains the language model"):
        run.train(cfg)


def story_loss(export: Path) -> float:
    loaded = load_critic(export)
    ids = loaded.tokenizer(STORY, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = loaded.model.backbone(input_ids=ids).logits
    return float(lm_loss(logits, ids))


def test_finetune_trains_the_language_model_on_replay_documents(tiny_backbone, tiny_data, tmp_path):
    replay = write_lines(tmp_path / "replay.jsonl", [json.dumps({"text": STORY})] * 8)
    transfer = compose_train([*tiny_overrides(tiny_backbone, tiny_data, tmp_path, "t"), "phase.max_epochs=1"])
    run.train(transfer)
    losses = {}
    for weight in (0.0, 1.0):
        name = f"replay{weight}"
        cfg = compose_train(
            [
                *tiny_overrides(tiny_backbone, tiny_data, tmp_path, name),
                "phase=finetune",
                f"ckpt={Path(transfer.paths.run_dir) / 'export'}",
                "phase.max_epochs=2",
                "phase.lr=0.01",
                "peft=none",
                f"data.replay_files=[{replay}]",
                "data.replay_batch_size=2",
                f"objective.replay_weight={weight}",
            ]
        )
        run.train(cfg)
        losses[weight] = story_loss(Path(cfg.paths.run_dir) / "export")
    assert losses[1.0] < 0.8 * losses[0.0], losses


def test_only_a_training_backbone_reads_the_replay_files():
    transfer, finetune = compose_train([]), compose_train(["phase=finetune"])
    assert run.data_settings(transfer).replay_files == []  # frozen: the offline default's files are not read
    assert run.data_settings(finetune).replay_files == list(finetune.data.replay_files) != []
    assert run.data_settings(compose_train(["phase=finetune", "objective.replay_weight=0"])).replay_files == []
