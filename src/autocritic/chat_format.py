"""Conversations as role/content messages, and the one way they become the text the critic scores.

Training rows (TRL's conversational form) and LangChain messages both end up as messages {"role", "content"}
with roles system, user and assistant. A conversation is scored as `prompt text + response text`:

    prompt text    the messages before the answer, rendered with add_generation_prompt=True
    response text  what rendering the whole conversation adds after the prompt text

The tokenizer's chat template renders when it has one. Without one, the dialogue layout the offline model is
trained on renders instead (`dialogue_text`; `DIALOGUE_CHAT_TEMPLATE` is the same layout as a chat template):

    <system text>
    Human: <user text>
    AI: <assistant text>
    AI:                  <- the generation prompt; the answer " <assistant text>" follows it
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autocritic.errors import DataError
from autocritic.formats import AI_PREFIX, HUMAN_PREFIX

ROLES = ("system", "user", "assistant")
SUMMARY_SOURCE = "summarization"  # additional_kwargs["lc_source"] of LangChain's SummarizationMiddleware message

# `dialogue_text` as a Jinja chat template (written into the offline tokenizer): lines joined by "\n", and with
# add_generation_prompt a last line "AI:".
DIALOGUE_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if not loop.first -%}{{ '\\n' }}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] }}"
    "{%- elif message['role'] == 'user' -%}{{ '" + HUMAN_PREFIX + ": ' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}{{ '" + AI_PREFIX + ": ' + message['content'] }}"
    "{%- else -%}{{ raise_exception('unknown role ' + message['role'] + ': use system, user or assistant') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{%- if messages -%}{{ '\\n' }}{%- endif -%}{{ '" + AI_PREFIX + ":' }}{%- endif -%}"
)


@dataclass(frozen=True)
class Message:
    role: str
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Conversation:
    """The messages of one field of a data row, and where the row is (named by errors raised when rendering)."""

    messages: tuple[Message, ...]
    where: str = field(default="", compare=False)

    def dicts(self) -> list[dict[str, str]]:
        return [m.as_dict() for m in self.messages]


# ---- checking a data row's messages ----


def check_messages(value: Any, where: str, column: str) -> tuple[Message, ...]:
    """The messages of a conversational column, or a DataError naming `where`, the column and the message."""
    if not isinstance(value, list) or not value:
        written = " (CSV cells are text: write conversations as JSON lines or parquet)" if isinstance(value, str) else ""
        raise DataError(
            f'{where}: column {column!r} must be a non-empty list of messages [{{"role": "user", "content": "..."}}, '
            f"...], got {type(value).__name__} {_short(value)}{written}."
        )
    messages = []
    for number, message in enumerate(value, start=1):
        at = f"{where}: message {number} of column {column!r}"
        if not isinstance(message, Mapping):
            raise DataError(f'{at} must be an object {{"role": ..., "content": ...}}, got {_short(message)}.')
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DataError(f"{at} has the unknown role {role!r}: use one of {list(ROLES)}.")
        if content is None:
            raise DataError(f'{at} has no "content": every message needs its text.')
        if not isinstance(content, str):
            raise DataError(f"{at}: content must be text, got {type(content).__name__} {_short(content)}.")
        messages.append(Message(role, content))
    return tuple(messages)


def check_answer(messages: Sequence[Message], where: str, column: str) -> None:
    """An answer is one or more assistant messages with text."""
    for number, message in enumerate(messages, start=1):
        if message.role != "assistant":
            raise DataError(
                f"{where}: message {number} of column {column!r} is a {message.role} message: an answer holds "
                "only assistant messages (put the conversation before it in the prompt)."
            )
        if not message.content.strip():
            raise DataError(f"{where}: message {number} of column {column!r} is empty: every answer must have text.")


def split_conversation(messages: tuple[Message, ...], where: str, column: str) -> tuple[Conversation, Conversation]:
    """A whole conversation → (its messages before the last, the last): the last must be the assistant's answer."""
    if messages[-1].role != "assistant":
        raise DataError(
            f"{where}: the last message of column {column!r} is a {messages[-1].role} message: it must be the "
            "assistant's answer that the label or score is about."
        )
    if len(messages) < 2:
        raise DataError(f"{where}: column {column!r} holds only the answer: put at least one message before it.")
    check_answer(messages[-1:], where, column)
    return Conversation(messages[:-1], where), Conversation(messages[-1:], where)


def split_shared_prompt(
    chosen: tuple[Message, ...], rejected: tuple[Message, ...], where: str
) -> tuple[Conversation, Conversation, Conversation]:
    """TRL's implicit prompt: chosen and rejected are whole conversations; their common first messages are the
    prompt, the rest of each its answer."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise DataError(
            f"{where}: chosen and rejected share no first message, so there is no prompt to compare them on. "
            "Add a prompt column, or start both conversations with the same messages."
        )
    for column, messages in (("chosen", chosen), ("rejected", rejected)):
        if shared == len(messages):
            raise DataError(
                f"{where}: {column} has no answer after the {shared} message(s) it shares with the other side: "
                "chosen and rejected must end in different assistant answers."
            )
        check_answer(messages[shared:], f"{where} (after the shared prompt)", column)
    return (
        Conversation(chosen[:shared], where),
        Conversation(chosen[shared:], where),
        Conversation(rejected[shared:], where),
    )


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


# ---- rendering ----


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def dialogue_text(
    messages: Sequence[Mapping[str, str]],
    add_generation_prompt: bool,
    human: str = HUMAN_PREFIX,
    ai: str = AI_PREFIX,
) -> str:
    """System text, "Human: ..." and "AI: ..." lines joined by "\\n"; with `add_generation_prompt`, a last "AI:"."""
    names = {"user": f"{human}: ", "assistant": f"{ai}: ", "system": ""}
    lines = [names[m["role"]] + m["content"] for m in messages]
    return "\n".join([*lines, f"{ai}:"] if add_generation_prompt else lines)


def render_messages(
    messages: Sequence[Mapping[str, str]],
    tokenizer: Any,
    add_generation_prompt: bool,
    human: str = HUMAN_PREFIX,
    ai: str = AI_PREFIX,
) -> str:
    """The tokenizer's chat template (without a leading bos the tokenizer adds itself), else `dialogue_text`.
    `tokenizer` None renders the dialogue layout."""
    if not has_chat_template(tokenizer):
        return dialogue_text(messages, add_generation_prompt, human, ai)
    if not messages:
        raise ValueError("a chat template renders at least one message")
    text = tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
    )
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and tokenizer("")["input_ids"][:1] == [tokenizer.bos_token_id]:
        text = text[len(bos) :]  # the tokenizer adds it when the text is encoded; two would differ from inference
    return text


def render_exchange(prompt: Conversation, answer: Conversation, tokenizer: Any) -> tuple[str, str]:
    """(prompt text, response text): the prompt rendered for generation, and what the whole conversation adds
    to it. A template whose whole conversation does not start with the prompt text cannot be scored that way."""
    prompt_text = render_messages(prompt.dicts(), tokenizer, add_generation_prompt=True)
    whole = render_messages(prompt.dicts() + answer.dicts(), tokenizer, add_generation_prompt=False)
    if not whole.startswith(prompt_text):
        at = next((i for i, (a, b) in enumerate(zip(prompt_text, whole, strict=False)) if a != b), len(whole))
        raise DataError(
            f"{prompt.where}: the tokenizer's chat template is not prefix-consistent: the prompt rendered with "
            f"add_generation_prompt=True reads {_short(prompt_text[at:at + 40])} at character {at}, the whole "
            f"conversation reads {_short(whole[at:at + 40])}, so no response text follows the prompt. Train with "
            "data.chat_template=none (the Human:/AI: dialogue layout), or use a tokenizer whose template renders "
            "a prompt as the start of its conversation."
        )
    response_text = without_turn_end(whole[len(prompt_text) :], tokenizer)
    if not response_text.strip():
        raise DataError(
            f"{prompt.where}: the tokenizer's chat template renders the answer as no text: nothing is left to score."
        )
    return prompt_text, response_text


def without_turn_end(text: str, tokenizer: Any) -> str:
    """The answer without what a template writes after every assistant turn: trailing whitespace and special tokens
    such as "<|im_end|>\n". Generation stops at those tokens and scores the last token it keeps, so training must
    score the same token."""
    special = sorted({t for t in getattr(tokenizer, "all_special_tokens", ()) or () if t}, key=len, reverse=True)
    while True:
        stripped = text.rstrip()
        stripped = next((stripped[: -len(t)] for t in special if stripped.endswith(t)), stripped)
        if stripped == text:
            return text
        text = stripped


# ---- LangChain messages ----


def is_summary(message: Any) -> bool:
    """The message LangChain's `SummarizationMiddleware` puts in place of the turns it summarised."""
    return message.additional_kwargs.get("lc_source") == SUMMARY_SOURCE


def summary_text(message: Any) -> str:
    """The summary alone, without the middleware's "Here is a summary of the conversation to date:" line."""
    return message.text.split("\n\n", 1)[-1]


def role_dicts(messages: Sequence[Any]) -> list[dict[str, str]]:
    """LangChain messages as {"role", "content"}: system → system, AI → assistant, any other → user. A summary
    becomes system text (context, not something the human said); tool calls and tool results are left out, as in
    the dialogue the offline model learnt."""
    from langchain_core.messages import AIMessage, SystemMessage, ToolMessage

    out = []
    for message in messages:
        if isinstance(message, ToolMessage) or (isinstance(message, AIMessage) and message.tool_calls):
            continue
        if isinstance(message, SystemMessage):
            out.append({"role": "system", "content": message.text})
        elif is_summary(message):
            out.append({"role": "system", "content": summary_text(message)})
        else:
            out.append({"role": "assistant" if isinstance(message, AIMessage) else "user", "content": message.text})
    return out
