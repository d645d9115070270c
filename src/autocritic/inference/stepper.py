"""The critic model as a `StepExpander`: samples next steps and scores them from the same forward passes.

    parent states ──k copies, left-padded KV caches in one batch──► one token per forward, per row:
        sample from the last logits ─► feed it ─► its final state (kept) and the next logits
    a row is done once it has fed the token that ends its step (the separator, or eos); the step's score is the
    head read at that token's state: exactly what the critic reads at the end of a step prefix in training
    (`data.schema=stepwise`), with no second pass over the text.

A child keeps its own KV cache (its parent's rows plus its step's), so the next expansion feeds only new tokens:
shared prefixes run once. A head reading a window of states gets the path's last states and token ids; a head
reading confidence gets the running mean and min log-probability of the response's tokens (untempered), as in
training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache

import torch
from transformers import DynamicCache

from autocritic.inference.generation import CriticGenerator, _lock_of
from autocritic.inference.search import Expansion, SearchSettings
from autocritic.model.critic import decoder_of, gather_windows
from autocritic.model.sampling import takes_outside_cache


@dataclass
class PathState:
    ids: list[int]  # prompt + response tokens, all fed
    cache: DynamicCache  # the batch's cache that holds the path's keys and values, at `row`, positions `span`
    row: int
    span: tuple[int, int]
    window_states: (
        torch.Tensor
    )  # (window, H): the final states of the path's last tokens, left-padded with zeros
    window_mask: torch.Tensor  # (window,) bool: False on the padding
    window_ids: torch.Tensor  # (window,): the ids of those tokens
    next_logits: torch.Tensor  # (V,): the distribution of the next token
    prompt_length: int
    logprob_sum: float = 0.0  # of the response tokens (what a confidence head reads)
    logprob_count: int = 0
    logprob_min: float = 0.0
    rng: torch.Generator | None = None  # the search's own random stream, shared by its states

    @cached_property
    def keys(self) -> list[torch.Tensor]:
        """Per layer (1, kv heads, len(ids), head dim): sliced when the state is expanded, not for every child."""
        return self._own("keys")

    @cached_property
    def values(self) -> list[torch.Tensor]:
        return self._own("values")

    def _own(self, which: str) -> list[torch.Tensor]:
        first, end = self.span
        return [getattr(layer, which)[self.row : self.row + 1, :, first:end] for layer in self.cache.layers]


@dataclass
class _Sampled:
    """The steps of one batch of rows: (rows, max_step_tokens) tokens, log-probs and final states as fed, how many
    each fed, which ended by eos and which ran out of tokens (`cut`), each row's next-token logits, the cache."""

    tokens: torch.Tensor
    logprobs: torch.Tensor
    hidden: torch.Tensor
    fed: torch.Tensor
    by_eos: torch.Tensor
    cut: torch.Tensor
    next_logits: torch.Tensor
    cache: DynamicCache
    longest: int  # the parents' longest length: row r's own tokens start at longest - len(parent r)


@lru_cache(maxsize=8)
def _tokens_ending_steps(tokenizer, separator: str, vocab_size: int) -> torch.Tensor:
    """(V,) bool: tokens whose text holds the separator (a merged "\\n\\n" or ".\\n" ends a step too)."""
    texts = tokenizer.batch_decode([[i] for i in range(vocab_size)], clean_up_tokenization_spaces=False)
    return torch.tensor([separator in text for text in texts])


class CriticStepper:
    """Steps sampled and scored by a `CriticGenerator`'s model (its template renders the prompt)."""

    def __init__(self, generator: CriticGenerator):
        self.generator = generator
        self.model = generator.model
        self.backbone = generator.model.backbone
        if not takes_outside_cache(self.backbone):
            raise ValueError(
                f"{type(self.backbone).__name__} does not take a dynamic KV cache from outside (a "
                "cache_implementation in its generation config?): the search needs one to share prefixes."
            )
        self.decoder = decoder_of(self.backbone)
        self.lm_head = self.backbone.get_output_embeddings()
        self.window = self.model.window
        self.vocab_size = self.lm_head.weight.shape[0]
        self.rng = torch.Generator(device=generator.device)

    @property
    def device(self) -> torch.device:
        return self.generator.device

    @torch.no_grad()
    def root(self, prompt: str, settings: SearchSettings) -> PathState:
        device = self.device
        rng = self.rng  # unseeded searches share the stepper's stream
        if settings.seed is not None:
            rng = torch.Generator(device=device)
            rng.manual_seed(settings.seed)
        ids = self.generator._encode_prompt(prompt)
        cache = DynamicCache(config=self.backbone.config)
        with _lock_of(self.model):
            hidden = self.decoder(
                input_ids=torch.tensor([ids], device=device), cache=cache, use_cache=True
            ).last_hidden_state[0]
        states, mask, window_ids = gather_windows(
            hidden[None],
            torch.ones(1, len(ids), dtype=torch.long, device=device),
            torch.tensor([[len(ids) - 1]], device=device),
            self.window,
            torch.tensor([ids], device=device),
        )
        return PathState(
            ids=ids,
            cache=cache,
            row=0,
            span=(0, len(ids)),
            window_states=torch.where(mask[0, 0, :, None], states[0, 0], 0.0),
            window_mask=mask[0, 0],
            window_ids=window_ids[0, 0],
            next_logits=self.lm_head(hidden[-1]).float(),
            prompt_length=len(ids),
            rng=rng,
        )

    @torch.no_grad()
    def expand(self, states: Sequence[PathState], k: int, settings: SearchSettings) -> list[list[Expansion]]:
        rows = [state for state in states for _ in range(k)]
        sampled = self._sample_steps(rows, k, settings)
        return self._expansions(states, k, rows, sampled, settings)

    def _sample_steps(self, rows: list[PathState], k: int, settings: SearchSettings) -> _Sampled:
        """One step for each row (`k` rows per state), all rows in one batch, one token per forward, until every
        row has fed the token that ends its step (or `max_step_tokens`)."""
        device = self.device  # a property that walks the parameters: read once a call
        count, steps = len(rows), settings.max_step_tokens
        ends = _tokens_ending_steps(self.generator.tokenizer, settings.separator, self.vocab_size).to(
            device
        )
        is_eos = torch.zeros(self.vocab_size, dtype=torch.bool, device=device)
        is_eos[[i for i in self.generator.eos_ids if i < self.vocab_size]] = True
        ends = ends | is_eos
        lengths = torch.tensor([len(r.ids) for r in rows], device=device)
        longest = int(lengths.max())
        cache = DynamicCache(config=self.backbone.config)
        for layer in range(len(rows[0].cache.layers)):
            cache.update(
                _left_padded(rows, "keys", layer, longest),
                _left_padded(rows, "values", layer, longest),
                layer,
            )
        padded = bool((lengths < longest).any())
        # Rows of one length need no mask (the causal fast path); rows after shorter parents mask their left padding.
        mask = None
        if padded:
            mask = torch.ones(count, longest + steps, dtype=torch.long, device=device)
            mask[:, :longest] = (
                torch.arange(longest, device=device)[None] >= (longest - lengths)[:, None]
            )
        out = _Sampled(
            tokens=torch.full((count, steps), self.generator.pad_id, dtype=torch.long, device=device),
            logprobs=torch.zeros(count, steps, device=device),
            hidden=torch.zeros(count, steps, self.decoder.config.hidden_size, device=device),
            fed=torch.zeros(count, dtype=torch.long, device=device),
            by_eos=torch.zeros(count, dtype=torch.bool, device=device),
            cut=torch.ones(count, dtype=torch.bool, device=device),
            next_logits=torch.stack([r.next_logits for r in rows]),
            cache=cache,
            longest=longest,
        )
        logits, alive = out.next_logits.clone(), out.cut
        greedy = torch.zeros(count, dtype=torch.bool, device=device)
        if settings.greedy_first:
            greedy[::k] = True  # the first row of each state
        streams = _streams(rows, self.rng)
        with _lock_of(self.model):
            for t in range(steps):
                token = torch.where(greedy, logits.argmax(-1), _sample_streams(logits, settings.temperature, streams, alive))
                token = torch.where(alive, token, self.generator.pad_id)
                out.tokens[:, t] = token
                out.logprobs[:, t] = logits.log_softmax(-1).gather(-1, token[:, None])[:, 0]
                state = self.decoder(
                    input_ids=token[:, None],
                    attention_mask=None if mask is None else mask[:, : longest + t + 1],
                    position_ids=(lengths + t)[:, None],
                    cache=cache,
                    use_cache=True,
                ).last_hidden_state[:, 0]
                out.hidden[:, t] = state.to(out.hidden.dtype)
                logits = self.lm_head(state).float()
                out.fed += alive.long()
                ended = alive & ends[token]
                out.by_eos |= ended & is_eos[token]
                out.next_logits[ended] = logits[ended]
                alive &= ~ended  # in place: rows still alive at the end are `cut`
                if not alive.any():
                    break
        out.next_logits[alive] = logits[alive]
        return out

    def _expansions(
        self,
        states: Sequence[PathState],
        k: int,
        rows: list[PathState],
        sampled: _Sampled,
        settings: SearchSettings,
    ) -> list[list[Expansion]]:
        device = self.device  # a property that walks the parameters: read once a call
        tokens, logprobs, hidden, fed, cache, longest = (
            sampled.tokens,
            sampled.logprobs,
            sampled.hidden,
            sampled.fed,
            sampled.cache,
            sampled.longest,
        )
        ended_by_eos, cut, last_logits = sampled.by_eos, sampled.cut, sampled.next_logits
        count, steps = tokens.shape
        fed_counts = fed.tolist()
        step_ids = [row[:n] for row, n in zip(tokens.tolist(), fed_counts, strict=True)]
        texts = self.generator._batch_decode(step_ids)
        # A confident model samples the same step several times from one state: the head reads each distinct one once.
        first_of: dict[tuple[int, tuple[int, ...]], int] = {}
        distinct = [first_of.setdefault((r // k, tuple(ids)), r) for r, ids in enumerate(step_ids)]
        scored_rows = torch.tensor(list(first_of.values()), device=device)
        # Each row's parent window, then its step: a window ending at a token of the step reads both.
        window = torch.cat(
            [torch.stack([r.window_states for r in rows]), hidden.to(rows[0].window_states.dtype)], 1
        )
        mask = torch.cat(
            [torch.stack([r.window_mask for r in rows]), tokens.new_ones(count, steps, dtype=torch.bool)], 1
        )
        ids = torch.cat([torch.stack([r.window_ids for r in rows]), tokens], 1)
        # eos is not part of the response the critic was trained on: the score reads the token before it
        scored = fed - ended_by_eos.long()
        read = gather_windows(window, mask, torch.stack([scored, fed], 1) + self.window - 1, self.window, ids)
        positions = torch.arange(steps, device=device)[None]
        taken = positions < scored[:, None]
        sums = torch.tensor([r.logprob_sum for r in rows], device=device) + torch.where(
            taken, logprobs, 0.0
        ).sum(1)
        seen = torch.tensor([r.logprob_count for r in rows], device=device) + scored
        lows = torch.tensor(
            [r.logprob_min if r.logprob_count else float("inf") for r in rows], device=device
        )
        lows = torch.minimum(lows, torch.where(taken, logprobs, float("inf")).min(1).values)
        lows = torch.where(seen > 0, lows, 0.0)
        means = torch.where(seen > 0, sums / seen.clamp(min=1), 0.0)
        confidence = torch.stack([means, lows], 1)[:, None] if self.model.reads_confidence else None
        distinct_scores = self.model.score_at(
            read[0][scored_rows, 0],
            read[1][scored_rows, 0],
            torch.full((len(scored_rows), 1), self.window - 1, device=device),
            None if confidence is None else confidence[scored_rows],
            tokens=read[2][scored_rows, 0],
        )[:, 0].tolist()
        score_of = dict(zip(first_of.values(), distinct_scores, strict=True))
        scores = [score_of[r] for r in distinct]
        child_states, child_mask, child_ids = read[0][:, 1], read[1][:, 1], read[2][:, 1]
        child_states = torch.where(child_mask[..., None], child_states, 0.0)
        new_sums, new_counts, new_mins = sums.tolist(), seen.tolist(), lows.tolist()
        step_logprobs = torch.where(positions < fed[:, None], logprobs, 0.0).sum(1).tolist()
        by_eos, was_cut = ended_by_eos.tolist(), cut.tolist()
        out: list[list[Expansion]] = [[] for _ in states]
        for r, parent in enumerate(rows):
            n_fed = fed_counts[r]
            text = texts[r]
            cut_at = text.find(settings.separator)
            step = text if cut_at < 0 else text[:cut_at]
            if by_eos[r]:
                finish = "eos"
            elif was_cut[r]:
                finish = "length"
            elif step.lstrip().startswith(settings.final_prefix):
                finish = "answer"
            else:
                finish = "step"
            child = None
            if finish == "step":
                start = longest - len(parent.ids)
                child = PathState(
                    ids=parent.ids + step_ids[r],
                    cache=cache,
                    row=r,
                    span=(start, longest + n_fed),
                    window_states=child_states[r],
                    window_mask=child_mask[r],
                    window_ids=child_ids[r],
                    next_logits=last_logits[r],
                    prompt_length=parent.prompt_length,
                    logprob_sum=new_sums[r],
                    logprob_count=new_counts[r],
                    logprob_min=new_mins[r],
                    rng=parent.rng,
                )
            out[r // k].append(
                Expansion(
                    step=step,
                    score=scores[r],
                    logprob=step_logprobs[r],
                    tokens=n_fed,
                    final=finish != "step",
                    finish=finish,
                    state=child,
                    token_ids=step_ids[r],
                )
            )
        return out


def _left_padded(rows: Sequence[PathState], which: str, layer: int, longest: int) -> torch.Tensor:
    """One layer's keys or values of every row, left-padded with zeros to `longest` (the mask hides the padding)."""
    tensors = [getattr(row, which)[layer] for row in rows]
    return torch.cat(
        [
            torch.nn.functional.pad(t, (0, 0, longest - t.shape[2], 0)) if t.shape[2] < longest else t
            for t in tensors
        ]
    )


def _streams(rows: Sequence[PathState], default: torch.Generator) -> list[tuple[int, int, torch.Generator]]:
    """(first row, end row, generator) of each run of consecutive rows that share a random stream (one search's)."""
    out: list[tuple[int, int, torch.Generator]] = []
    for r, row in enumerate(rows):
        rng = row.rng if row.rng is not None else default
        if out and out[-1][2] is rng:
            out[-1] = (out[-1][0], r + 1, rng)
        else:
            out.append((r, r + 1, rng))
    return out


def _sample_streams(
    logits: torch.Tensor, temperature: float, streams: Sequence[tuple[int, int, torch.Generator]], alive: torch.Tensor
) -> torch.Tensor:
    """A token for each row, each search's rows from its own stream. A search whose rows have all ended draws
    nothing, as it would have if it ran alone, so its next draws do not depend on the searches beside it."""
    if len(streams) == 1:
        return _sample(logits, temperature, streams[0][2])
    tokens = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    alive_rows = alive.tolist()  # one read of the flags, not one per search
    for first, end, rng in streams:
        if any(alive_rows[first:end]):
            tokens[first:end] = _sample(logits[first:end], temperature, rng)
    return tokens


def _sample(logits: torch.Tensor, temperature: float, rng: torch.Generator) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    return torch.multinomial((logits / temperature).softmax(-1), 1, generator=rng)[:, 0]
