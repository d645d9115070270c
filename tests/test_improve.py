"""phase=improve: the filters, the rounds on a scripted world (what is kept, what is never read, resume, a round
that keeps nothing), and the offline world's sampling and fine-tuning on a tiny model without the true answers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from autocritic.errors import ConfigError
from autocritic.improve import world as world_module
from autocritic.improve.filters import Candidate, Kept, select
from autocritic.improve.generator import GeneratorSettings
from autocritic.improve.loop import ROUNDS, LoopSettings, NothingKept, read_rounds, run_rounds
from autocritic.improve.world import OfflineWorld, ProblemSettings, SamplingSettings
from autocritic.offline.tasks import Problem


def pool(*answers: tuple[str, float, float]) -> list[Candidate]:
    return [Candidate(text, score, logprob) for text, score, logprob in answers]


POOLS = [
    pool((" 1", -2.0, -0.1), (" 2", 3.0, -0.9), (" 3", 1.0, -0.5)),
    pool((" 7", -4.0, -0.2), (" 8", -3.0, -0.05)),
]


def test_the_critic_keeps_its_best_answer_per_problem_above_the_threshold():
    assert [(k.problem, k.text) for k in select(POOLS, "critic")] == [(0, " 2"), (1, " 8")]
    assert [(k.problem, k.text) for k in select(POOLS, "critic", threshold=0.5)] == [(0, " 2")]
    assert [k.text for k in select(POOLS, "critic", keep=2)] == [" 2", " 3", " 8", " 7"]


def test_likelihood_none_and_oracle_choose_by_their_own_signal():
    assert [k.text for k in select(POOLS, "likelihood")] == [" 1", " 8"]
    assert [k.text for k in select(POOLS, "none")] == [" 1", " 7"]  # the first sample: a random one
    assert len(select(POOLS, "none", keep=8)) == 5  # every distinct sample
    right = {(0, " 3"), (1, " 7")}
    assert [k.text for k in select(POOLS, "oracle", judge=lambda i, t: (i, t) in right)] == [" 3", " 7"]
    with pytest.raises(ConfigError, match="improve.filter='best'"):
        select(POOLS, "best")


class ScriptedWorld:
    """Two problems; answer i of a problem scores i, so the critic keeps the last sample. Records each call."""

    def __init__(self, judge_raises: bool = False):
        self.judge_raises, self.calls, self.trained = judge_raises, [], []

    def improving_prompts(self):
        return ["Q: a", "Q: b"]

    def sample(self, export, prompts, samples, seed):
        self.calls.append(("sample", Path(export).name))
        return [[Candidate(f"{p}-{i}", float(i - 2), -float(i)) for i in range(samples)] for p in prompts]

    def judge(self, problem, text):
        if self.judge_raises:
            raise AssertionError("the true answer of an improving problem was read")
        return text.endswith("-0")

    def fine_tune(self, export, kept, prompts, out, seed):
        self.trained.append([(prompts[k.problem], k.text) for k in kept])
        (out / "generator").mkdir()
        return out / "generator"

    def refresh_critic(self, generator, previous, out, seed):
        (out / "export").mkdir()
        (out / "export" / "critic_config.json").write_text("{}")
        return out / "export"

    def measure(self, export):
        self.calls.append(("measure", Path(export).parent.name))
        return {"greedy_accuracy": 0.1 * len(self.calls)}


def test_a_round_trains_on_exactly_the_critics_choices(tmp_path):
    world = ScriptedWorld()
    rounds = run_rounds(world, LoopSettings(rounds=2, samples=4), tmp_path, tmp_path / "start")
    assert world.trained == [[("Q: a", "Q: a-3"), ("Q: b", "Q: b-3")]] * 2
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[2]["export"] == str(tmp_path / "round_2" / "export")
    assert ("sample", "export") in world.calls  # round 2 samples from round 1's export
    assert rounds[1]["filter_precision"] == 0.0  # the audit: the kept "-3" answers are wrong
    assert json.loads((tmp_path / ROUNDS).read_text())["rounds"] == rounds


@pytest.mark.parametrize("name", ["critic", "likelihood", "none"])
def test_the_improving_labels_are_never_read(tmp_path, name):
    world = ScriptedWorld(judge_raises=True)
    run_rounds(world, LoopSettings(rounds=1, samples=3, filter=name, audit=False), tmp_path, tmp_path / "start")
    assert world.trained
    with pytest.raises(AssertionError, match="true answer"):  # the check can fail: oracle reads them
        run_rounds(ScriptedWorld(judge_raises=True), LoopSettings(rounds=1, filter="oracle", audit=False),
                   tmp_path / "oracle", tmp_path / "start")


def test_resume_goes_on_at_the_next_round(tmp_path):
    first = ScriptedWorld()
    run_rounds(first, LoopSettings(rounds=1, samples=2), tmp_path, tmp_path / "start")
    (tmp_path / "round_2").mkdir()  # a round cut short: started over
    (tmp_path / "round_2" / "stale").write_text("x")
    again = ScriptedWorld()
    rounds = run_rounds(again, LoopSettings(rounds=2, samples=2), tmp_path, tmp_path / "start")
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert len(again.trained) == 1 and ("measure", "start") not in again.calls  # round 0 and 1 not redone
    assert again.calls[0] == ("sample", "export")  # from round 1's export
    assert not (tmp_path / "round_2" / "stale").exists()
    with pytest.raises(ConfigError, match="ran with improve.filter=critic, not none"):
        run_rounds(ScriptedWorld(), LoopSettings(rounds=3, samples=2, filter="none"), tmp_path, tmp_path / "start")


def test_a_round_that_keeps_nothing_says_so_and_leaves_the_last_export(tmp_path):
    world = ScriptedWorld()
    run_rounds(world, LoopSettings(rounds=1, samples=2), tmp_path, tmp_path / "start")
    before = (tmp_path / "round_1" / "export" / "critic_config.json").read_text()
    with pytest.raises(NothingKept, match=r"round 2: improve.filter=critic kept none.*round_1/export, is intact"):
        run_rounds(world, LoopSettings(rounds=2, samples=2, threshold=0.99), tmp_path, tmp_path / "start")
    assert (tmp_path / "round_1" / "export" / "critic_config.json").read_text() == before
    assert [r["round"] for r in read_rounds(tmp_path)] == [0, 1]


class Unlabelled:
    """An improving problem whose true answer must not be read."""

    def __init__(self, problem: Problem):
        self._problem = problem

    def __getattr__(self, name):
        if name == "answer":
            raise AssertionError("the true answer of an improving problem was read")
        return getattr(self._problem, name)


def test_the_offline_world_samples_and_fine_tunes_without_the_true_answers(tiny_export, monkeypatch, tmp_path):
    real = world_module.problem_sets

    def guarded(settings):
        improving, labelled, held_out = real(settings)
        return [Unlabelled(p) for p in improving], labelled, held_out

    monkeypatch.setattr(world_module, "problem_sets", guarded)
    world = OfflineWorld(
        ProblemSettings(improving=3, labelled=4, held_out=2),
        SamplingSettings(max_new_tokens=3, batch_size=8),
        GeneratorSettings(epochs=1, lr=1e-2, batch_size=2, mode="full"),
        replay_files=[],
        critic_overrides=[],
    )
    prompts = world.improving_prompts()
    pools = world.sample(tiny_export, prompts, samples=2, seed=0)
    assert [len(p) for p in pools] == [2, 2, 2]
    assert all(c.score is not None and c.mean_logprob is not None for p in pools for c in p)
    kept = select(pools, "critic")
    out = tmp_path / "round_1"
    out.mkdir()
    generator = world.fine_tune(tiny_export, kept, prompts, out, seed=0)
    before = load_file(str(Path(json.loads((tiny_export / "critic_config.json").read_text())["backbone"]["absolute_path"]) / "model.safetensors"))
    after = load_file(str(generator / "model.safetensors"))
    assert any((before[k] != after[k]).any() for k in before)  # the generator learned from the kept answers
    with pytest.raises(AssertionError, match="true answer"):
        world.judge(0, " 1")


@pytest.mark.parametrize(
    ("targets", "wrapped"),
    [
        (("query_key_value",), {"query_key_value"}),
        (None, {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}),  # every linear layer but the output
    ],
)
def test_a_lora_round_changes_only_the_wrapped_layers_and_saves_a_whole_model(tiny_export, tmp_path, targets, wrapped):
    """mode=lora: the adapter is merged after training, so the round's generator is a plain causal LM whose
    wrapped layers moved and whose other weights are the export's own."""
    world = OfflineWorld(
        ProblemSettings(improving=3, labelled=4, held_out=2),
        SamplingSettings(max_new_tokens=3, batch_size=8),
        GeneratorSettings(epochs=2, lr=5e-2, batch_size=2, mode="lora", lora_r=2, lora_targets=targets),
        replay_files=[],
        critic_overrides=[],
    )
    prompts = world.improving_prompts()
    kept = [Kept(problem=i, text=" 12", value=1.0) for i in range(len(prompts))]
    out = tmp_path / "round_1"
    out.mkdir()
    generator = world.fine_tune(tiny_export, kept, prompts, out, seed=0)
    backbone = Path(json.loads((tiny_export / "critic_config.json").read_text())["backbone"]["absolute_path"])
    before, after = load_file(str(backbone / "model.safetensors")), load_file(str(generator / "model.safetensors"))
    assert set(after) == set(before)  # no adapter keys: the merged weights under the model's own names
    moved = {k.split(".")[-2] for k in before if not torch.equal(before[k], after[k])}
    assert moved == wrapped
    facts = json.loads((out / "generator.json").read_text())
    assert facts["mode"] == "lora" and facts["trained_parameters"] < sum(t.numel() for t in before.values()) / 10


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mode": "qlora"}, r"mode='qlora' is not one of \['full', 'lora'\]"),
        ({"lora_r": 0}, "lora_r=0 must be ≥ 1"),
        ({"lora_dropout": 1.0}, "lora_dropout=1.0 must be below 1"),
        ({"lora_targets": ()}, r"lora_targets=\[\] wraps nothing"),
    ],
)
def test_bad_generator_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        GeneratorSettings(**settings)


def test_the_learning_rate_is_the_modes_own_unless_set():
    assert GeneratorSettings().mode == "lora" and GeneratorSettings().lr == 1e-3
    assert GeneratorSettings(mode="full").lr == 1e-4
    assert GeneratorSettings(mode="full", lr=3e-5).lr == 3e-5


def test_lora_targets_the_model_lacks_are_a_config_error(tiny_backbone):
    from transformers import AutoModelForCausalLM

    from autocritic.improve.generator import with_lora

    model = AutoModelForCausalLM.from_pretrained(tiny_backbone)
    with pytest.raises(ConfigError, match="improve.generator.lora_targets to linear layer names"):
        with_lora(model, GeneratorSettings(mode="lora", lora_targets=("q_proj",)))


def test_your_problems_run_a_round_from_questions_without_answers(tiny_export, tmp_path):
    """A questions file with no answer column is enough to improve on; the labelled file refreshes the critic
    (an ordinary phase=transfer run) and measures the round."""
    from autocritic.improve.yours import YourSettings, YourWorld

    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": f"Q: {a}+{a}=? A:"}) + "\n" for a in range(6)))
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps({"question": f"Q: {a}+1=? A:", "answer": str(a + 1)}) + "\n" for a in range(10)))
    world = YourWorld(
        YourSettings(questions=str(questions), labelled=str(labelled), stop=("\n",)),
        tiny_export,
        SamplingSettings(max_new_tokens=3, batch_size=16, eval_samples=2),
        GeneratorSettings(epochs=1, batch_size=4),
        replay_files=[],
        critic_overrides=["phase.max_epochs=1", "data.batch_size=8", "progress_bar=none", f"paths.outputs={tmp_path}"],
    )
    assert world.improving_prompts()[0] == "Q: 0+0=? A:"
    rounds = run_rounds(world, LoopSettings(rounds=1, samples=2, audit=False), tmp_path / "run", tiny_export)
    export = tmp_path / "run" / "round_1" / "export"
    assert rounds[1]["export"] == str(export)
    config = json.loads((export / "critic_config.json").read_text())
    assert config["backbone"]["mode"] == "full" and (export / "backbone").is_dir()  # the round's export stands alone
    assert (tmp_path / "run" / "round_1" / "critic" / "export").is_dir()
    assert not (tmp_path / "run" / "round_1" / "critic" / "cache").exists()  # the refresh's features: not kept
    assert set(rounds[1]["metrics"]) >= {"greedy_accuracy", "pass@2", "best_of_2_critic", "critic_auroc", "distinct_answers"}
    with pytest.raises(Exception, match="improve.yours.questions lacks"):
        world.judge(0, " 0")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ([], "improve.critic is not set and no transfer export was found under"),
        (["improve.filter=best", "improve.critic=/x"], "improve.filter='best' is not valid"),
        (["improve.critic=/nowhere"], "is not an autocritic export"),
        (["improve.generator.lr=fast"], "improve.generator.lr"),
        (["improve.samples=0"], r"improve: samples=0 must be ≥ 1"),
        (["improve.rounds=-1"], r"improve: rounds=-1 must be ≥ 1"),
        (["improve.threshold=1.5"], r"improve: threshold=1.5 must lie in \[0, 1\]"),
        (["improve.sampling.eval_samples=0"], r"improve.sampling: eval_samples=0 must be ≥ 1"),
        (["improve.generator.lr=0"], r"improve.generator: lr=0 must be > 0"),
        (["improve.generator.mode=qlora"], r"improve.generator: mode='qlora' is not one of"),
        (["improve.problems.shots=-1"], r"improve.problems.shots=-1 must be ≥ 0"),
        (["improve.yours.val_fraction=0.8"], r"improve.yours: held_out_fraction=0.3 and val_fraction=0.8"),
        (['improve.critic_refresh.overrides=["phase.lr=abc"]'], r"improve.critic_refresh.overrides: phase.lr='abc' is not valid"),
        (['improve.critic_refresh.overrides=["nokey=1"]'], r"improve.critic_refresh.overrides=\['nokey=1'\] do not compose"),
    ],
)
def test_phase_improve_refuses_a_bad_config_before_any_compute(overrides, message, tiny_export, tmp_path):
    from helpers import compose_train

    from autocritic.errors import AutocriticError
    from autocritic.improve.run import improve

    overrides = [o.replace("improve.critic=/x", f"improve.critic={tiny_export}") for o in overrides]
    if overrides and not any(o.startswith("improve.critic=") for o in overrides):
        overrides.append(f"improve.critic={tiny_export}")  # the export is fine: the error is the value's
    with pytest.raises(AutocriticError, match=message):
        improve(compose_train(["phase=improve", f"paths.outputs={tmp_path}", *overrides]))


def test_the_plot_of_accuracy_by_round_is_written(tmp_path):
    from autocritic.improve.run import PLOT, plot_rounds

    rounds = [{"round": r, "metrics": {"greedy_accuracy": 0.2 + r / 100, "pass@8": 0.5}} for r in range(3)]
    plot_rounds(tmp_path, rounds, 8, "critic")
    assert (tmp_path / PLOT).stat().st_size > 0


def test_round_zero_defaults_to_the_latest_transfer_export(tiny_export, tmp_path):
    from helpers import compose_train

    from autocritic.improve.run import latest_transfer_export

    shutil.copytree(tiny_export, tmp_path / "transfer" / "run1" / "export")
    cfg = compose_train(["phase=improve", f"paths.outputs={tmp_path}"])
    assert latest_transfer_export(cfg) == tmp_path / "transfer" / "run1" / "export"


def write_run(run_dir: Path, filter_name: str, greedy: list[float], threshold: float | None = 0.2) -> Path:
    run_dir.mkdir(parents=True)
    rounds = [{"round": r, "metrics": {"greedy_accuracy": g, "pass@8": 0.5}} for r, g in enumerate(greedy)]
    settings = {"filter": filter_name, "threshold": threshold}
    (run_dir / ROUNDS).write_text(json.dumps({"settings": settings, "rounds": rounds}))
    return run_dir


def test_compare_tables_and_plots_each_run_by_its_filter(tmp_path):
    from autocritic.improve.compare import compare, main

    critic = write_run(tmp_path / "a", "critic", [0.2, 0.25, 0.3])
    oracle = write_run(tmp_path / "b", "oracle", [0.2, 0.3], threshold=None)
    again = write_run(tmp_path / "c", "critic", [0.2, 0.22, 0.24])
    out = tmp_path / "filters.png"
    table = compare([critic, oracle, again], "greedy_accuracy", out)
    assert table.splitlines()[0] == "| filter | round 0 | round 1 | round 2 |"
    assert "| critic (0.2) | 0.200 | 0.250 | 0.300 |" in table
    assert "| oracle | 0.200 | 0.300 | — |" in table  # a shorter run leaves its later rounds empty
    assert "| critic (0.2) #2 | 0.200 | 0.220 | 0.240 |" in table
    assert out.stat().st_size > 1000
    assert main([str(critic), str(tmp_path / "missing")]) == 2
    assert main([str(critic), "--metric", "nope"]) == 2


def test_compare_names_a_missing_metric_and_a_damaged_file(tmp_path):
    from autocritic.errors import AutocriticError, CheckpointError
    from autocritic.improve.compare import compare

    run = write_run(tmp_path / "a", "critic", [0.2])
    with pytest.raises(AutocriticError, match="'pass@16'.*its metrics: greedy_accuracy, pass@8"):
        compare([run], "pass@16", None)
    (run / ROUNDS).write_text("{not json")
    with pytest.raises(CheckpointError, match="is damaged"):
        compare([run], "greedy_accuracy", None)


# ---- a signal in the middle of a run: one message saying how to go on ----


def test_a_stopped_run_says_what_is_kept_and_how_to_go_on(tmp_path):
    from autocritic.improve.loop import write_rounds
    from autocritic.improve.run import stopped_message

    assert "nothing was finished; run the same command again" in stopped_message(tmp_path, "SIGTERM")
    write_rounds(tmp_path, LoopSettings(), [{"round": 0, "export": "e0", "metrics": {}}, {"round": 1, "export": "e1", "metrics": {}}])
    assert stopped_message(tmp_path, "SIGINT") == (
        f"stopped by SIGINT in round 2: rounds 0–1 and their exports are kept in {tmp_path}; go on with the same "
        f"command and resume={tmp_path} (round 2 starts over)."
    )


@pytest.mark.parametrize(
    ("raise_it", "code", "name"),
    [("sigterm", 143, "SIGTERM"), ("sigterm inside `except Exception`", 143, "SIGTERM"), ("ctrl-c", 130, "SIGINT")],
)
def test_stop_with_turns_a_signal_anywhere_inside_into_one_message(raise_it, code, name):
    import os
    import signal
    import time

    from autocritic.errors import Interrupted
    from autocritic.signals import stop_with

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as stopped, stop_with(lambda signal_name: f"stopped by {signal_name}, go on"):
        if raise_it == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
        elif raise_it == "sigterm inside `except Exception`":  # as in inspect.getfullargspec, which Lightning calls
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            except Exception as error:
                raise TypeError("unsupported callable") from error
        else:
            raise KeyboardInterrupt
    assert (str(stopped.value), stopped.value.exit_code) == (f"stopped by {name}, go on", code)
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back


def test_a_sigterm_during_an_inner_training_run_is_this_runs_message(tiny_backbone, tiny_data, tmp_path):
    """The critic refresh is a Lightning fit inside the loop: its own 'resume with phase=transfer' hint is replaced
    by the loop's."""
    import os
    import signal
    import threading

    from helpers import compose_train, tiny_overrides

    from autocritic.errors import Interrupted
    from autocritic.signals import stop_with
    from autocritic.training import run

    cfg = compose_train([*tiny_overrides(tiny_backbone, tiny_data, tmp_path), "phase.max_epochs=100000"])
    timer = threading.Timer(4.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        with pytest.raises(Interrupted) as stopped, stop_with(lambda signal_name: f"the loop's message ({signal_name})"):
            run.train(cfg)
    finally:
        timer.cancel()
    assert (str(stopped.value), stopped.value.exit_code) == ("the loop's message (SIGTERM)", 143)
    assert (Path(cfg.paths.run_dir) / "checkpoints" / "last.ckpt").is_file()  # it stopped inside the fit
