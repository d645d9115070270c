"""Generation with critic scores from the same forward passes, the LangChain LLM, best-of-N and voting.

The tiny random Falcon writes gibberish: the tests check mechanics (stop, only new text, score equality with a
plain CriticModel forward, batching, streaming), never quality.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from helpers import ScriptedGenerator
from langchain_core.messages import HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from tokenizers import Tokenizer, decoders, models

from autocritic.errors import CheckpointError, ConfigError
from autocritic.inference import loading
from autocritic.inference.chat import CriticChatModel
from autocritic.inference.generation import (
    CriticGenerator,
    GenerationSettings,
    Sample,
    find_stop,
    held_back,
)
from autocritic.inference.llm import CriticLLM
from autocritic.inference.loading import clear_generators
from autocritic.inference.rerank import best_of_n, majority_vote
from autocritic.model.backbone import load_backbone, load_tokenizer
from autocritic.model.critic import CriticModel
from autocritic.model.head import HeadSettings

# Different lengths (left padding in one batch); the random model's greedy texts are not all one repeated
# character for the last two, so stops can cut them mid-text.
PROMPTS = ["Q: 1+2=? A:", "(1+2)*3=", "zz top"]
TOL = 1e-4


# Longer than the shortest prompt (left padding inside the window), shorter than prompt + response.
WINDOW_HEAD = HeadSettings(kind="attention", hidden_dim=16, attention_heads=2, window=8, confidence=True)
TOKENS_HEAD = dataclasses.replace(WINDOW_HEAD, tokens=True)  # also reads the ids of the window's tokens
MEMBERS_HEAD = dataclasses.replace(TOKENS_HEAD, members=2)  # two such heads, scoring as their mean logit


def tiny_generator(
    backbone_dir: Path, batch_size: int = 16, confidence: bool = False, head: HeadSettings | None = None
) -> CriticGenerator:
    torch.manual_seed(0)
    model = CriticModel(load_backbone(str(backbone_dir)), head_settings=head or HeadSettings(confidence=confidence))
    tokenizer = load_tokenizer(str(backbone_dir))
    # The fixture's character tokenizer has no decoder and decodes "ab" as "a b": join tokens as they are.
    tokenizer.backend_tokenizer.decoder = decoders.Fuse()
    return CriticGenerator(model, tokenizer, batch_size=batch_size)


@pytest.fixture(scope="module")
def generator(tiny_backbone) -> CriticGenerator:
    return tiny_generator(tiny_backbone)


def reference(generator: CriticGenerator, prompt: str, sample: Sample) -> tuple[float, list[float], list[float]]:
    """Score, response values and response token log-probs of a plain forward over prompt + kept response ids."""
    prompt_ids = generator.tokenizer(prompt)["input_ids"]
    ids = torch.tensor([prompt_ids + sample.token_ids])
    with torch.no_grad():
        out = generator.model(ids, torch.ones_like(ids), torch.tensor([len(prompt_ids)]), return_values=True)
        logits = generator.model.backbone(input_ids=ids).logits[0, :-1]
    logprobs = logits.log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
    return out.score.item(), out.values[0, len(prompt_ids) :].tolist(), logprobs[len(prompt_ids) - 1 :].tolist()


def assert_scores_match(generator: CriticGenerator, prompts: list[str], results: list[list[Sample]]) -> None:
    for prompt, samples in zip(prompts, results, strict=True):
        for sample in samples:
            score, values, logprobs = reference(generator, prompt, sample)
            assert sample.score == pytest.approx(score, abs=TOL)
            if sample.values is not None:
                assert sample.values == pytest.approx(values, abs=TOL)
            if sample.logprobs is not None:  # untempered, whatever the sampling temperature
                assert sample.logprobs == pytest.approx(logprobs, abs=TOL)
            # Character tokenizer: no token straddles a stop, the kept ids are exactly the text.
            assert generator._decode(sample.token_ids) == sample.text


def stops_from(results: list[list[Sample]]) -> tuple[str, ...]:
    """Stop strings that really occur: the first character of one text (empty response) and a pair of
    characters from the middle of the others (cut mid-text)."""
    texts = [row[0].text for row in results]
    return (texts[0][0], *(t[3:5] for t in texts[1:]))


@pytest.fixture(scope="module")
def confident_generator(tiny_backbone) -> CriticGenerator:
    generator = tiny_generator(tiny_backbone, confidence=True)
    with torch.no_grad():  # a random linear head barely weighs 2 inputs among 34: make them matter
        generator.model.head.net.weight[:, -2:].mul_(50.0)
    return generator


@pytest.fixture(scope="module")
def window_generator(tiny_backbone) -> CriticGenerator:
    return tiny_generator(tiny_backbone, head=WINDOW_HEAD)


@pytest.fixture(scope="module")
def tokens_generator(tiny_backbone) -> CriticGenerator:
    return tiny_generator(tiny_backbone, head=TOKENS_HEAD)


@pytest.fixture(scope="module")
def members_generator(tiny_backbone) -> CriticGenerator:
    return tiny_generator(tiny_backbone, head=MEMBERS_HEAD)


@pytest.fixture
def generators(
    generator, confident_generator, window_generator, tokens_generator, members_generator
) -> dict[str, CriticGenerator]:
    return {
        "state": generator,
        "confidence": confident_generator,
        "window": window_generator,
        "tokens": tokens_generator,
        "members": members_generator,
    }


@pytest.mark.parametrize("head", ["state", "confidence", "window", "tokens", "members"])
@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
def test_scores_from_generation_equal_critic_forward(generators, do_sample, head):
    generator = generators[head]
    settings = GenerationSettings(
        max_new_tokens=10, do_sample=do_sample, temperature=1.5, n=2, return_values=True, return_logprobs=True
    )
    free = generator.generate(PROMPTS, settings)
    assert [len(row) for row in free] == [2, 2, 2]
    assert all(
        s.finish_reason in ("eos", "length") and len(s.values) == len(s.token_ids) == len(s.logprobs)
        for r in free
        for s in r
    )
    assert_scores_match(generator, PROMPTS, free)  # "length" rows need the extra one-token forward

    stop = stops_from(free)
    stopped = generator.generate(PROMPTS, settings, stop=stop)
    assert_scores_match(generator, PROMPTS, stopped)
    for free_row, stopped_row in zip(free, stopped, strict=True):
        for before, after in zip(free_row, stopped_row, strict=True):
            cut = find_stop(before.text, stop)
            assert after.text == (before.text if cut is None else before.text[:cut])  # stop and all after cut
            assert after.finish_reason == ("stop" if cut is not None else before.finish_reason)
    lengths = [len(s.text) for row in stopped for s in row if s.finish_reason == "stop"]
    assert 0 in lengths  # the score is read at the last prompt token
    assert any(0 < n < settings.max_new_tokens for n in lengths)  # a cut mid-text


def test_a_deadline_cuts_the_generation_and_scores_what_was_kept(generator, window_generator):
    settings = GenerationSettings(max_new_tokens=24, do_sample=True, n=2, seed=3)
    free = generator.generate(PROMPTS, settings)
    assert any(len(s.token_ids) > 1 for row in free for s in row)
    for model in (generator, window_generator):
        cut = model.generate(PROMPTS, settings, max_time=0.0)  # past the deadline after the first token
        assert all(len(s.token_ids) <= 1 and s.finish_reason in ("length", "eos") for row in cut for s in row)
        assert_scores_match(model, PROMPTS, cut)
    streamed = list(generator.stream(PROMPTS[0], settings, max_time=0.0))
    assert len(streamed[-1].token_ids) <= 1
    assert CriticLLM(generator=generator, timeout=2.5).generation_settings().max_time == 2.5
    assert CriticLLM(generator=generator).generation_settings(timeout=1.0).max_time == 1.0
    with pytest.raises(ConfigError, match="timeout=0"):
        CriticLLM(generator=generator, timeout=0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"n": 0}, r"n=0 must be ≥ 1"),
        ({"max_new_tokens": 0}, r"max_new_tokens=0 must be ≥ 1"),
        ({"top_k": -1}, r"top_k=-1 must be ≥ 0"),
        ({"top_p": 1.5}, r"top_p=1.5 must lie in \(0, 1\]"),
        ({"temperature": -1.0}, r"temperature=-1.0 is not valid with do_sample=False"),
        ({"do_sample": True, "temperature": 0.0}, r"temperature=0.0 is not valid with do_sample=True"),
    ],
)
def test_generation_settings_out_of_range_are_refused(generator, values, message):
    with pytest.raises(ValueError, match=message):
        GenerationSettings(**values)
    llm_values = {("max_tokens" if k == "max_new_tokens" else k): v for k, v in values.items()}
    if "temperature" not in values:  # LangChain's temperature has its own convention (sampling_of)
        with pytest.raises(ConfigError, match=message.replace("max_new_tokens", "max_tokens")):
            CriticLLM(generator=generator, **llm_values)
        with pytest.raises(ConfigError, match=message.replace("max_new_tokens", "max_tokens")):
            CriticLLM(generator=generator).generation_settings(**llm_values)


def test_only_new_text_and_greedy_copies(generator):
    [[first, second]] = generator.generate(["Q: 1+2=? A:"], max_new_tokens=6, n=2)
    assert first == second
    assert len(first.token_ids) == 6 and first.finish_reason == "length"
    assert first.text == generator._decode(first.token_ids)  # the prompt is not echoed


def test_batched_equals_one_at_a_time_under_greedy(tiny_backbone, generator):
    settings = GenerationSettings(max_new_tokens=8, stop=(" ",))
    batched = generator.generate(PROMPTS, settings)
    single = tiny_generator(tiny_backbone, batch_size=1).generate(PROMPTS, settings)
    for (b,), (s,) in zip(batched, single, strict=True):
        assert b.text == s.text and b.token_ids == s.token_ids
        assert b.score == pytest.approx(s.score, abs=TOL)


def test_sampling_is_seeded(generator):
    settings = GenerationSettings(max_new_tokens=8, do_sample=True, n=3, seed=7)
    first, again = generator.generate(PROMPTS[:1], settings), generator.generate(PROMPTS[:1], settings)
    assert [s.text for s in first[0]] == [s.text for s in again[0]]
    assert len({s.text for s in first[0]}) > 1  # n distinct samples at temperature 1


def test_shared_prefill_samples_what_generate_samples(generator):
    """One prefill per prompt, its KV cache copied for the n samples: the same tokens as transformers'
    `generate(num_return_sequences=n)` under the same seed (left-padded prompts of different lengths)."""
    settings = GenerationSettings(max_new_tokens=8, do_sample=True, temperature=1.5, top_k=0, n=3, seed=11)
    ours = generator.generate(PROMPTS, settings)
    encoded = [generator.tokenizer(p)["input_ids"] for p in PROMPTS]
    order = sorted(range(len(PROMPTS)), key=lambda i: len(encoded[i]))  # the generator's batch order
    input_ids, mask = generator._left_pad([encoded[i] for i in order])
    torch.manual_seed(settings.seed)
    theirs = generator.model.backbone.generate(
        input_ids=input_ids,
        attention_mask=mask,
        max_new_tokens=settings.max_new_tokens,
        num_return_sequences=settings.n,
        do_sample=True,
        temperature=settings.temperature,
        top_k=0,
        pad_token_id=generator.pad_id,
        eos_token_id=sorted(generator.eos_ids),
    )[:, input_ids.shape[1] :]
    for row, generated in enumerate(theirs.tolist()):
        sample = ours[order[row // settings.n]][row % settings.n]
        assert generated[: len(sample.token_ids)] == sample.token_ids


@pytest.mark.parametrize("prompts", [["Q"], ["Q", PROMPTS[0]]], ids=["nothing to prefill", "all padding"])
def test_one_token_prompts_score_as_a_forward(window_generator, prompts):
    """A batch of one-token prompts has nothing to prefill; beside a longer prompt, a one-token prompt's prefill
    columns are all padding."""
    assert len(window_generator.tokenizer(prompts[0])["input_ids"]) == 1
    settings = GenerationSettings(max_new_tokens=6, do_sample=True, temperature=1.5, n=2, return_values=True)
    assert_scores_match(window_generator, prompts, window_generator.generate(prompts, settings))


def test_each_prompt_runs_through_the_decoder_once(generator):
    rows_per_call: list[int] = []
    decoder = generator.model.backbone.base_model
    hook = decoder.register_forward_hook(lambda module, args, output: rows_per_call.append(output[0].shape[:2]))
    try:
        generator.generate(PROMPTS, max_new_tokens=4, do_sample=True, n=5)
    finally:
        hook.remove()
    longest = max(len(generator.tokenizer(p)["input_ids"]) for p in PROMPTS)
    # the prompts less their last token, once each; then one token for each of the 3 x 5 samples per step
    assert rows_per_call[0] == (len(PROMPTS), longest - 1)
    assert all(shape == (len(PROMPTS) * 5, 1) for shape in rows_per_call[1:])


def test_a_model_whose_generate_builds_its_own_cache_runs_each_prompt_copy(tiny_backbone):
    """transformers refuses a cache from outside when the generation config names a `cache_implementation`: the
    generator then lets `generate` run every copy of the prompt, with the same scores."""
    generator = tiny_generator(tiny_backbone, head=WINDOW_HEAD)
    generator.model.backbone.generation_config.cache_implementation = "dynamic"
    shapes: list[torch.Size] = []
    decoder = generator.model.backbone.base_model
    hook = decoder.register_forward_hook(lambda module, args, output: shapes.append(output[0].shape[:2]))
    try:
        settings = GenerationSettings(max_new_tokens=6, do_sample=True, temperature=1.5, n=2, return_values=True)
        results = generator.generate(PROMPTS, settings)
    finally:
        hook.remove()
    longest = max(len(generator.tokenizer(p)["input_ids"]) for p in PROMPTS)
    assert shapes[0] == (len(PROMPTS) * 2, longest)
    assert_scores_match(generator, PROMPTS, results)


def test_stream_concatenates_to_the_generated_text(generator):
    settings = GenerationSettings(max_new_tokens=12, do_sample=True, temperature=1.5, seed=3)
    [[free]] = generator.generate(PROMPTS[1:2], settings)
    stop = free.text[6:9]  # a 3-character stop: its first characters are held back while streaming
    [[full]] = generator.generate(PROMPTS[1:2], settings, stop=(stop,))
    items = list(generator.stream(PROMPTS[1], settings, stop=(stop,)))
    *deltas, sample = items
    assert all(isinstance(d, str) and d for d in deltas) and len(deltas) > 1
    assert "".join(deltas) == sample.text == full.text == free.text[: free.text.find(stop)]
    assert sample.score == pytest.approx(full.score, abs=TOL)


def test_stream_stops_early_when_the_consumer_does(generator):
    stream = generator.stream(PROMPTS[0], max_new_tokens=200)
    next(stream)
    stream.close()  # cancels the generation thread and releases the lock
    assert generator.generate(PROMPTS[:1], max_new_tokens=2)[0][0].token_ids


@pytest.mark.parametrize("head", ["state", "confidence", "window", "tokens", "members"])
def test_score_texts_matches_critic_forward(generators, head):
    generator = generators[head]
    responses = [" 3", " five", ""]
    scores = generator.score_texts(PROMPTS, responses)
    for prompt, response, score in zip(PROMPTS, responses, scores, strict=True):
        ids = torch.tensor([generator.tokenizer(prompt + response)["input_ids"]])
        prompt_length = torch.tensor([len(generator.tokenizer(prompt)["input_ids"])])
        with torch.no_grad():
            expected = generator.model(ids, torch.ones_like(ids), prompt_length).score.item()
        assert score == pytest.approx(expected, abs=TOL)
    if head == "confidence":  # the response's log-probs count: the same text read as all prompt scores otherwise
        whole = [p + r for p, r in zip(PROMPTS, responses, strict=True)]
        assert generator.score_texts(whole, [""] * 3)[:2] != pytest.approx(scores[:2], abs=1e-3)


def test_a_token_straddling_the_stop_is_kept(tiny_backbone):
    vocab = {"<eos>": 0, "ab": 1, "c\nO": 2, "bs": 3}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    core.decoder = decoders.Fuse()
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<eos>")
    generator = CriticGenerator(CriticModel(load_backbone(str(tiny_backbone))), tokenizer)
    assert generator._cut([1, 2, 3, 0, 0], ["\nObs"]) == ("abc", 2, "stop")
    assert generator._cut([1, 3, 0, 0], ["\nObs"]) == ("abbs", 2, "eos")
    assert generator._cut([1, 3], []) == ("abbs", 2, "length")


def test_stop_helpers():
    assert find_stop("abc\nObservation", ["\nObs", "c"]) == 2
    assert find_stop("abc", ["x", ""]) is None
    assert held_back("answer\nObs", ["\nObservation"]) == 4
    assert held_back("answer", ["\nObservation"]) == 0


# ---- CriticLLM ----


class Spy:
    """Delegates to a generator and keeps what it returned (to compare with a CriticModel forward)."""

    def __init__(self, inner: CriticGenerator):
        self.inner, self.calls = inner, []

    def generate(self, prompts, settings=None):
        out = self.inner.generate(prompts, settings)
        self.calls.append((list(prompts), settings, out))
        return out

    def stream(self, prompt, settings=None):
        return self.inner.stream(prompt, settings)


def test_llm_generation_info_holds_the_critic_score(generator):
    spy = Spy(generator)
    llm = CriticLLM(generator=spy, max_new_tokens=8, do_sample=True, temperature=1.5, n=2, return_values=True)
    result = llm.generate(PROMPTS[:2], stop=["zz"])
    [(prompts, settings, samples)] = spy.calls
    assert prompts == PROMPTS[:2] and settings.stop == ("zz",) and settings.n == 2  # one batched call
    assert_scores_match(generator, prompts, samples)
    for row, sample_row in zip(result.generations, samples, strict=True):
        for generation, sample in zip(row, sample_row, strict=True):
            assert generation.text == sample.text
            assert generation.generation_info["critic_score"] == sample.score
            assert generation.generation_info["finish_reason"] == sample.finish_reason
            assert generation.generation_info["token_values"] == sample.values


def test_llm_honours_stop_and_returns_only_new_text():
    llm = CriticLLM(generator=ScriptedGenerator(["Paris\nQuestion: next one", "x"]), stop=["\nQuestion"])
    assert llm.invoke("Question: capital of France?\nAnswer: ") == "Paris"
    with pytest.raises(TypeError, match="unknown generation arguments"):
        llm.invoke("q", temprature=0.5)


def test_llm_streams_token_by_token(generator):
    llm = CriticLLM(generator=generator, max_new_tokens=10, do_sample=True, temperature=1.5)
    text = llm.invoke(PROMPTS[1])
    chunks = list(llm.stream(PROMPTS[1]))
    assert len(chunks) > 2 and "".join(chunks) == text
    *_, last = llm._stream(PROMPTS[1])
    assert last.text == "" and set(last.generation_info) == {"critic_score", "finish_reason"}


def test_llm_streaming_true_streams_inside_invoke(generator):
    from langchain_core.callbacks import BaseCallbackHandler

    class Tokens(BaseCallbackHandler):
        def __init__(self):
            self.tokens = []

        def on_llm_new_token(self, token, **kwargs):
            self.tokens.append(token)

    handler = Tokens()
    llm = CriticLLM(generator=generator, max_tokens=10, temperature=1.5, streaming=True)
    result = llm.generate([PROMPTS[1]], callbacks=[handler])
    [[generation]] = result.generations
    [[sample]] = generator.generate(PROMPTS[1:2], llm.generation_settings())
    assert len(handler.tokens) > 2 and "".join(handler.tokens) == generation.text == sample.text
    assert generation.generation_info["critic_score"] == pytest.approx(sample.score, abs=TOL)
    usage = result.llm_output["token_usage"]
    assert usage["completion_tokens"] == len(sample.token_ids) and usage["prompt_tokens"] == len(
        generator.tokenizer(PROMPTS[1])["input_ids"]
    )


def test_chat_streams_one_reply_only():
    chat = CriticChatModel(generator=ScriptedGenerator(["a", "b"]), n=2)
    assert len(chat.generate([[HumanMessage("hi")]]).generations[0]) == 2
    with pytest.raises(ValueError, match="streaming gives one reply"):
        list(chat.stream("hi"))


def test_llm_in_runnable_pipe_and_legacy_llmchain(generator):
    from langchain_classic.chains import LLMChain

    prompt = PromptTemplate.from_template("Q: {a}+{b}=? A:")
    llm = CriticLLM(generator=generator, max_new_tokens=5)
    piped = (prompt | llm | StrOutputParser()).invoke({"a": 1, "b": 2})
    [[sample]] = generator.generate(["Q: 1+2=? A:"], max_new_tokens=5)
    assert piped == sample.text
    chain = LLMChain(llm=llm, prompt=prompt)
    assert chain.invoke({"a": 1, "b": 2})["text"] == sample.text


# ---- best-of-N and voting ----


def test_best_of_n_picks_the_highest_critic_score(generator):
    results = best_of_n(generator, PROMPTS[:2], n=4, max_new_tokens=6, temperature=1.5)
    for result in results:
        assert len(result.samples) == 4
        assert result.best.score == max(result.scores)
        assert result.chosen == result.scores.index(max(result.scores))
    assert_scores_match(generator, PROMPTS[:2], [r.samples for r in results])
    with pytest.raises(ValueError, match="do_sample"):
        best_of_n(generator, PROMPTS[:1], n=2, do_sample=False)


def test_best_of_n_ties_go_to_the_first():
    [result] = best_of_n(ScriptedGenerator(["a", "b", "c"], score=1.0), ["q"], n=3)
    assert result.chosen == 0 and result.best.text == "a"


def test_majority_vote():
    assert majority_vote(["5", "4", "5", None]) == "5"
    assert majority_vote(["4", "5"]) == "4"  # tie: the first seen
    assert majority_vote([None, None]) is None
    assert majority_vote(["4", "5", "5"], weights=[0.9, 0.2, 0.3]) == "4"
    with pytest.raises(ValueError):
        majority_vote(["4"], weights=[1.0, 2.0])


# ---- sampling under LangChain's convention ----


@pytest.mark.parametrize(
    "fields, do_sample, temperature",
    [
        ({}, False, 1.0),  # unset: greedy, as before
        ({"temperature": 0}, False, 1.0),
        ({"temperature": 0.7}, True, 0.7),  # temperature > 0 samples
        ({"temperature": 0.7, "do_sample": False}, False, 1.0),  # do_sample decides when set
        ({"do_sample": True}, True, 1.0),
    ],
)
def test_temperature_above_zero_samples(fields, do_sample, temperature):
    settings = CriticLLM(generator=ScriptedGenerator([]), **fields).generation_settings()
    assert (settings.do_sample, settings.temperature) == (do_sample, temperature)


def test_sampling_settings_at_call_time_and_the_aliases():
    llm = CriticLLM(generator=ScriptedGenerator([]), max_new_tokens=7)
    assert llm.max_tokens == llm.max_new_tokens == 7 and CriticLLM(generator=llm.generator, max_tokens=5).max_tokens == 5
    called = llm.generation_settings(temperature=0.5, max_tokens=3)
    assert called.do_sample and called.temperature == 0.5 and called.max_new_tokens == 3
    with pytest.raises(ConfigError, match="temperature=0 with do_sample=True"):
        CriticLLM(generator=llm.generator, temperature=0, do_sample=True)
    with pytest.raises(ConfigError, match="temperature=-1"):
        llm.generation_settings(temperature=-1)


# ---- model=: an export or a hub id, loaded at first use and shared ----


def test_model_loads_at_first_use_and_is_shared(tiny_export):
    clear_generators()
    chat = CriticChatModel(model=str(tiny_export), max_tokens=4)
    llm = CriticLLM(model_name=str(tiny_export), max_new_tokens=4)
    assert loading._GENERATORS == {}  # construction loads nothing
    reply = chat.invoke("hi")
    text = llm.invoke("Human: hi\nAI:")
    generator = chat.active_generator()
    assert llm.active_generator() is generator and len(loading._GENERATORS) == 1  # one copy of the weights
    assert text == generator.generate(["Human: hi\nAI:"], max_new_tokens=4)[0][0].text
    assert reply.response_metadata["model_name"] == str(tiny_export)
    input_tokens = generator.prompt_tokens("Human: hi\nAI:")
    assert reply.usage_metadata == {"input_tokens": input_tokens, "output_tokens": 4, "total_tokens": input_tokens + 4}
    assert CriticLLM(model=str(tiny_export), batch_size=2).active_generator().model is generator.model


def test_a_hub_id_is_downloaded_once_at_first_use(tiny_export, monkeypatch):
    import huggingface_hub

    clear_generators()
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **_: asked.append(repo) or str(tiny_export))
    chat = CriticChatModel(model="someone/critic", max_tokens=2)
    assert asked == []
    chat.invoke("hi")
    CriticLLM(model="someone/critic", max_tokens=2).invoke("hi")
    assert asked == ["someone/critic"] * 2 and len(loading._GENERATORS) == 1  # the same snapshot, loaded once


def test_a_bad_model_is_one_clear_error(tmp_path, monkeypatch):
    from huggingface_hub import constants

    with pytest.raises(CheckpointError, match=f"{tmp_path}.*critic_config.json is missing"):
        CriticChatModel(model=str(tmp_path))  # a directory, not an export: found at construction
    with pytest.raises(ConfigError, match="no such directory, and not a hub id"):
        CriticLLM(model=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="give model="):
        CriticLLM()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    chat = CriticChatModel(model="someone/absent-critic")  # a hub id: looked up at first use
    with pytest.raises(CheckpointError, match="someone/absent-critic.*not in the hub cache while the hub cannot be"):
        chat.invoke("hi")


# ---- async ----


async def test_llm_astream_matches_the_stream(generator):
    llm = CriticLLM(generator=generator, max_tokens=10, temperature=1.5)
    chunks = [chunk async for chunk in llm.astream(PROMPTS[1])]
    assert len(chunks) > 2 and "".join(chunks) == "".join(llm.stream(PROMPTS[1])) == await llm.ainvoke(PROMPTS[1])


async def test_an_async_stream_stopped_early_ends_the_generation(generator):
    """The worker closes the generator's stream, which cancels the generation: far fewer than 200 decoder steps
    run before the next call gets the model."""
    steps = []
    hook = generator.model.backbone.base_model.register_forward_hook(lambda *args: steps.append(1))
    try:
        chat = CriticChatModel(generator=generator, max_tokens=200, dialogue_stop=[])
        stream = chat.astream("hi")
        async for _ in stream:
            break
        await stream.aclose()
        assert (await chat.ainvoke("hi", max_tokens=2)).usage_metadata["output_tokens"] == 2
    finally:
        hook.remove()
    assert len(steps) < 100
