"""Conversational rows (TRL's forms) in every schema, rendered with the tokenizer's chat template or the dialogue
layout, scored the same through a data file and through CriticChatModel, and trained end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl
from helpers import CONF_DIR, compose_train, tiny_overrides
from hydra import compose, initialize_config_dir
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from autocritic.chat_format import (
    DIALOGUE_CHAT_TEMPLATE,
    Conversation,
    Message,
    dialogue_text,
    render_exchange,
    render_messages,
    role_dicts,
    without_turn_end,
)
from autocritic.data.datamodule import CriticDataModule, DataSettings, read_rows
from autocritic.data.schemas import check_rows, scan_json_lines
from autocritic.errors import ConfigError, DataError
from autocritic.evaluation.run import evaluate
from autocritic.inference.chat import CriticChatModel
from autocritic.inference.generation import CriticGenerator
from autocritic.model.backbone import load_backbone, load_tokenizer
from autocritic.model.critic import CriticModel
from autocritic.model.export import load_critic, read_critic_config
from autocritic.model.head import HeadSettings
from autocritic.training import run

# A template in the tiny tokenizer's alphabet that closes every turn with ".\n": the response text is then the
# answer with what the template writes after an assistant turn.
TINY_TEMPLATE = (
    "{%- for m in messages -%}{{ '(' + m['role'] + ') ' + m['content'] + '.\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '(assistant)' }}{%- endif -%}"
)
# Its generation prompt is not where the whole conversation's assistant turn starts.
INCONSISTENT_TEMPLATE = TINY_TEMPLATE.replace("'(assistant)'", "'(assistant):'")


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "be brief"}


@pytest.fixture(scope="module")
def chat_backbone(tiny_backbone, tmp_path_factory) -> Path:
    """The tiny Falcon whose tokenizer has a chat template (same weights)."""
    out = tmp_path_factory.mktemp("chat_backbone")
    shutil.copytree(tiny_backbone, out, dirs_exist_ok=True)
    tokenizer = load_tokenizer(str(out))
    tokenizer.chat_template = TINY_TEMPLATE
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tokenizers(tiny_backbone, chat_backbone) -> dict:
    """The tiny tokenizer without a template, with the dialogue layout's template, and with TINY_TEMPLATE."""
    dialogue = load_tokenizer(str(tiny_backbone))
    dialogue.chat_template = DIALOGUE_CHAT_TEMPLATE
    return {"none": load_tokenizer(str(tiny_backbone)), "dialogue": dialogue, "tiny": load_tokenizer(str(chat_backbone))}


def settings(*files: Path, **changes) -> DataSettings:
    return DataSettings(**{"train_files": [str(f) for f in files], "val_fraction": 0.5} | changes)


def rows_of(tmp_path: Path, rows: list[dict], schema: str = "pointwise") -> list[dict]:
    """The checked rows of a JSONL file."""
    file = write_jsonl(tmp_path / "rows.jsonl", rows)
    return check_rows(scan_json_lines(file), schema, {}, str(file))


def conversation(*messages: dict) -> Conversation:
    return Conversation(tuple(Message(m["role"], m["content"]) for m in messages))


# ---- reading the forms ----


def test_each_conversational_form_reads_as_prompt_and_answers(tmp_path):
    question = [SYSTEM, user("hi")]
    pointwise = rows_of(
        tmp_path,
        [
            {"messages": [*question, assistant("hello")], "label": 1},
            {"prompt": question, "completion": [assistant("bye")], "label": False},  # TRL's unpaired preference
            {"prompt": question, "response": [assistant("hey")], "label": 0.5},
        ],
    )
    assert [r["prompt"] for r in pointwise] == [conversation(*question)] * 3
    assert [r["response"] for r in pointwise] == [conversation(assistant(t)) for t in ("hello", "bye", "hey")]
    assert [r["label"] for r in pointwise] == [1.0, 0.0, 0.5]
    [scalar] = rows_of(tmp_path, [{"messages": [user("a"), assistant("b")], "score": -2}], "scalar")
    assert scalar == {"prompt": conversation(user("a")), "response": conversation(assistant("b")), "score": -2.0}
    explicit, implicit = rows_of(
        tmp_path,
        [
            {"prompt": question, "chosen": [assistant("yes")], "rejected": [assistant("no")]},
            {"chosen": [*question, assistant("yes")], "rejected": [*question, assistant("no")]},
        ],
        "pairwise",
    )
    assert explicit == implicit == {
        "prompt": conversation(*question),
        "chosen": conversation(assistant("yes")),
        "rejected": conversation(assistant("no")),
    }


def test_conversations_read_from_parquet(tmp_path):
    import pandas as pd

    rows = [{"chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("b")]}] * 2
    file = tmp_path / "pairs.parquet"
    pd.DataFrame(rows).to_parquet(file, index=False)
    read = read_rows(settings(file, schema="pairwise"))
    assert read["val"][0] == {
        "prompt": conversation(user("q")),
        "chosen": conversation(assistant("a")),
        "rejected": conversation(assistant("b")),
    }


def test_an_implicit_prompt_is_the_longest_shared_start(tmp_path):
    chosen = [user("a"), assistant("b"), user("c"), assistant("d")]
    rejected = [user("a"), assistant("b"), user("c"), assistant("e"), assistant("f")]
    [row] = rows_of(tmp_path, [{"chosen": chosen, "rejected": rejected}], "pairwise")
    assert row["prompt"] == conversation(*chosen[:3])
    assert row["rejected"] == conversation(assistant("e"), assistant("f"))


def test_text_rows_stay_text_next_to_conversations(tmp_path):
    rows = rows_of(tmp_path, [{"prompt": "q", "completion": " a", "label": True}, {"messages": [user("q"), assistant("a")], "label": 0}])
    assert rows[0] == {"prompt": "q", "response": " a", "label": 1.0}
    assert isinstance(rows[1]["prompt"], Conversation)


BAD_ROWS = {
    "unknown role": (
        "pointwise",
        {"messages": [{"role": "tool", "content": "5"}, assistant("a")], "label": 1},
        r"row 2: message 1 of column 'messages' has the unknown role 'tool'",
    ),
    "missing content": ("pointwise", {"messages": [{"role": "user"}, assistant("a")], "label": 1}, 'message 1 .* no "content"'),
    "content not text": (
        "pointwise",
        {"messages": [user("q"), {"role": "assistant", "content": [{"type": "text"}]}], "label": 1},
        "message 2 of column 'messages': content must be text",
    ),
    "last message not the assistant's": (
        "scalar",
        {"messages": [user("q"), assistant("a"), user("and?")], "score": 1},
        "row 2: the last message of column 'messages' is a user message",
    ),
    "only the answer": ("pointwise", {"messages": [assistant("a")], "label": 1}, "holds only the answer"),
    "empty answer": ("pointwise", {"prompt": [user("q")], "response": [assistant(" ")], "label": 1}, "is empty"),
    "no shared prompt": (
        "pairwise",
        {"chosen": [user("q"), assistant("a")], "rejected": [user("other"), assistant("b")]},
        "row 2: chosen and rejected share no first message",
    ),
    "same conversations": (
        "pairwise",
        {"chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("a")]},
        "chosen has no answer after the 2 message",
    ),
    "a user turn in an answer": (
        "pairwise",
        {"prompt": [user("q")], "chosen": [assistant("a"), user("b")], "rejected": [assistant("c")]},
        "message 2 of column 'chosen' is a user message",
    ),
    "text and messages mixed": (
        "pairwise",
        {"prompt": "q", "chosen": [assistant("a")], "rejected": [assistant("b")]},
        "a row is all text or all conversation",
    ),
    "messages not a list": ("pointwise", {"messages": "q a", "label": 1}, "must be a non-empty list of messages.*CSV"),
    "no messages": ("pointwise", {"prompt": [], "response": [assistant("a")], "label": 1}, "'prompt' must be a non-empty"),
    "text pairs without a prompt": ("pairwise", {"chosen": "a", "rejected": "b"}, "missing column 'prompt'.*may leave out"),
}
GOOD = {
    "pointwise": {"messages": [user("q"), assistant("a")], "label": 1},
    "scalar": {"messages": [user("q"), assistant("a")], "score": 1},
    "pairwise": {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("b")]},
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_conversational_row_is_named_by_file_and_row(tmp_path, case):
    schema, bad, message = BAD_ROWS[case]
    file = write_jsonl(tmp_path / "bad.jsonl", [GOOD[schema], bad])
    with pytest.raises(DataError, match=message) as error:
        read_rows(settings(file, schema=schema))
    assert f"{file}, row 2" in str(error.value)


def test_conversations_refuse_a_wrapping_template(tmp_path):
    file = write_jsonl(tmp_path / "chat.jsonl", [GOOD["pointwise"]] * 2)
    with pytest.raises(ConfigError, match=r"chat.jsonl, row 1 is a conversation.*data.template='\{prompt\}\{response\}'"):
        read_rows(settings(file, template="Question: {prompt}\nAnswer: {response}"))
    with pytest.raises(ConfigError, match="data.chat_template='jinja' is not valid"):
        settings(file, chat_template="jinja")


# ---- rendering ----


def test_the_dialogue_template_writes_render_dialogue_byte_for_byte(tokenizers):
    summary = HumanMessage("Here is a summary:\n\nMy name is Ada.", additional_kwargs={"lc_source": "summarization"})
    chats = [
        [HumanMessage("hi")],
        [SystemMessage("Be brief.\n"), HumanMessage(" two  spaces "), AIMessage("Hello.\nTwo lines"), HumanMessage("")],
        [summary, HumanMessage("What is my name?"), AIMessage("Ada"), HumanMessage("and mine?")],
    ]
    from autocritic.inference.chat import render_dialogue

    for messages in chats:
        dicts = role_dicts(messages)
        templated = tokenizers["dialogue"].apply_chat_template(dicts, tokenize=False, add_generation_prompt=True)
        assert templated == render_dialogue(messages) == render_messages(dicts, None, True)
        whole = tokenizers["dialogue"].apply_chat_template(dicts, tokenize=False)
        assert whole == dialogue_text(dicts, False) and templated == whole + "\nAI:"


def test_the_response_text_is_what_the_whole_conversation_adds(tokenizers):
    prompt, answer = conversation(SYSTEM, user("q")), conversation(assistant("a"))
    # the trailing whitespace a template writes after each turn is not scored: generation stops before it
    assert render_exchange(prompt, answer, tokenizers["tiny"]) == ("(system) be brief.\n(user) q.\n(assistant)", " a.")
    for layout in ("none", "dialogue"):  # no template, or the dialogue layout's: the same text
        assert render_exchange(prompt, answer, tokenizers[layout]) == ("be brief\nHuman: q\nAI:", " a")


def chatml_tokenizer(tokenizers):
    """The tiny tokenizer with a template closing each turn with a special token, as ChatML's <|im_end|>."""
    tokenizer = load_tokenizer(tokenizers["tiny"].name_or_path)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    tokenizer.chat_template = (
        "{%- for m in messages -%}{{ '(' + m['role'] + ')' + m['content'] + '<|im_end|>\\n' }}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '(assistant)' }}{%- endif -%}"
    )
    return tokenizer


def test_the_end_of_turn_tokens_of_a_template_are_not_scored(tokenizers):
    tokenizer = chatml_tokenizer(tokenizers)
    prompt, answer = conversation(user("q")), conversation(assistant("a b"))
    assert render_exchange(prompt, answer, tokenizer) == ("(user)q<|im_end|>\n(assistant)", "a b")
    assert without_turn_end("a<|im_end|>\n<|im_end|> \n", tokenizer) == "a"
    assert without_turn_end("a<|im_end|>x", tokenizer) == "a<|im_end|>x"  # only at the end


def test_a_template_that_is_not_prefix_consistent_is_refused(tokenizers):
    tokenizer = tokenizers["tiny"]
    tokenizer.chat_template, template = INCONSISTENT_TEMPLATE, tokenizer.chat_template
    try:
        with pytest.raises(DataError, match=r"rows.jsonl, row 3: the tokenizer's chat template is not prefix-consistent"):
            render_exchange(Conversation((Message("user", "q"),), "rows.jsonl, row 3"), conversation(assistant("a")), tokenizer)
    finally:
        tokenizer.chat_template = template


def test_a_bos_the_tokenizer_adds_itself_is_not_rendered_twice(tokenizers):
    from tokenizers import processors

    tokenizer = load_tokenizer(tokenizers["tiny"].name_or_path)
    tokenizer.add_special_tokens({"bos_token": "<eos>"})  # id 0: any token the post-processor adds will do
    tokenizer.chat_template = "{{ bos_token }}" + TINY_TEMPLATE
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<eos> $A", special_tokens=[("<eos>", 0)])
    assert tokenizer("q")["input_ids"][0] == 0
    assert render_messages([user("q")], tokenizer, True) == "(user) q.\n(assistant)"
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A", special_tokens=[])
    assert render_messages([user("q")], tokenizer, True) == "<eos>(user) q.\n(assistant)"


# ---- one conversation, two routes: a data file and CriticChatModel ----


def chat_rows(n: int) -> list[dict]:
    """Pointwise conversations: the answer repeats the user's letter (label 1) or not (label 0)."""
    letters = "abcdefgh"
    rows = []
    for i in range(n):
        asked, answered = letters[i % 8], letters[(i // 2) % 8]
        messages = [SYSTEM, user("x"), assistant("y"), user(asked), assistant(answered)]
        rows.append({"messages": messages, "label": int(asked == answered)})
    return rows


def as_langchain(messages: list[dict]):
    kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    return [kinds[m["role"]](m["content"]) for m in messages]


@pytest.mark.parametrize("layout", ["none", "dialogue", "tiny"])
def test_a_data_file_and_the_chat_model_score_the_same_tokens(tiny_backbone, tokenizers, tmp_path, layout):
    tokenizer = tokenizers[layout]
    rows = chat_rows(4)
    file = write_jsonl(tmp_path / "chat.jsonl", rows)
    dm = CriticDataModule(settings(file, val_files=[str(file)], share_prompts=False), tokenizer)
    dm.setup()
    torch.manual_seed(0)
    model = CriticModel(load_backbone(str(tiny_backbone)), head_settings=HeadSettings(confidence=True)).eval()
    generator = CriticGenerator(model, tokenizer)
    chat = CriticChatModel(generator=generator)
    batch = dm.collate_tokens(dm.encoded["val"])
    with torch.no_grad():
        trained = model(batch["input_ids"], batch["attention_mask"], prompt_lengths=batch["prompt_lengths"]).score
    for row, item, score in zip(rows, dm.encoded["val"], trained.tolist(), strict=True):
        *before, answer = row["messages"]
        prompt = chat.prompt_for(as_langchain(before))
        whole = render_messages(row["messages"], tokenizer, False)
        assert whole.startswith(prompt)
        response = whole[len(prompt) :].split("\n")[0]  # what the chat model keeps: its stop ends the turn
        assert item["ids"][0] == tokenizer(prompt + response)["input_ids"]
        assert item["prompt_len"][0] == len(tokenizer(prompt)["input_ids"])
        assert answer["content"] in response
        assert generator.score_texts([prompt], [response]) == pytest.approx([score], abs=1e-6)


def test_chat_template_none_keeps_the_dialogue_layout(tokenizers, tmp_path):
    file = write_jsonl(tmp_path / "chat.jsonl", chat_rows(2))
    dm = CriticDataModule(settings(file, val_files=[str(file)], chat_template="none"), tokenizers["tiny"])
    dm.setup()
    text = "be brief\nHuman: x\nAI: y\nHuman: a\nAI: a"
    assert dm.encoded["val"][0]["ids"][0] == tokenizers["tiny"](text)["input_ids"]


# ---- training ----


def pair_rows(n: int) -> list[dict]:
    """Conversational pairs, half with an explicit prompt, half with an implicit one."""
    rows = []
    for i in range(n):
        asked = "abcdefgh"[i % 8]
        prompt = [user("x"), assistant("y"), user(asked)]
        right, wrong = [assistant(asked)], [assistant("z")]
        if i % 2:
            rows.append({"chosen": prompt + right, "rejected": prompt + wrong})
        else:
            rows.append({"prompt": prompt, "chosen": right, "rejected": wrong})
    return rows


@pytest.mark.parametrize("chat_template", ["auto", "none"])
def test_conversational_pairs_train_and_the_export_records_the_template(chat_backbone, tmp_path, chat_template):
    data = {
        "train": write_jsonl(tmp_path / "train.jsonl", pair_rows(16)),
        "val": write_jsonl(tmp_path / "val.jsonl", pair_rows(8)),
    }
    cfg = compose_train(
        [
            *tiny_overrides(chat_backbone, data, tmp_path),
            "objective=pairwise",
            "data.schema=pairwise",
            f"data.chat_template={chat_template}",
            "data.max_length=128",  # the whole conversation: a longer one is refused, not cut
            "phase.max_epochs=1",
        ]
    )
    run.train(cfg)
    export = Path(cfg.paths.run_dir) / "export"
    recorded = TINY_TEMPLATE if chat_template == "auto" else None
    assert read_critic_config(export)["chat_template"] == recorded
    assert load_critic(export).tokenizer.chat_template == recorded
    metrics = json.loads((Path(cfg.paths.run_dir) / "metrics.json").read_text())
    assert "test/pairwise_accuracy" in metrics
    # The export's chat model renders a conversation as training did.
    chat = CriticChatModel.from_export(export)
    expected = "(user) x.\n(assistant)" if chat_template == "auto" else "Human: x\nAI:"
    assert chat.prompt_for([HumanMessage("x")]) == expected
    # ... and `evaluate.py suites=[score]` scores the file with it: the chat model's rendering, the same scores.
    run_dir = tmp_path / "evaluate"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        eval_cfg = compose("evaluate", overrides=[f"ckpt={export}", f"paths.run_dir={run_dir}", "suites=[score]",
                                                  f"score.files=[{data['val']}]"])
    evaluate(eval_cfg)
    figures = json.loads((run_dir / "results.json").read_text())["suites"]["score"]["figures"]["val"]
    assert figures["schema"] == "pairwise" and 0 <= figures["pairwise_accuracy"] <= 1
    scored = [json.loads(line) for line in (run_dir / "scores_val.jsonl").read_text().splitlines()]
    generator = chat.active_generator()
    for row, out in zip(pair_rows(8), scored, strict=True):
        prompt = row.get("prompt") or row["chosen"][:-1]
        rendered = chat.prompt_for(as_langchain(prompt))
        for side in ("chosen", "rejected"):
            whole = render_messages(prompt + row[side][-1:], generator.tokenizer, False)
            response = whole[len(rendered) :].split("\n")[0]  # what the chat model keeps: its stop ends the turn
            assert out[f"{side}_score"] == pytest.approx(generator.score_texts([rendered], [response])[0], abs=1e-5)


def test_an_offline_backbone_saved_without_a_template_trains_with_the_dialogue_one(tiny_backbone):
    offline = compose_train([])  # the offline default backbone (its path only: nothing is built here)
    assert run.chat_tokenizer(offline, load_tokenizer(str(tiny_backbone))).chat_template == DIALOGUE_CHAT_TEMPLATE
    other = compose_train([f"model.name_or_path={tiny_backbone}", "model.offline_default=false"])
    assert run.chat_tokenizer(other, load_tokenizer(str(tiny_backbone))).chat_template is None


def test_a_conversation_longer_than_max_length_is_refused_naming_its_row(tokenizers, tmp_path):
    file = write_jsonl(tmp_path / "chat.jsonl", chat_rows(3))
    short = CriticDataModule(settings(file, val_files=[str(file)], max_length=12), tokenizers["tiny"])
    with pytest.raises(DataError, match=r"chat.jsonl, row 1: the conversation \(response\) is \d+ tokens, longer than data.max_length=12"):
        short.setup()
    fits = CriticDataModule(settings(file, val_files=[str(file)], max_length=512), tokenizers["tiny"])
    fits.setup()
    assert fits.stats["data/val_truncated"] == 0


def test_a_template_closing_turns_with_a_special_token_lets_a_reply_span_lines(tokenizers):
    from types import SimpleNamespace

    chatml = chatml_tokenizer(tokenizers)
    stops = {}
    for name, tokenizer in [("chatml", chatml), ("tiny", tokenizers["tiny"]), ("dialogue", tokenizers["dialogue"])]:
        chat = CriticChatModel(generator=SimpleNamespace(tokenizer=tokenizer))
        stops[name] = chat._plan([HumanMessage("x")], None, None, None, {}).settings.stop
    # the end-of-turn token is an eos of such a model; the others end a reply at the line's end
    assert stops == {"chatml": (), "tiny": ("\n",), "dialogue": ("\n",)}
