"""Progress bars: shown on a terminal, silent in logs and pipes, silent when the user asks for quiet."""

from __future__ import annotations

import ast
import dataclasses
import io
import itertools
import sys

import pytest
from helpers import tiny_pretrain_settings
from omegaconf import OmegaConf

from autocritic import progress
from autocritic.entry import apply_quiet
from autocritic.errors import ConfigError
from autocritic.offline.documents import document_text, iter_documents
from autocritic.offline.generate import label_split
from autocritic.offline.pretrain import train_model
from autocritic.offline.tokenizer import train_tokenizer
from autocritic.progress import QUIET_ENV, track


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def not_quiet(monkeypatch):
    monkeypatch.setenv(QUIET_ENV, "0")  # and whatever a test sets is undone after it


def drawn(stream: io.StringIO, **kwargs) -> str:
    assert list(track(range(3), desc="steps", file=stream, **kwargs)) == [0, 1, 2]  # the items, bar or not
    return stream.getvalue()


def test_a_terminal_gets_a_bar():
    assert "steps: 100%" in drawn(Terminal()) and "3/3" in drawn(Terminal())


def test_silent_when_not_a_terminal():
    assert drawn(io.StringIO()) == ""


@pytest.mark.parametrize("value", ["1", "true"])
def test_silent_when_quiet(monkeypatch, value):
    monkeypatch.setenv(QUIET_ENV, value)
    assert drawn(Terminal()) == ""


def test_a_caller_can_turn_it_off_and_a_test_can_force_it():
    assert drawn(Terminal(), enabled=False) == ""
    assert "3/3" in drawn(io.StringIO(), force=True)


def test_a_bar_without_an_iterable_counts_updates():
    stream = Terminal()
    with track(total=4, desc="manual", file=stream) as bar:
        bar.update(4)
    assert "manual: 100%" in stream.getvalue() and "4/4" in stream.getvalue()


def test_the_helper_imports_nothing_of_ours():
    tree = ast.parse(open(progress.__file__).read())
    modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in modules if m.split(".")[0] == "autocritic"]


def test_quiet_key_sets_the_variable_and_turns_off_lightnings_bar():
    cfg = OmegaConf.create({"quiet": True, "progress_bar": "rich"})
    apply_quiet(cfg)
    assert progress.is_quiet() and cfg.progress_bar == "none"
    assert drawn(Terminal()) == ""


def test_the_variable_alone_also_turns_off_lightnings_bar(monkeypatch):
    monkeypatch.setenv(QUIET_ENV, "1")
    cfg = OmegaConf.create({"quiet": False, "progress_bar": "tqdm"})
    apply_quiet(cfg)
    assert cfg.progress_bar == "none"


def test_not_quiet_changes_nothing():
    cfg = OmegaConf.create({"quiet": False, "progress_bar": "rich"})
    apply_quiet(cfg)
    assert not progress.is_quiet() and cfg.progress_bar == "rich"


def test_quiet_must_be_a_bool():
    with pytest.raises(ConfigError, match="quiet='yes please' is not valid: expected true or false"):
        apply_quiet(OmegaConf.create({"quiet": "yes please"}))


def test_labelling_counts_problems(monkeypatch):
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    problems, prompts, responses = ["a", "b"], ["p1", "p2"], [["1", "2"], ["3"]]
    label_split(problems, prompts, responses, lambda p, r: r == "1", 2, 0, progress=True, desc="labelling")
    assert "labelling: 100%" in stream.getvalue() and "2/2" in stream.getvalue()


def test_pretraining_shows_its_steps_with_loss_and_pace(monkeypatch):
    settings = dataclasses.replace(tiny_pretrain_settings(), max_steps=3)
    tokenizer = train_tokenizer(
        (document_text(d) for d in itertools.islice(iter_documents(1, settings.mix), 200)), vocab_size=300
    )
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    train_model(settings, tokenizer, progress=True)
    shown = stream.getvalue()
    assert "pretraining: 100%" in shown and "3/3" in shown and "loss=" in shown and "tokens_per_s=" in shown
