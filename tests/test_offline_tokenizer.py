"""The offline tokenizer: lossless on every generated text, digits and operators alone, HF round trip."""

from __future__ import annotations

import itertools

import pytest
from transformers import AutoTokenizer

from autocritic.offline import documents, tasks
from autocritic.offline.tokenizer import EOS_TOKEN, PAD_TOKEN, save_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    weights = {"arithmetic": 0.6, "react": 0.2, "dialogue": 0.2}
    drawn = itertools.islice(documents.iter_documents(0, weights), 500)
    trained = train_tokenizer((documents.document_text(d) for d in drawn), vocab_size=400)
    out = save_tokenizer(trained, tmp_path_factory.mktemp("tokenizer"))
    return AutoTokenizer.from_pretrained(out)


def test_reloads_with_eos_and_pad(tokenizer):
    assert tokenizer.eos_token == EOS_TOKEN and tokenizer.pad_token == PAD_TOKEN
    assert tokenizer.eos_token_id != tokenizer.pad_token_id


def test_round_trips_every_generated_text(tokenizer):
    splits = tasks.make_splits(seed=3, train=20, val=10, test=10)
    texts = [tasks.render(p) for problems in splits.values() for p in problems]
    texts += ["héllo  wörld ½\t", "Thought: ", " 1,234.50 ((2+3))**2 "]
    for text in texts:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_digits_and_operators_stand_alone(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("(12+345)**2.5")["input_ids"])
    assert [tokenizer.convert_tokens_to_string([t]) for t in tokens] == list("(12+345)**2.5")


def test_prompt_and_response_tokenize_like_their_concatenation(tokenizer):
    splits = tasks.make_splits(seed=4, train=10, val=0, test=10)
    for problem in splits["test"]:
        prompt, completion = tasks.prompt_of(problem), tasks.completion_of(problem)
        joined = tokenizer(prompt + completion)["input_ids"]
        assert tokenizer(prompt)["input_ids"] + tokenizer(completion)["input_ids"] == joined


def test_segments_tokenize_like_the_prompts_the_model_will_see(tokenizer):
    splits = tasks.make_splits(seed=5, train=10, val=0, test=10)
    for problem in splits["train"] + splits["test"]:
        segments = documents.segments_of(problem)
        assert documents.document_text(segments) == tasks.render(problem)
        pieces = [i for text, _ in segments for i in tokenizer(text)["input_ids"]]
        if problem.family != "react":
            assert pieces == tokenizer(tasks.render(problem))["input_ids"]
            continue
        # The agent's second call: the prompt ends with "Thought: ", the model writes the rest.
        head = documents.document_text(segments[:-1])
        assert head.endswith("\nThought: ")
        assert pieces == tokenizer(head)["input_ids"] + tokenizer(segments[-1][0])["input_ids"]


def test_its_chat_template_writes_the_dialogue_the_model_learns(tokenizer):
    import random

    from langchain_core.messages import AIMessage, HumanMessage

    from autocritic.chat_format import role_dicts
    from autocritic.inference.chat import render_dialogue

    rng = random.Random(0)
    for _ in range(20):
        problem = tasks.dialogue_problem(rng)
        turns = [line.split(": ", 1) for line in problem.question.split("\n")]
        messages = [HumanMessage(text) if who == "Human" else AIMessage(text) for who, text in turns]
        rendered = tokenizer.apply_chat_template(role_dicts(messages), tokenize=False, add_generation_prompt=True)
        assert rendered == render_dialogue(messages) == tasks.prompt_of(problem)
        answer = [{"role": "assistant", "content": tasks.completion_of(problem).removeprefix(" ")}]
        whole = tokenizer.apply_chat_template(role_dicts(messages) + answer, tokenize=False)
        assert whole == tasks.render(problem)


def test_the_chat_template_changes_no_token(tmp_path):
    """Only the template file is added: the vocabulary, merges and every id stay those of a tokenizer without it."""
    texts = [documents.document_text(d) for d in itertools.islice(documents.iter_documents(1, {"dialogue": 1.0}), 50)]
    with_template = train_tokenizer(texts, vocab_size=300)
    without = train_tokenizer(texts, vocab_size=300)
    without.chat_template = None
    save_tokenizer(with_template, tmp_path / "with")
    save_tokenizer(without, tmp_path / "without")
    assert (tmp_path / "with" / "tokenizer.json").read_bytes() == (tmp_path / "without" / "tokenizer.json").read_bytes()
    written = {p.name for p in (tmp_path / "with").iterdir()}
    assert written - {p.name for p in (tmp_path / "without").iterdir()} == {"chat_template.jinja"}
    assert with_template(texts)["input_ids"] == without(texts)["input_ids"]
