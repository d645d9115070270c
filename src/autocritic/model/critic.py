"""CriticModel: any Hugging Face causal LM plus a critic head on its final decoder state.

    tokens ──► decoder ──► final norm ──► hidden (B, T, H) ──┬──► lm_head ──► logits   (only when asked)
                                                             ├──► head ─────► values   (B, T) (only when asked)
                                                             └─ last real token ─► head ─► score (B,)

With `head.confidence`, the head also reads the model's own confidence in the response: the mean and the minimum
log-probability of the response tokens (`lm_head` at the response positions only). A critic without it ranks
answers to one question worse than the model's likelihood does (offline default: within-problem AUROC 0.56 vs
0.71): it learns which questions are hard, not which answer is right.

A window head (`head.kind=attention`) reads the final states of the last `head.window` real tokens instead of the
last one alone; `score_at` gathers them wherever a score is read (the forward, shared-prompt batches, generation),
and with `head.tokens` the ids of the tokens they sit on.

The score is read at the last position whose attention mask is 1 and positions are derived from the mask,
so a sequence scores the same under left padding, right padding or alone (Falcon has no pad token, and
pad = eos makes "last non-pad token" pooling pick the wrong token).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from autocritic.errors import ConfigError
from autocritic.model.head import CONFIDENCE_FEATURES, CriticHead, HeadSettings
from autocritic.model.prompt_cache import SharedPromptCache, cache_through_checkpointing

# What a window head reads before a tensor's first column (a shared prompt's end): states (B, C, H), mask (B, C)
# and token ids (B, C).
Context = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class CriticOutput:
    score: torch.Tensor  # (B,) fp32, one logit per sequence
    hidden: torch.Tensor | None = None  # (B, H) final decoder state at the last real token
    values: torch.Tensor | None = None  # (B, T) per-token scores, when asked
    logits: torch.Tensor | None = None  # (B, T, V) LM logits, when asked
    confidence: torch.Tensor | None = None  # (B, 2) mean and min response log-prob, when the head reads them
    members: torch.Tensor | None = None  # (B, M) each head member's score (`score` is their mean), when asked


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of the mask (works for left, right or no padding)."""
    length = attention_mask.shape[-1]
    positions = torch.arange(length, device=attention_mask.device)
    return torch.where(attention_mask.bool(), positions, -1).max(dim=-1).values


def gather_windows(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    ends: torch.Tensor,
    window: int,
    tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The states of the `window` positions ending at each of `ends`: hidden (B, T, H), mask (B, T), ends (B, K)
    -> states (B, K, W, H) and mask (B, K, W), False where a slot falls before the sequence or on padding, and the
    ids (B, K, W) of `tokens` (B, T) at those slots when given."""
    index = ends[..., None] - (window - 1) + torch.arange(window, device=ends.device)  # (B, K, W)
    inside = index >= 0
    index = index.clamp(min=0)
    rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None, None]
    ids = None if tokens is None else tokens[rows, index]
    return hidden[rows, index], inside & attention_mask.bool()[rows, index], ids


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_positions(attention_mask: torch.Tensor, prompt_lengths: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: real tokens at or after each row's prompt length (any padding side). The very first token has
    no log-probability (nothing precedes it), so it never counts."""
    positions = positions_from_mask(attention_mask)
    return attention_mask.bool() & (positions >= prompt_lengths.to(positions.device)[:, None]) & (positions > 0)


def running_confidence(logprobs: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """(B, T, 2): mean and min of the response tokens' log-probabilities up to each position; 0 before any."""
    logprobs = logprobs.float()
    count = response.long().cumsum(-1)
    mean = torch.where(response, logprobs, 0.0).cumsum(-1) / count.clamp(min=1)
    minimum = torch.where(response, logprobs, torch.inf).cummin(-1).values
    minimum = torch.where(count > 0, minimum, 0.0)
    mean = torch.where(count > 0, mean, 0.0)
    return torch.stack([mean, minimum], dim=-1)


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under each row of logits: (..., V), (...) -> (...) fp32."""
    return logits.float().log_softmax(-1).gather(-1, tokens[..., None])[..., 0]


def token_logprobs(lm_head: nn.Module, before: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token | prefix) from the final state just before each token: (M, H), (M,) -> (M,) fp32."""
    return gather_logprobs(lm_head(before), tokens)


def confidence_features(
    lm_head: nn.Module, before: torch.Tensor, tokens: torch.Tensor, response: torch.Tensor
) -> torch.Tensor:
    """(B, T, 2) running confidence; `before[:, t]` is the state that predicted `tokens[:, t]`. Only the response
    tokens go through `lm_head` (a few per row, not the whole vocabulary at every position)."""
    logprobs = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
    if response.any():
        with torch.no_grad():  # an input of the head: the critic loss must not move the LM through it
            logprobs[response] = token_logprobs(lm_head, before[response], tokens[response])
    return running_confidence(logprobs, response)


def decoder_of(backbone: nn.Module) -> nn.Module:
    """The decoder stack without the LM head (`transformer` for Falcon, `model` for Llama...)."""
    base = getattr(backbone, "base_model", None)
    if base is None or base is backbone:
        raise TypeError(
            f"{type(backbone).__name__} exposes no base decoder (`base_model`): autocritic needs a Hugging Face "
            "causal LM (AutoModelForCausalLM)."
        )
    return base


def new_head(backbone: PreTrainedModel, settings: HeadSettings | None) -> CriticHead:
    """A head sized for `backbone`: the width of its final state and, for a head reading token ids, its vocabulary."""
    return CriticHead(backbone.config.hidden_size, settings, backbone.get_input_embeddings().num_embeddings)


class CriticModel(nn.Module):
    def __init__(self, backbone: PreTrainedModel, head: CriticHead | None = None, head_settings: HeadSettings | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else new_head(backbone, head_settings)
        self.reads_confidence = self.head.settings.confidence  # kept here: peft may wrap the head
        self.window = self.head.settings.window  # final states the head reads, ending at the scored token
        self.reads_tokens = self.head.settings.tokens  # and the ids of the tokens they sit on

    @property
    def config(self):  # peft and Lightning look for a `config` on the wrapped model
        return self.backbone.config

    def final_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final decoder state (B, T, H), after the final norm: what `lm_head` reads. No other layer is kept."""
        out = decoder_of(self.backbone)(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions_from_mask(attention_mask),
            use_cache=False,
        )
        return out.last_hidden_state

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_lengths: torch.Tensor | None = None,
        return_values: bool = False,
        return_logits: bool = False,
        return_members: bool = False,
    ) -> CriticOutput:
        """`prompt_lengths` (B,): tokens of each row's rendered prompt; required when the head reads confidence.
        `return_members`: also each head member's score (what training fits, member by member)."""
        hidden = self.final_hidden(input_ids, attention_mask)  # (B, T, H)
        if self.reads_confidence and prompt_lengths is None:
            raise ValueError(
                "this critic reads the model's confidence in the response (head.confidence=true): pass "
                "prompt_lengths, the number of tokens of each row's rendered prompt."
            )
        before = response = None
        if self.reads_confidence:
            before = torch.cat([hidden[:, :1], hidden[:, :-1]], dim=1)  # position 0 is never a response token
            response = response_positions(attention_mask, prompt_lengths)
        logits_from = hidden if return_logits else None
        return self._output(
            hidden, before, input_ids, attention_mask, response, return_values, logits_from, return_members=return_members
        )

    def _output(
        self,
        hidden: torch.Tensor,
        before: torch.Tensor | None,
        tokens: torch.Tensor,
        attention_mask: torch.Tensor,
        response: torch.Tensor | None,
        return_values: bool,
        logits_from: torch.Tensor | None,
        context: Context | None = None,
        return_members: bool = False,
    ) -> CriticOutput:
        """Score at the last real token (with the confidence features of `before` and `response` when the head reads
        them), and on request per-token values and the LM logits of `logits_from`. `context`: the states, mask and
        ids of the tokens just before `hidden`'s first column (a shared prompt's end), for a head reading a window."""
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last = last_token_index(attention_mask)
        confidence = None
        if self.reads_confidence:
            confidence = confidence_features(self.backbone.get_output_embeddings(), before, tokens, response)
        values = None
        if return_values:
            every = torch.arange(hidden.shape[1], device=hidden.device).expand(hidden.shape[0], -1)
            values = self.score_at(hidden, attention_mask, every, confidence, context, tokens)
        at_last = _at_last(confidence, rows, last)
        read = self.score_at(hidden, attention_mask, last[:, None], at_last, context, tokens, return_members)[:, 0]
        members, score = (read, read.mean(-1)) if return_members else (None, read)
        return CriticOutput(
            score=score,
            members=members,
            hidden=hidden[rows, last],
            values=values,
            logits=None if logits_from is None else self.backbone.get_output_embeddings()(logits_from),
            confidence=None if confidence is None else confidence[rows, last],
        )

    def score_at(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        ends: torch.Tensor,
        confidence: torch.Tensor | None,
        context: Context | None = None,
        tokens: torch.Tensor | None = None,
        members: bool = False,
    ) -> torch.Tensor:
        """Head scores (B, K) at positions `ends` (B, K) of hidden (B, T, H); `confidence` (B, K, 2) at those
        positions. A window head reads the states ending there, `context` (states, mask, ids) extending them
        leftwards; a head reading tokens also their ids, `tokens` (B, T). `members`: each member's (B, K, M)."""
        head = self.head.member_scores if members else self.head
        if self.window == 1:
            rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
            return head(hidden[rows, ends], confidence)
        states, mask, ids = self.windows_at(hidden, attention_mask, ends, context, tokens)
        return head(states, confidence, mask, ids)

    def windows_at(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        ends: torch.Tensor,
        context: Context | None = None,
        tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """What a window head reads at positions `ends` (B, K): states (B, K, W, H), mask (B, K, W) and, for a head
        reading tokens, the ids (B, K, W) of `tokens` (B, T); `context` (states, mask, ids) extends them leftwards."""
        if self.reads_tokens and tokens is None:
            raise ValueError("this head reads the token ids of its window (head.tokens=true): pass tokens")
        if not self.reads_tokens:
            tokens = None
        if context is not None:
            hidden = torch.cat([context[0], hidden], dim=1)
            attention_mask = torch.cat([context[1].to(attention_mask.dtype), attention_mask], dim=1)
            if tokens is not None:
                tokens = torch.cat([context[2].to(tokens.dtype), tokens], dim=1)
            ends = ends + context[0].shape[1]
        return gather_windows(hidden, attention_mask, ends, self.window, tokens)

    def hidden_after_prefixes(
        self,
        prefix_ids: torch.Tensor,
        prefix_mask: torch.Tensor,
        answer_ids: torch.Tensor,
        answer_mask: torch.Tensor,
        repeat: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, Context | None]:
        """Final states of answers that follow shared prompts: each prompt runs once with the KV cache on, and the
        answers attend to their prompt's cached keys. Prompts (G, P) are left-padded, answers (B, A) right-padded;
        answer b follows prompt `repeat[b]`. Returns the answers' states (B, A, H) and `before` (B, A, H), the state
        that predicted each answer token (the prompt's last state for the first one). Same numbers as one forward
        per prompt + answer (tests/test_feature_cache.py, tests/test_shared_prompts.py); gradients flow through
        the prompt once per prompt, with or without gradient checkpointing (`SharedPromptCache`). The third item is
        the `context` a window head reads before the answers: the prompt's last states, mask and token ids
        (B, W - 1, ...), None for a head reading one state."""
        decoder = decoder_of(self.backbone)
        parameters = inspect.signature(decoder.forward).parameters
        cache_argument = next((name for name in ("cache", "past_key_values") if name in parameters), None)
        if cache_argument is None:
            raise ConfigError(
                f"{type(decoder).__name__} takes no KV cache, and shared-prompt batches need one: set "
                "data.share_prompts=false."
            )
        cache = SharedPromptCache(config=decoder.config)
        with cache_through_checkpointing(decoder) as checkpointed:
            output = decoder(
                input_ids=prefix_ids,
                attention_mask=prefix_mask,
                position_ids=positions_from_mask(prefix_mask),
                use_cache=not checkpointed,
                **{cache_argument: cache},
            )
            if cache.get_seq_length() == 0:
                raise ConfigError(
                    f"{type(decoder).__name__} wrote nothing to its KV cache, and shared-prompt batches need it: "
                    "set data.share_prompts=false."
                )
            mask = torch.cat([prefix_mask[repeat], answer_mask], dim=1)
            hidden = decoder(
                input_ids=answer_ids,
                attention_mask=mask,
                position_ids=positions_from_mask(mask)[:, prefix_ids.shape[1] :],
                use_cache=not checkpointed,
                **{cache_argument: cache.answers_view(repeat)},
            ).last_hidden_state
        before = torch.cat([output.last_hidden_state[repeat, -1:], hidden[:, :-1]], dim=1)
        context = None
        if self.window > 1:
            tail = min(self.window - 1, prefix_ids.shape[1])
            context = (
                output.last_hidden_state[repeat, -tail:], prefix_mask[repeat, -tail:], prefix_ids[repeat, -tail:]
            )
        return hidden, before, context

    def forward_shared(
        self,
        prefix_ids: torch.Tensor,
        prefix_mask: torch.Tensor,
        answer_ids: torch.Tensor,
        answer_mask: torch.Tensor,
        repeat: torch.Tensor,
        response: torch.Tensor,
        return_values: bool = False,
        return_logits: bool = False,
        return_members: bool = False,
    ) -> CriticOutput:
        """`forward` for rows that share prompts (see `hidden_after_prefixes`): `response` (B, A) marks each
        answer's response tokens. `values` and `logits` cover the answer columns only; `logits[:, t]` predicts
        `answer_ids[:, t]` (already shifted, unlike `forward`'s)."""
        hidden, before, context = self.hidden_after_prefixes(prefix_ids, prefix_mask, answer_ids, answer_mask, repeat)
        logits_from = before if return_logits else None
        return self._output(
            hidden, before, answer_ids, answer_mask, response, return_values, logits_from, context, return_members
        )

    def score_features(self, features: torch.Tensor, members: bool = False) -> torch.Tensor:
        """Score cached features (the frozen phase), laid out as `join_features` writes them: (N,), or with
        `members` each head member's score (N, M)."""
        states, mask, ids, confidence = split_features(
            features, self.backbone.config.hidden_size, self.window, self.reads_tokens
        )
        head = self.head.member_scores if members else self.head
        return head(states, confidence if self.reads_confidence else None, mask, ids)


def feature_width(hidden_size: int, window: int, tokens: bool = False) -> int:
    """Cached features per sequence: the final state(s), a window's mask (and token ids), the confidence features."""
    return window * hidden_size + (window if window > 1 else 0) + (window if tokens else 0) + CONFIDENCE_FEATURES


def join_features(
    states: torch.Tensor, mask: torch.Tensor | None, confidence: torch.Tensor, ids: torch.Tensor | None = None
) -> torch.Tensor:
    """(N, H) or a window (N, W, H) with its mask (N, W) and optionally its token ids (N, W), and the confidence
    (N, 2) -> (N, feature_width). Ids are stored as fp32: exact up to 2^24."""
    parts = [states.flatten(1).float()] + [x.float() for x in (mask, ids) if x is not None] + [confidence.float()]
    return torch.cat(parts, dim=-1)


def split_features(
    features: torch.Tensor, hidden_size: int, window: int, tokens: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """The inverse of `join_features`, over any leading dimensions: states, mask, ids, confidence."""
    width = feature_width(hidden_size, window, tokens)
    if features.shape[-1] != width:
        raise ValueError(
            f"cached features of width {features.shape[-1]} do not fit a head reading {window} state(s) of "
            f"size {hidden_size}{' and their token ids' if tokens else ''} ({width})"
        )
    lead = features.shape[:-1]
    confidence = features[..., -CONFIDENCE_FEATURES:]
    if window == 1:
        return features[..., :hidden_size], None, None, confidence
    start = window * hidden_size
    states = features[..., :start].reshape(*lead, window, hidden_size)
    mask = features[..., start : start + window] > 0.5
    ids = features[..., start + window : start + 2 * window].round().long() if tokens else None
    return states, mask, ids, confidence


def _at_last(confidence: torch.Tensor | None, rows: torch.Tensor, last: torch.Tensor) -> torch.Tensor | None:
    return None if confidence is None else confidence[rows, last][:, None]
