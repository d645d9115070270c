"""The evaluation harness: every suite through `evaluate.py`'s config on a tiny export, and each suite's logic on
scripted generators whose right answers are known (a perfect critic, a ReAct oracle, an LLM that echoes facts)."""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import CONF_DIR, compose_train, tiny_overrides
from hydra import compose, initialize_config_dir
from safetensors.torch import save_file

from autocritic.errors import CheckpointError, ConfigError
from autocritic.evaluation import agent, fewshot, memory, rerank
from autocritic.evaluation.context import EvalContext
from autocritic.evaluation.embeddings import HashedNgramEmbeddings
from autocritic.evaluation.metrics import Pool, auroc, best_of_n_curve, calibration, canonical, gap_closed
from autocritic.evaluation.report import SuiteResult, Table, write_report, write_results
from autocritic.evaluation.run import evaluate, find_export
from autocritic.formats import format_number
from autocritic.inference.generation import GenerationSettings, Sample
from autocritic.model.export import CONFIG_NAME, HEAD_NAME
from autocritic.offline import documents, tasks
from autocritic.offline.tasks import evaluate_expression, react_action, react_finish


def compose_eval(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("evaluate", overrides=overrides)


TINY_SIZES = [
    "prompts.n_problems=2",
    "prompts.max_new_tokens=4",
    "prompts.demo_new_tokens=4",
    "prompts.examples=2",
    "fewshot.n_problems=2",
    "fewshot.pool_size=12",
    "fewshot.shots=[0,1]",
    "fewshot.max_new_tokens=4",
    "agent.n_problems=1",
    "agent.max_new_tokens=6",
    "agent.candidates=2",
    "agent.lm_tool_new_tokens=3",
    f"agent.variants=[{','.join(agent.VARIANTS)}]",
    "memory.n_dialogues=2",
    "memory.max_new_tokens=3",
    "memory.summary_new_tokens=3",
    "rerank.n_problems=3",
    "n_samples=4",
    "rerank.subsets=3",
    "rerank.max_new_tokens=4",
    "batch_size=64",
]


@pytest.fixture(scope="module")
def tiny_export(tiny_backbone, tiny_data, tmp_path_factory) -> Path:
    """A real export of the tiny Falcon (transfer phase, one fast_dev_run step)."""
    from autocritic.training import run

    root = tmp_path_factory.mktemp("eval_export")
    cfg = compose_train([*tiny_overrides(tiny_backbone, tiny_data, root, "t"), "trainer.fast_dev_run=true"])
    run.train(cfg)
    return root / "outputs" / "transfer" / "t" / "export"


# ---- fakes with known right answers ----


def _samples(texts: list[str], scores: list[float], n: int) -> list[Sample]:
    return [Sample(t, s, [], "stop") for t, s in zip(texts, scores, strict=True)][:n]


class Streams:
    """`stream` from `generate`, as agents stream the LLM of each step."""

    def stream(self, prompt, settings=None, **overrides):
        sample = self.generate([prompt], settings, **overrides)[0][0]
        yield sample.text
        yield sample


def right_and_wrong_answer(prompt: str) -> tuple[str, str]:
    """Arithmetic ("What is 3+4?") or pair-sum ("Which two of 1, 5, 2 add up to 7?") prompt -> a right and a
    wrong answer."""
    if pair := re.findall(r"Which two of (.+) add up to (\d+)\?\nAnswer:$", prompt):
        numbers, target = [int(n) for n in pair[-1][0].split(", ")], int(pair[-1][1])
        [right] = [f"{a}+{b}={target}" for a, b in itertools.combinations(numbers, 2) if a + b == target]
        return right, f"{numbers[0]}+{target}={target}"
    expression = re.findall(r"What is (.+)\?\nAnswer:$", prompt)[-1]
    truth = float(format_number(evaluate_expression(expression)))
    return format_number(truth), format_number(truth + 1)


class PerfectCritic(Streams):
    """Arithmetic or pair-sum prompts: greedy answers wrong; sample i is right when a seeded coin says so, and the
    critic score is +1 for right answers, -1 for wrong ones (a perfect critic)."""

    def __init__(self, p_right: float = 0.3):
        self.p_right = p_right

    def generate(self, prompts, settings=None, **overrides):
        settings = replace(settings or GenerationSettings(), **overrides)
        out = []
        for prompt in prompts:
            right_answer, wrong_answer = right_and_wrong_answer(prompt)
            rng = random.Random(prompt)
            right = [settings.do_sample and rng.random() < self.p_right for _ in range(settings.n)]
            texts = [f" {right_answer if ok else wrong_answer}" for ok in right]
            out.append(_samples(texts, [1.0 if ok else -1.0 for ok in right], settings.n))
        return out


class ReActOracle(Streams):
    """Follows the ReAct traces exactly: copies the question's expression into Action Input, then the Observation
    into Final Answer. Direct questions get "no idea". `always_act` never finishes (to hit the iteration limit)."""

    def __init__(self, problems, always_act: bool = False):
        self.expressions = {p.question: p.expression for p in problems}
        self.always_act = always_act

    def reply(self, prompt: str) -> str:
        question = re.findall(r"Question: (.*)\n", prompt)[-1]
        if "Tools:" not in prompt:
            return " no idea"
        observations = re.findall(r"Observation: (.*)\n", prompt)
        if observations and not self.always_act:
            return react_finish(observations[-1])
        return react_action(self.expressions[question]) + "\nObservation: 42 (hallucinated)"

    def generate(self, prompts, settings=None, **overrides):
        settings = replace(settings or GenerationSettings(), **overrides)
        out = []
        for prompt in prompts:
            text = self.reply(prompt)
            cut = min((i for i in (text.find(s) for s in settings.stop if s) if i >= 0), default=None)
            out.append([Sample(text[:cut], 0.5, [], "stop")] * settings.n)
        return out


FACT_PATTERNS = {
    question: re.compile(re.escape(statement).replace(re.escape("{v}"), r"(\w+)"))
    for _, statement, question, *_ in tasks._FACTS
}


class EchoFacts(Streams):
    """Answers a question about a fact with the fact's value if the fact is in its prompt ("I do not know"
    otherwise); asked for a summary, repeats every fact it sees."""

    def reply(self, prompt: str) -> str:
        facts = [m.group(0) for pattern in FACT_PATTERNS.values() for m in pattern.finditer(prompt)]
        if prompt.rstrip().endswith("New summary:"):
            return " " + " ".join(dict.fromkeys(facts))
        question = prompt.rstrip().rsplit("Human: ", 1)[-1].split("\n")[0]
        found = FACT_PATTERNS[question].findall(prompt) if question in FACT_PATTERNS else []
        return f" {found[-1]}" if found else " I do not know."

    def generate(self, prompts, settings=None, **overrides):
        settings = replace(settings or GenerationSettings(), **overrides)
        return [[Sample(self.reply(p), 0.0, [], "stop")] * settings.n for p in prompts]


# ---- the whole harness on a real (tiny) export ----


def test_every_suite_runs_on_a_tiny_export_and_writes_the_report(tiny_export, tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_eval(
        [f"ckpt={tiny_export}", f"paths.outputs={tmp_path}", f"paths.run_dir={run_dir}", *TINY_SIZES]
    )
    best_of_n = evaluate(cfg)
    results = json.loads((run_dir / "results.json").read_text())
    assert (
        results["meta"]["ckpt"] == str(tiny_export) and results["meta"]["threads"] == torch.get_num_threads()
    )
    suites = results["suites"]
    assert list(suites) == ["prompts", "fewshot", "agent", "memory", "rerank"]
    # Greedy LCEL and the legacy LLMChain give the same text, with a critic score for each answer.
    for template in ("notebook", "offline"):
        assert suites["prompts"]["figures"][template]["parity"] == 1.0
    assert all(isinstance(d["critic_score"], float) for d in suites["prompts"]["figures"]["demo"])
    assert set(suites["fewshot"]["figures"]["accuracy"]) == set(fewshot.SELECTORS)
    assert set(agent.VARIANTS) <= set(suites["agent"]["figures"])
    assert all(suites["memory"]["figures"][k]["recall"] is not None for k in memory.KINDS)
    rerank_figures = suites["rerank"]["figures"]
    assert set(rerank_figures["curve"]["best_of_n"]) == {"1", "2", "4"}
    assert best_of_n == rerank_figures["gap"]["best_of_n"]
    assert rerank_figures["critic"]["samples"] == 3 * 4

    report = (run_dir / "report.md").read_text()
    for heading in (
        "## prompts",
        "## fewshot",
        "## agent",
        "## memory",
        "## rerank",
        "| method | N=1 | N=2 | N=4 |",
    ):
        assert heading in report
    for png in ("bestofn.png", "reliability.png", "fewshot.png", "memory_tokens.png"):
        assert (run_dir / png).stat().st_size > 1000 and f"]({png})" in report


# ---- checkpoints ----


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        find_export(compose_eval([f"ckpt={tmp_path / 'nope'}"]))
    with pytest.raises(CheckpointError, match="no export found .*python train.py phase=transfer"):
        find_export(compose_eval([f"paths.outputs={tmp_path}"]))
    with pytest.raises(CheckpointError, match="not an autocritic export"):
        find_export(compose_eval([f"ckpt={tmp_path}"]))


def test_latest_export_prefers_finetune_then_the_newest(tmp_path):
    def export(phase: str, run: str) -> Path:
        path = tmp_path / phase / run / "export"
        path.mkdir(parents=True)
        (path / CONFIG_NAME).write_text("{}")
        return path

    cfg = compose_eval([f"paths.outputs={tmp_path}"])
    export("transfer", "a")
    newest_transfer = export("transfer", "b")
    assert find_export(cfg) == newest_transfer
    finetune = export("finetune", "a")
    export("transfer", "c")
    assert find_export(cfg) == finetune


def test_the_search_suite_alone_picks_the_newest_step_critic(tmp_path):
    def export(phase: str, run: str, schema: str) -> Path:
        path = tmp_path / phase / run / "export"
        path.mkdir(parents=True)
        (path / CONFIG_NAME).write_text(json.dumps({"data": {"schema": schema}}))
        return path

    cfg = compose_eval([f"paths.outputs={tmp_path}"])
    export("transfer", "a", "pointwise")
    with pytest.raises(CheckpointError, match="needs a step critic.*experiment=steps"):
        find_export(cfg, step_critic=True)
    steps = export("transfer", "b", "stepwise")
    outcome = export("transfer", "c", "pointwise")
    assert find_export(cfg, step_critic=True) == steps
    assert find_export(cfg) == outcome


def test_ctrl_c_in_a_suite_is_one_message_and_writes_nothing(tiny_export, tmp_path, monkeypatch):
    from autocritic.errors import Interrupted

    def stopped(ctx, settings):
        raise KeyboardInterrupt

    monkeypatch.setattr(rerank, "run", stopped)
    run_dir = tmp_path / "run"
    cfg = compose_eval([f"ckpt={tiny_export}", f"paths.run_dir={run_dir}", "suites=[rerank]", *TINY_SIZES])
    with pytest.raises(Interrupted, match=r"stopped by SIGINT in the rerank suite: nothing is written") as stopped_run:
        evaluate(cfg)
    assert stopped_run.value.exit_code == 130 and not (run_dir / "results.json").exists()


@pytest.mark.parametrize("damage", ["head", "backbone"])
def test_incompatible_checkpoint_is_a_clear_error(tiny_export, tmp_path, damage):
    broken = tmp_path / "export"
    shutil.copytree(tiny_export, broken)
    if damage == "head":  # a head trained on another backbone (hidden size 32, not 64)
        save_file(
            {"linear.weight": torch.zeros(1, 32), "linear.bias": torch.zeros(1)}, str(broken / HEAD_NAME)
        )
        expected = "does not fit this backbone"
    else:  # a frozen export whose backbone was moved away
        config = json.loads((broken / CONFIG_NAME).read_text())
        config["backbone"] |= {"name_or_path": str(tmp_path / "moved"), "absolute_path": str(tmp_path / "moved")}
        (broken / CONFIG_NAME).write_text(json.dumps(config))
        expected = "backbone of the export .* is missing"
    cfg = compose_eval([f"ckpt={broken}", "suites=[prompts]", f"paths.run_dir={tmp_path / 'run'}"])
    with pytest.raises(CheckpointError, match=expected):
        evaluate(cfg)


def test_entry_point_exits_2_with_the_message(tmp_path, capsys):
    from autocritic.entry import task

    with pytest.raises(SystemExit) as exit_info:
        task(evaluate, compose_eval([f"ckpt={tmp_path / 'missing'}"]))
    assert exit_info.value.code == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [
        ("suites=[prompts,nope]", "choose among"),
        ("rerank.n_problems=0", "positive integer"),
        ("logger=csv", "not used by evaluate"),
        ("agent.max_iterations=abc", r"agent.max_iterations='abc' is not valid: expected a whole number such as 3"),
        ("agent.variants=[direct,nope]", r"unknown agent variants \['nope'\]"),
        ("agent.temperature=0", "must be above 0"),
        ("rerank.temperature=-1", "must be above 0"),
        ("rerank.ns=[1,two]", "expected a list of whole numbers"),
        ("fewshot.selectors=[mmr,nope]", r"unknown selectors \['nope'\]"),
        ("fewshot.shots=[0,-2]", "each must be an integer ≥ 0"),
        ("memory.kinds=[bogus]", r"unknown memory kinds \['bogus'\]"),
        ("memory.summary_prompt=nope", "use one of"),
        ("memory.window=true", "memory.window=True is not valid: expected a whole number"),
        ("threads=0", r"threads=0 is not valid: expected a positive integer"),
        ("batch_size=0", r"batch_size=0 is not valid: expected a positive integer"),
        ("seed=abc", r"seed='abc' is not valid: expected an integer"),
    ],
)
def test_bad_settings_fail_before_loading(tmp_path, override, message):
    cfg = compose_eval([f"ckpt={tmp_path / 'not-loaded'}", override])
    with pytest.raises(ConfigError, match=message):
        evaluate(cfg)


# ---- rerank ----


def test_rerank_with_a_perfect_critic_reaches_pass_at_n(tmp_path):
    ctx = EvalContext(PerfectCritic(), out_dir=tmp_path)
    settings = rerank.Settings(n_problems=40, n_samples=8, ns=(1, 2, 4, 8), subsets=8)
    result = rerank.run(ctx, settings)
    f = result.figures
    assert f["greedy_accuracy"] == 0.0
    for n in (1, 2, 4, 8):
        assert f["curve"]["best_of_n"][n]["accuracy"] == f["curve"]["pass_at_n"][n]["accuracy"]
    assert f["curve"]["pass_at_n"][8]["accuracy"] > f["curve"]["single"][8]["accuracy"] > 0
    assert (
        f["gap"]["closed"] == 1.0
        and f["critic"]["auroc"] == 1.0
        and f["critic"]["within_problem_auroc"] == 1.0
    )
    assert {"bestofn.png", "roc.png", "reliability.png"} == set(result.plots)
    assert all((tmp_path / p).is_file() for p in result.plots)


def _export_trained_on(tmp_path: Path, card_settings: dict | None) -> Path:
    """An export dir whose critic_config.json names one train file (with its sha256), and that file's card.json."""
    from autocritic.model.card import file_facts

    data = tmp_path / "critic"
    data.mkdir(parents=True)
    (data / "pairs_train.jsonl").write_text('{"prompt": "Q", "chosen": " 1", "rejected": " 2"}\n')
    if card_settings is not None:
        (data / "card.json").write_text(json.dumps({"settings": card_settings}))
    export = tmp_path / "export"
    export.mkdir()
    facts = file_facts([str(data / "pairs_train.jsonl")])
    config = {"format_version": 2, "backbone": {}, "head": {}, "template": "{prompt}{response}"}
    (export / CONFIG_NAME).write_text(json.dumps(config | {"data": {"train_files": facts}}))
    return export


def test_rerank_samples_as_the_exports_critic_data_was_made(tmp_path):
    """Unset sampling settings come from the card of the data the export learned from; a changed file, a card of
    another family or no card at all leave offline.generate's defaults, and the log line says which."""
    made = dict(
        vars(rerank.GenerateSettings()), families=["arithmetic"], stop=["\n\n"], max_new_tokens=32,
        temperature=1.0, shots=0, train_problems=12000,
    )
    export = _export_trained_on(tmp_path / "a", made)
    offline, source = rerank.critic_data_settings(export)
    assert (offline.max_new_tokens, offline.temperature, offline.shots, offline.train_problems, offline.stop) == (
        32, 1.0, 0, 12000, ("\n\n",)
    )
    assert "card.json" in source
    resolved = rerank.Settings(max_new_tokens=16).resolved(offline)
    assert (resolved.max_new_tokens, resolved.temperature, resolved.stop, resolved.pool_size) == (
        16, 1.0, ("\n\n",), 12000
    )
    assert resolved.resolved() == resolved  # run() resolves again: set values stay

    defaults = rerank.GenerateSettings()
    (tmp_path / "a" / "critic" / "pairs_train.jsonl").write_text("{}\n")
    offline, source = rerank.critic_data_settings(export)
    assert offline == defaults and "changed since the export was trained" in source
    other = _export_trained_on(tmp_path / "b", dict(made, families=["countdown"]))
    assert rerank.critic_data_settings(other)[0] == defaults
    assert rerank.critic_data_settings(_export_trained_on(tmp_path / "c", None))[0] == defaults
    assert rerank.critic_data_settings(tmp_path / "not-an-export")[0] == defaults
    assert rerank.Settings().resolved() == rerank.Settings().resolved(defaults)


def test_best_of_n_curve_methods_on_a_hand_made_pool():
    pools = [
        Pool("5", ["5", "6", "6", None], [True, False, False, False], [0.1, 0.9, 0.2, -1.0]),
        Pool("7", ["7.0", "7", "8", "9"], [True, True, False, False], [2.0, 0.0, 1.0, 1.0]),
    ]
    curve = best_of_n_curve(pools, [4], subsets=5, seed=0)
    point = {m: curve[m][4]["accuracy"] for m in curve}
    # All 4 samples: votes pick "6" then "7" (7.0 and 7 are one answer); the critic picks "6" then "7.0".
    assert point == {
        "single": pytest.approx((0.25 + 0.5) / 2),
        "majority": 0.5,
        "weighted_vote": 0.5,
        "best_of_n": 0.5,
        "pass_at_n": 1.0,
    }  # no likelihoods known: no likelihood row
    pools[0].likelihoods, pools[1].likelihoods = [-0.1, -2.0, -0.5, -0.05], [-3.0, -1.0, -0.2, -4.0]
    with_likelihood = best_of_n_curve(pools, [4], subsets=5, seed=0)
    assert with_likelihood["likelihood"][4]["accuracy"] == 0.0  # it picks None ("5" pool) then "8"
    assert all(with_likelihood[m] == curve[m] for m in curve)
    assert canonical("068") == canonical("68.0") == "68"
    with pytest.raises(ValueError, match="larger than"):
        best_of_n_curve(pools, [5], subsets=1, seed=0)


def test_critic_figures():
    assert auroc([0.1, 0.2], [True, True]) is None
    assert auroc([0.0, 1.0, 2.0], [False, True, True]) == 1.0
    calib = calibration([-3.0, -1.0, 0.5, 2.0], [False, False, True, True], bins=10)
    assert sum(b["count"] for b in calib["bins"]) == 4 and 0 <= calib["ece"] <= 1
    assert sum(b["count"] for b in calib["quantile_bins"]) == 4
    assert gap_closed(0.1, 0.3, 0.5) == pytest.approx(0.5) and gap_closed(0.5, 0.5, 0.5) is None


# ---- few-shot ----


def test_few_shot_prompt_is_the_offline_layout_and_selectors_pick_similar_problems():
    splits = tasks.make_splits(0, train=60, val=0, test=3, families=["arithmetic"])
    problem, pool = splits["test"][0], splits["train"]
    assert fewshot.few_shot_template().format(question=problem.question) == tasks.prompt_of(problem)
    embeddings = HashedNgramEmbeddings(256)
    store = fewshot.vector_store(pool, embeddings)
    for name in fewshot.SELECTORS:
        selector = fewshot.make_selector(name, 3, pool, store, fetch_k=10, seed=0)
        chosen = selector.select_examples({"question": problem.question})
        assert len(chosen) == 3 and len({c["question"] for c in chosen}) == 3
        by_question = {p.question: p for p in pool}
        shots = [by_question[c["question"]] for c in chosen]
        prompt = fewshot.few_shot_template(selector).format(question=problem.question)
        assert prompt == tasks.few_shot_prompt(problem, shots)

    vector = embeddings.embed_query("What is 23+45?")
    assert math.isclose(sum(v * v for v in vector), 1.0) and vector == embeddings.embed_query(
        "What is 23+45?"
    )

    def similarity(a: str, b: str) -> float:
        return sum(x * y for x, y in zip(embeddings.embed_query(a), embeddings.embed_query(b), strict=True))

    assert similarity("What is 23+45?", "What is 21+47?") > similarity("What is 23+45?", "What is 5.6*2?")


# ---- agent ----


def test_agent_variants_succeed_with_a_react_oracle():
    problems = tasks.make_splits(0, train=0, val=0, test=3, families=["react"])["test"]
    ctx = EvalContext(ReActOracle(problems))
    result = agent.run(ctx, agent.Settings(n_problems=3, variants=agent.VARIANTS, candidates=2))
    f = result.figures
    for variant in ("classic", "classic_lm_tool", "classic_critic", "create_agent", "create_agent_critic"):
        assert f[variant]["success"] == 1.0, variant
        assert f[variant]["model_calls"] == 2 and f[variant]["tool_calls"] == 1
        assert f[variant]["parse_errors"] == 0 and f[variant]["limit_hits"] == 0
    assert f["direct"]["success"] == 0.0 and f["direct_critic"]["success"] == 0.0
    assert f["classic"]["success_ci95"] == 0.0 and "1.000 ± 0.000" in result.tables[0].rows[2]
    assert f["critic_gain"] == {"direct": 0.0, "classic": 0.0, "create_agent": 0.0}


def test_agent_that_never_finishes_hits_the_iteration_limit():
    problems = tasks.make_splits(0, train=0, val=0, test=1, families=["react"])["test"]
    ctx = EvalContext(ReActOracle(problems, always_act=True))
    settings = agent.Settings(n_problems=1, max_iterations=3)
    for outcomes in (
        agent.run_classic(ctx, problems, settings, ctx.generator, lm_tool=False),
        agent.run_create_agent(ctx, problems, settings, ctx.generator),
    ):
        [outcome] = outcomes
        assert outcome.limit_hit and not outcome.success and outcome.tool_calls == 3


def test_critic_best_of_keeps_the_highest_score():
    class Candidates(Streams):
        def generate(self, prompts, settings=None, **overrides):
            settings = replace(settings or GenerationSettings(), **overrides)
            assert settings.do_sample and settings.n == 3 and settings.temperature == 0.7
            return [_samples([" a", " b", " c"], [0.1, 0.9, 0.5], 3) for _ in prompts]

    [[best]] = agent.CriticBestOf(Candidates(), k=3, temperature=0.7).generate(["q"], GenerationSettings())
    assert best.text == " b"


# ---- memory ----


def dialogue(fact: tuple[str, str], distance: int, question: str, answer: str) -> memory.Dialogue:
    small_talk = [
        ("How are you?", "I am fine, thank you."),
        ("Tell me a joke.", "Why not."),
        ("I like music.", "Music is great."),
        ("I am tired.", "Rest a little."),
    ]
    exchanges = [fact, *small_talk[: distance - 1]]
    return memory.Dialogue(exchanges, question, answer, distance)


@pytest.mark.parametrize("kind", memory.KINDS)
def test_memory_kinds_keep_and_forget_what_they_should(kind):
    ctx = EvalContext(EchoFacts())
    settings = memory.Settings(window=2)
    near = dialogue(("My dog is called Rex.", "Got it."), 2, "What is my dog called?", "Rex")
    far = dialogue(("My name is Ada.", "Nice to meet you, Ada."), 4, "What is my name?", "Ada")
    runner = (
        memory.GraphRunner(ctx, kind, settings)
        if kind.startswith("graph_")
        else memory.ClassicRunner(ctx, kind, settings)
    )
    traces = {name: runner(d) for name, d in (("near", near), ("far", far))}
    forgets_far = kind.endswith("window")
    assert memory.recalled(traces["near"].reply, "Rex")
    assert memory.recalled(traces["far"].reply, "Ada") != forgets_far
    far_trace = traces["far"]
    assert len(far_trace.prompts) == len(far.exchanges) + 1  # one prompt per turn, the answer generated last
    if kind.endswith("buffer"):  # the whole conversation, in the training layout
        assert far_trace.prompts[-1].endswith(
            "Human: I like music.\nAI: Music is great.\nHuman: What is my name?\nAI:"
        )
        assert far_trace.prompts[-1].lstrip().startswith("Human: My name is Ada.\nAI: Nice to meet you, Ada.")
    if kind.endswith("summary"):
        assert far_trace.summary_prompts and "Ada" in far_trace.summary


class SummaryDocumentOracle(Streams):
    """Answers exactly the prompts of the offline summary training documents, with their targets; any other
    prompt is a mismatch between what the model was taught and what the memory asks."""

    def __init__(self, problems):
        self.table = {}
        for problem in problems:
            segments = documents.summary_segments(problem)
            for (prompt, trained), (target, _) in zip(segments[0::2], segments[1::2], strict=True):
                assert not trained
                # The question's prompt opens with the summary; LangGraph's middleware strips its leading space.
                self.table[prompt.lstrip()] = target.rstrip("\n")

    def generate(self, prompts, settings=None, **overrides):
        settings = replace(settings or GenerationSettings(), **overrides)
        return [[Sample(self.table[p.lstrip()], 0.0, [], "stop")] * settings.n for p in prompts]


@pytest.mark.parametrize("kind", ["summary", "graph_summary"])
def test_summary_training_documents_are_the_prompts_summary_memory_sends(kind):
    """Classic memory and LangGraph's SummarizationMiddleware send the model the same prompts, all of them taught."""
    problems = tasks.make_splits(0, train=0, val=0, test=12, families=["dialogue"])["test"]
    ctx = EvalContext(SummaryDocumentOracle(problems))
    settings = memory.Settings(summary_new_tokens=64)
    runner = (
        memory.ClassicRunner(ctx, kind, settings)
        if kind == "summary"
        else memory.GraphRunner(ctx, kind, settings)
    )
    for problem in problems:
        trace = runner(memory.parse_dialogue(problem))  # a KeyError names a prompt the model never saw
        assert memory.recalled(trace.reply, problem.answer)
        exchanges = (len(problem.question.split("\n")) - 1) // 2
        # classic: after every exchange, the question's too; LangGraph: before every turn but the first
        assert len(trace.summary_prompts) == (exchanges + 1 if kind == "summary" else exchanges)


def test_memory_suite_on_held_out_dialogues_with_an_echoing_llm(tmp_path):
    ctx = EvalContext(EchoFacts(), out_dir=tmp_path)
    result = memory.run(ctx, memory.Settings(n_dialogues=10, window=2))
    f = result.figures
    assert (
        sum(f["distances"].values()) == 10 and max(f["distances"]) > 2
    )  # some facts are older than the window
    for kind in ("buffer", "graph_buffer", "summary", "graph_summary"):
        assert f[kind]["recall"] == 1.0, kind
    for kind in ("window", "graph_window"):
        by_distance = f[kind]["recall_by_distance"]
        assert all(v == (1.0 if d <= 2 else 0.0) for d, v in by_distance.items()), by_distance
        assert f[kind]["recall_within_window"] == 1.0 > f[kind]["recall"]
        assert result.headline[f"recall ({kind}, within the window)"] == 1.0
    assert f["buffer"]["recall_within_window"] is None and f["buffer"]["recall_ci95"] == 0.0
    assert f["window"]["recall_ci95"] > 0  # some facts recalled, some not
    turns = f["buffer"]["prompt_tokens_by_turn"]
    assert (
        turns == sorted(turns)
        and f["buffer"]["question_prompt_tokens"] > f["window"]["question_prompt_tokens"]
    )
    assert result.plots == ["memory_tokens.png"]


# ---- report files ----


def test_report_files_are_strict_json_and_markdown_tables(tmp_path):
    result = SuiteResult(
        "demo",
        {"a": {"b": float("nan"), "c": 1}, "d": (1, 2)},
        [Table("T", ["x", "y"], [["a|b", 0.12345], [None, True]])],
        headline={"c": 1.0},
    )
    write_results(tmp_path, {"ckpt": "x"}, [result])
    write_report(tmp_path, {"ckpt": "x"}, [result])
    loaded = json.loads((tmp_path / "results.json").read_text())
    assert loaded["suites"]["demo"]["figures"] == {"a": {"b": None, "c": 1}, "d": [1, 2]}
    report = (tmp_path / "report.md").read_text()
    assert "| a\\|b | 0.123 |" in report and "| — | yes |" in report and "### Headline figures" in report


@pytest.mark.slow  # wandb starts its service process: ~4 s
def test_wandb_logger_gets_the_tables_and_plots(tmp_path):
    from autocritic.evaluation.run import log_to_wandb

    ctx = EvalContext(PerfectCritic(), out_dir=tmp_path)
    result = rerank.run(ctx, rerank.Settings(n_problems=4, n_samples=2, ns=(1, 2), subsets=2))
    log_to_wandb(compose_eval(["logger=wandb"]), tmp_path, {"ckpt": "x"}, [result])
    [run_dir] = (tmp_path / "wandb").glob("offline-run-*")
    images = list((run_dir / "files" / "media").rglob("*.png"))
    tables = list((run_dir / "files" / "media").rglob("*.table.json"))
    assert len(images) == len(result.plots) and len(tables) == len(result.tables)


def test_ckpt_may_be_a_hub_id(tiny_export, tmp_path, monkeypatch):
    import huggingface_hub

    from autocritic.evaluation.run import find_export

    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **_: asked.append(repo) or str(tiny_export))
    assert find_export(compose_eval(["ckpt=someone/critic"])) == tiny_export and asked == ["someone/critic"]
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **_: str(tmp_path))  # not an export
    with pytest.raises(CheckpointError, match="is not an autocritic export"):
        find_export(compose_eval(["ckpt=someone/other"]))
