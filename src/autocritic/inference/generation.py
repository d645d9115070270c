"""CriticGenerator: batched generation whose critic scores come from the generation's own forward passes.

    prompt but its last token ─► decoder, once per prompt ─► KV cache, copied for each of the n samples
    last prompt token ─► decoder ──► its state ───────────────────────┐  step 0 (one token, KV cache)
    token 1 ─► decoder ──► state of token 1 ───────────────────────────┤  step 1
    ...                                                                ├─► head(state at the last KEPT token) = score
    token k ─► decoder ──► state of token k (fed only when needed) ───┘

A forward hook on the base decoder records the final (post-norm) state that `lm_head` reads at each step. After
cutting the stop string and eos, the score is the head applied to the state of the last kept response token:
exactly `CriticModel(prompt ids + kept response ids).score`, with no second pass over the text. Only when that
token was never fed (the last generated token: max_new_tokens reached, or the cut ends on it) one extra cached
forward of one token runs. A head that reads the model's confidence gets the log-probabilities of the kept tokens
from the raw logits `generate` computed anyway (`output_logits`), before temperature or top-k touch them. A head
that reads a window of states (`head.kind=attention`) also gets the prompt's last states.

The n samples of a prompt share its prefill (`prefill_for_samples`): the prompt runs through the decoder once and its
KV cache is copied for each sample, where `generate(num_return_sequences=n)` runs each copy of the prompt (the
rerank suite's few-shot prompts: n times the work that dominates sampling; bench/rerank_overhead.py).
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from autocritic.data.template import Template
from autocritic.model.backbone import unwrap
from autocritic.model.critic import (
    CriticModel,
    decoder_of,
    gather_logprobs,
    positions_from_mask,
    running_confidence,
)
from autocritic.model.sampling import prefill_for_samples
from autocritic.progress import track
from autocritic.settings import at_least

FINISH_REASONS = ("stop", "eos", "length")  # stop string found, eos generated, max_new_tokens reached

# One forward at a time per model while a hook records its decoder: LangChain batches with threads, and two
# generators may share a model.
_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _lock_of(model: torch.nn.Module) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(model, threading.Lock())


@dataclass(frozen=True)
class GenerationSettings:
    """Greedy unless `do_sample`. `seed=None` leaves the global RNG alone; an int makes each call reproducible."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    n: int = 1  # samples per prompt (greedy: n copies of the one greedy answer)
    seed: int | None = 0
    stop: tuple[str, ...] = ()
    return_values: bool = False  # token-level values (the head over each response token's state)
    return_logprobs: bool = False  # log p(token | prefix) of each kept token, under the untempered model
    max_time: float | None = None  # seconds for the whole call: rows still going then stop (finish_reason "length")

    def __post_init__(self) -> None:
        at_least(self, 1, "max_new_tokens", "n")
        at_least(self, 0, "top_k", "max_time")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must lie in (0, 1] (1: off)")
        if self.temperature < 0 or (self.do_sample and self.temperature == 0):
            raise ValueError(
                f"temperature={self.temperature} is not valid with do_sample={self.do_sample}: it must be > 0 to "
                "sample (greedy decoding, do_sample=False, ignores it but takes no negative value)"
            )


@dataclass
class Sample:
    """One generated response. `token_ids` are the kept response tokens: `score` is the critic score of
    (prompt ids + token_ids). They decode to `text`, except when a token straddles the stop string: it is kept
    (the scored sequence covers the whole text) and so brings the first characters of the stop."""

    text: str
    score: float | None
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    values: list[float] | None = None  # one per token in token_ids, when asked
    logprobs: list[float] | None = None  # one per token in token_ids, when asked or read by the head


class TextGenerator(Protocol):
    """What the LangChain adapters need; `CriticGenerator` implements it (tests script one)."""

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings | None = None
    ) -> list[list[Sample]]: ...

    def stream(self, prompt: str, settings: GenerationSettings | None = None) -> Iterator[str | Sample]: ...


def find_stop(text: str, stop: Sequence[str]) -> int | None:
    """Index of the earliest stop string in `text`, or None."""
    hits = [index for index in (text.find(s) for s in stop if s) if index >= 0]
    return min(hits) if hits else None


def held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters of `text` could still become a stop string (not safe to stream yet)."""
    longest = 0
    for s in stop:
        for size in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:size]):
                longest = size
                break
    return longest


class _Recorder:
    """Forward hook on the decoder: keeps the final states of the last `first_tail` positions of the first call
    and of the last position of every later call (the fed token), (B, positions, H) each."""

    def __init__(self, decoder: torch.nn.Module, first_tail: int = 1):
        self.states: list[torch.Tensor] = []
        self.first_tail = first_tail
        self.handle = decoder.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.states.append(output.last_hidden_state[:, -(self.first_tail if not self.states else 1) :])

    def close(self) -> None:
        self.handle.remove()


class _StopOnText(StoppingCriteria):
    """Stops a row once its generated text (not the prompt) contains a stop string: exactly where `_cut` will
    cut. transformers' `stop_strings` also matches across the prompt boundary and fails on tokenizers whose
    vocabulary it cannot clean."""

    def __init__(self, batch_decode, prompt_length: int, stop: Sequence[str]):
        self.batch_decode = batch_decode
        self.prompt_length = prompt_length
        self.stop = [s for s in stop if s]
        self.window = 2 * max(map(len, self.stop)) + 8  # tokens: a new stop string can only end the text
        self.done: list[bool] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if self.done is None:
            self.done = [False] * input_ids.shape[0]
        rows = [row for row, done in enumerate(self.done) if not done]
        tails = input_ids[rows, max(self.prompt_length, input_ids.shape[1] - self.window) :].tolist()
        for row, text in zip(rows, self.batch_decode(tails), strict=True):
            self.done[row] = find_stop(text, self.stop) is not None
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


def _deadline_of(settings: GenerationSettings) -> float | None:
    """When a call that starts now must stop (time.monotonic), or None without `max_time`."""
    return None if settings.max_time is None else time.monotonic() + settings.max_time


class _Deadline(StoppingCriteria):
    """Stops every row once the monotonic clock passes `deadline` (checked after each generated token)."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = time.monotonic() >= self.deadline
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class _Cancel(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


class _QueueStreamer(BaseStreamer):
    """Pushes each new token id of a batch-of-one generation into a queue (the first put is the prompt)."""

    def __init__(self, out: queue.Queue):
        self.out = out
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.out.put(int(value.reshape(-1)[0]))

    def end(self) -> None:
        pass


class CriticGenerator:
    """Generation and scoring with an in-process CriticModel (or a PeftModel around one).

    Prompts are rendered with the critic's template (`Template.render_prompt`), so the generated sequence is
    exactly the text the critic was trained to score. The model is put in eval mode (the head's dropout off).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        template: str = "{prompt}{response}",
        batch_size: int = 16,
    ):
        self.model: CriticModel = unwrap(model).eval()
        self.tokenizer = tokenizer
        self.template = Template(template)
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = self.model.backbone.generation_config.eos_token_id
        eos = tokenizer.eos_token_id if eos is None else eos
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self._lock = _lock_of(self.model)

    @classmethod
    def from_export(
        cls,
        path: str | Path,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
        dtype: str = "float32",
        **load_kwargs,
    ) -> CriticGenerator:
        """Load an export directory or hub id (`AutoCritic.from_pretrained`). `device` and `dtype` may be "auto":
        the GPU in bfloat16 when there is one, else the CPU in float32. `load_kwargs`: `merge`, `backbone`,
        `revision`, `token`.

        Example:
            critic = CriticGenerator.from_export("outputs/transfer/<run>/export", device="auto", dtype="auto")
            critic.score_texts(["Q: 2+3=? A:"], [" 5"])
        """
        from autocritic.model.hub import AutoCritic

        loaded = AutoCritic.from_pretrained(path, device=device, dtype=dtype, **load_kwargs)
        return cls(loaded.model, loaded.tokenizer, loaded.template, batch_size=batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- generation ----

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings | None = None, **overrides
    ) -> list[list[Sample]]:
        """`settings.n` samples per prompt, in the order of `prompts`. Rows are batched by prompt length."""
        settings = replace(settings or GenerationSettings(), **overrides)
        deadline = _deadline_of(settings)
        encoded = [self._encode_prompt(p) for p in prompts]
        rows_per_prompt = settings.n if settings.do_sample else 1
        per_batch = max(1, self.batch_size // rows_per_prompt)
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        results: list[list[Sample]] = [[] for _ in prompts]
        starts = range(0, len(order), per_batch)
        # A call of one batch is over quickly (an agent's step): only longer ones get a bar, gone when done.
        for start in track(starts, desc="generating", enabled=len(starts) > 1, leave=False):
            indices = order[start : start + per_batch]
            samples = self._generate_rows([encoded[i] for i in indices], settings, rows_per_prompt, deadline=deadline)
            for row, sample in enumerate(samples):
                results[indices[row // rows_per_prompt]].append(sample)
        if rows_per_prompt != settings.n:  # greedy: every sample is the same
            results = [[replace(row[0]) for _ in range(settings.n)] for row in results]
        return results

    def stream(
        self, prompt: str, settings: GenerationSettings | None = None, **overrides
    ) -> Iterator[str | Sample]:
        """Text deltas as tokens arrive (never any part of a stop string), then the final `Sample`.
        The deltas concatenate to `Sample.text`; the Sample comes from the same code path as `generate`."""
        settings = replace(settings or GenerationSettings(), n=1, **overrides)
        deadline = _deadline_of(settings)
        ids = self._encode_prompt(prompt)
        tokens: queue.Queue = queue.Queue()
        cancel = threading.Event()
        outcome: dict = {}

        def work() -> None:
            try:
                outcome["sample"] = self._generate_rows([ids], settings, 1, _QueueStreamer(tokens), cancel, deadline)[0]
            except BaseException as error:  # re-raised in the consuming thread
                outcome["error"] = error
            finally:
                tokens.put(None)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        emitted, generated, done = "", [], False
        try:
            while (token := tokens.get()) is not None:
                if done:
                    continue
                if token in self.eos_ids:
                    done = True
                    continue
                generated.append(token)
                text = self._decode(generated)
                cut = find_stop(text, settings.stop)
                if cut is not None:
                    text, done = text[:cut], True
                else:
                    text = text[: len(text) - held_back(text, settings.stop)]
                text = text.rstrip("\ufffd")  # an incomplete multi-byte character
                if len(text) > len(emitted) and text.startswith(emitted):
                    yield text[len(emitted) :]
                    emitted = text
        finally:
            cancel.set()  # the consumer may stop early: end the generation too
            thread.join()
        if "error" in outcome:
            raise outcome["error"]
        sample: Sample = outcome["sample"]
        if sample.text.startswith(emitted) and len(sample.text) > len(emitted):
            yield sample.text[len(emitted) :]
        yield sample

    def prompt_tokens(self, prompt: str) -> int:
        """How many tokens the model reads for `prompt` (rendered with the template), as `generate` encodes it."""
        return len(self._encode_prompt(prompt))

    def _encode_prompt(self, prompt: str) -> list[int]:
        ids = self.tokenizer(self.template.render_prompt(prompt))["input_ids"]
        if not ids:
            raise ValueError("cannot generate from an empty prompt (it encodes to no tokens)")
        return ids

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _batch_decode(self, rows: Sequence[Sequence[int]]) -> list[str]:
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    @torch.no_grad()
    def _generate_rows(
        self,
        prompts: list[list[int]],
        settings: GenerationSettings,
        n: int,
        streamer: BaseStreamer | None = None,
        cancel: threading.Event | None = None,
        deadline: float | None = None,
    ) -> list[Sample]:
        """`n` samples for each tokenized prompt, prompt-major (row = prompt * n + sample); rows still going at
        `deadline` (time.monotonic) stop there."""
        input_ids, attention_mask = self._left_pad(prompts)
        sampling = (
            {
                "do_sample": True,
                "temperature": settings.temperature,
                "top_k": settings.top_k,
                "top_p": settings.top_p,
            }
            if settings.do_sample
            else {"do_sample": False}
        )
        criteria = StoppingCriteriaList()
        if any(settings.stop):
            criteria.append(_StopOnText(self._batch_decode, input_ids.shape[1], settings.stop))
        if cancel is not None:
            criteria.append(_Cancel(cancel))
        if deadline is not None:
            criteria.append(_Deadline(deadline))
        want_logprobs = settings.return_logprobs or self.model.reads_confidence
        # A window head also reads the prompt's last states; the others the state of the last kept token only.
        prompt_tail = min(self.model.window, input_ids.shape[1])
        with self._lock, _seeded(settings.seed, self.device):
            prefilled = prefill_for_samples(self.model.backbone, input_ids, attention_mask, n)
            cache, prompt_states = None, []
            if prefilled is not None:  # the window's prompt states before the last prompt token, one row per sample
                cache, hidden = prefilled
                tail = prompt_tail - 1
                prompt_states = [hidden[:, hidden.shape[1] - tail :].repeat_interleave(n, 0)] if tail else []
            input_ids, attention_mask = input_ids.repeat_interleave(n, 0), attention_mask.repeat_interleave(n, 0)
            # without a shared prefill, generate's first call runs the whole prompt
            recorder = _Recorder(decoder_of(self.model.backbone), 1 if cache is not None else prompt_tail)
            try:
                out = self.model.backbone.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    cache=cache,
                    max_new_tokens=settings.max_new_tokens,
                    pad_token_id=self.pad_id,
                    eos_token_id=sorted(self.eos_ids),
                    return_dict_in_generate=True,
                    streamer=streamer,
                    stopping_criteria=criteria,
                    output_logits=want_logprobs,
                    **sampling,
                )
                generated = out.sequences[:, input_ids.shape[1] :]  # (R, L)
                if len(recorder.states) != generated.shape[1]:
                    raise RuntimeError(
                        f"expected one decoder call per generated token ({generated.shape[1]}), saw "
                        f"{len(recorder.states)}: this generation mode is not supported by CriticGenerator"
                    )
                kept = [self._cut(row, settings.stop) for row in generated.tolist()]
                if any(length == generated.shape[1] for _, length, _ in kept):
                    self._feed_last(out, attention_mask)
            finally:
                recorder.close()
            # Columns: the prompt's last `prompt_tail` tokens, then generated token 0, 1, ... (as fed); the state
            # after j kept tokens is column `prompt_tail - 1 + j`.
            states = torch.cat(prompt_states + recorder.states, dim=1)  # (R, prompt_tail + L - 1 or + L, H)
            mask = torch.ones(states.shape[:2], dtype=torch.long, device=states.device)
            mask[:, :prompt_tail] = attention_mask[:, -prompt_tail:]
            first = input_ids.shape[1] - prompt_tail
            tokens = out.sequences[:, first : first + states.shape[1]]  # the token of each column, as fed
            rows = torch.arange(states.shape[0], device=states.device)
            last = torch.tensor([length for _, length, _ in kept], device=states.device)
            logprobs = confidence = None
            if want_logprobs:
                logprobs = _logprobs_of(out.logits, generated)  # (R, L)
                kept_mask = torch.arange(generated.shape[1], device=states.device)[None, :] < last[:, None]
                # confidence[:, j]: after j kept tokens
                confidence = torch.cat(
                    [logprobs.new_zeros(len(rows), 1, 2), running_confidence(logprobs, kept_mask)], dim=1
                )
            offset = prompt_tail - 1
            ends = (last + offset)[:, None]
            scores = self.model.score_at(
                states, mask, ends, _at(confidence, (rows[:, None], last[:, None])), tokens=tokens
            )[:, 0].tolist()
            samples = []
            for row, ((text, length, reason), score) in enumerate(zip(kept, scores, strict=True)):
                token_ids = generated[row, :length].tolist()
                values = [] if settings.return_values and not length else None
                if settings.return_values and length:
                    steps = torch.arange(1, length + 1, device=states.device)
                    values = self.model.score_at(
                        states[row : row + 1],
                        mask[row : row + 1],
                        (steps + offset)[None],
                        _at(confidence, (slice(row, row + 1), steps)),
                        tokens=tokens[row : row + 1],
                    )[0].tolist()
                kept_logprobs = logprobs[row, :length].tolist() if logprobs is not None else None
                samples.append(Sample(text, score, token_ids, reason, values, kept_logprobs))
        return samples

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        length = max(map(len, prompts))
        input_ids = torch.full((len(prompts), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, length - len(ids) :] = torch.tensor(ids)
            attention_mask[row, length - len(ids) :] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    def _cut(self, ids: list[int], stop: Sequence[str]) -> tuple[str, int, str]:
        """(kept text, number of kept tokens, finish reason) of one generated row."""
        end = next((i for i, token in enumerate(ids) if token in self.eos_ids), len(ids))
        body = ids[:end]
        text = self._decode(body)
        cut = find_stop(text, stop)
        if cut is None:
            return text, end, "eos" if end < len(ids) else "length"
        return text[:cut], self._tokens_covering(body, cut), "stop"

    def _tokens_covering(self, ids: list[int], chars: int) -> int:
        """Fewest leading tokens whose text has at least `chars` characters (binary search over prefixes)."""
        low, high = 0, len(ids)
        while low < high:
            middle = (low + high) // 2
            if len(self._decode(ids[:middle])) >= chars:
                high = middle
            else:
                low = middle + 1
        return low

    def _feed_last(self, out, attention_mask: torch.Tensor) -> None:
        """One cached forward of the last generated token (never fed by `generate`); the hook records it."""
        sequences = out.sequences
        mask = torch.cat(
            [
                attention_mask,
                attention_mask.new_ones(sequences.shape[0], sequences.shape[1] - attention_mask.shape[1]),
            ],
            1,
        )
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = out.past_key_values
        decoder_of(self.model.backbone)(
            input_ids=sequences[:, -1:],
            attention_mask=mask,
            position_ids=positions_from_mask(mask)[:, -1:],
            cache=cache,
            use_cache=True,
        )

    # ---- scoring arbitrary text ----

    @torch.no_grad()
    def score_ids(
        self,
        sequences: Sequence[Sequence[int]],
        batch_size: int | None = None,
        prompt_lengths: Sequence[int] | None = None,
    ) -> list[float]:
        """Critic scores of token id sequences (batched by length, right padding: pooling reads the mask).
        `prompt_lengths`: tokens of each rendered prompt, needed by a head that reads confidence."""
        batch_size = batch_size or self.batch_size
        if prompt_lengths is not None and len(prompt_lengths) != len(sequences):
            raise ValueError(f"{len(sequences)} sequences but {len(prompt_lengths)} prompt lengths")
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        scores: list[float] = [0.0] * len(sequences)
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            length = max(len(sequences[i]) for i in indices)
            input_ids = torch.full((len(indices), length), self.pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(indices), length), dtype=torch.long)
            for row, i in enumerate(indices):
                input_ids[row, : len(sequences[i])] = torch.tensor(list(sequences[i]))
                attention_mask[row, : len(sequences[i])] = 1
            lengths = None if prompt_lengths is None else torch.tensor([prompt_lengths[i] for i in indices])
            with self._lock:  # a hook of a running generation would record this forward
                batch_scores = self.model(
                    input_ids.to(self.device), attention_mask.to(self.device), prompt_lengths=lengths
                ).score.tolist()
            for i, score in zip(indices, batch_scores, strict=True):
                scores[i] = score
        return scores

    def score_texts(
        self, prompts: Sequence[str], responses: Sequence[str], batch_size: int | None = None
    ) -> list[float]:
        """Critic scores of (prompt, response) pairs, tokenized as in training: `render_prompt(prompt) + response`
        in one piece, the response starting after the rendered prompt's tokens."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        rendered = [self.template.render_prompt(p) for p in prompts]
        prompt_lengths = [len(ids) for ids in self.tokenizer(rendered)["input_ids"]] if rendered else []
        texts = [r + response for r, response in zip(rendered, responses, strict=True)]
        return self.score_ids([self.tokenizer(t)["input_ids"] for t in texts], batch_size, prompt_lengths)


def _at(features: torch.Tensor | None, index) -> torch.Tensor | None:
    return None if features is None else features[index]


def _logprobs_of(logits: Sequence[torch.Tensor], generated: torch.Tensor) -> torch.Tensor:
    """(R, L) log p(generated token | prefix) from `generate`'s raw logits, one (R, V) tensor per step."""
    return torch.stack([gather_logprobs(step, generated[:, j]) for j, step in enumerate(logits)], dim=1)


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG for one call and restore it afterwards (no-op for seed=None)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
