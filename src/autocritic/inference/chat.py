"""CriticChatModel: a LangChain chat model over the critic's backbone, with ReAct tool calling.

Without tools, messages are rendered by the tokenizer's chat template (`autocritic.chat_format`, as training
renders conversational rows) or, when it has none, become the dialogue format the offline model was trained on
(the offline tokenizer's chat template writes the same text):

    <system>                           (only when there is a system message)
    Human: My name is Ada.
    AI: Nice to meet you, Ada.
    Human: What is my name?
    AI:                                ← the model writes " Ada" and stops at "\\n"

With `bind_tools`, the last human message becomes a ReAct prompt (`autocritic.formats.REACT_TEMPLATE`, as LangChain's
classic zero-shot agent writes it) and each tool call / tool result after it becomes a scratchpad step:

    Answer the question with a tool.
    Tools: Calculator: evaluates arithmetic such as (4.5*2.1)**2
    Tool names: Calculator

    Question: What is 2+3?
    Thought: I should use the calculator.      ← AIMessage content (the generated text), tool_calls parsed from it
    Action: Calculator
    Action Input: 2+3
    Observation: 5                             ← ToolMessage
    Thought: I now know the final answer.      ← generated; "Final Answer: x" becomes AIMessage(content="x")
    Final Answer: 5

Earlier turns (before the last human message) are rendered as "Human:/AI:" lines above the ReAct prompt. The
critic score of every reply is in `AIMessage.response_metadata["critic_score"]`. So
`langchain.agents.create_agent(model=CriticChatModel(...), tools=[calculator_tool(CALCULATOR_DESCRIPTION)])`
runs the full tool loop with a local model (ChatHuggingFace never emits tool calls for one).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.json import parse_partial_json
from pydantic import Field

from autocritic.chat_format import (
    DIALOGUE_CHAT_TEMPLATE,
    dialogue_text,
    has_chat_template,
    is_summary,
    render_messages,
    role_dicts,
    summary_text,
)
from autocritic.formats import AI_PREFIX, DIALOGUE_STOP, HUMAN_PREFIX, REACT_STOP, REACT_TEMPLATE
from autocritic.inference.background import iterate_in_thread
from autocritic.inference.generation import GenerationSettings, Sample, TextGenerator
from autocritic.inference.llm import GenerationFields, generation_info, prompt_tokens, usage_of

_ACTION = re.compile(r"Action\s*\d*\s*:[\s]*(.*?)[\s]*Action\s*\d*\s*Input\s*\d*\s*:[ \t]*(.*)", re.DOTALL)
_FINAL = re.compile(r"Final Answer\s*:", re.IGNORECASE)


@dataclass(frozen=True)
class ToolSpec:
    """A bound tool as the prompt shows it: name, description and JSON-schema parameters."""

    name: str
    description: str
    parameters: dict

    @classmethod
    def of(cls, tool: dict | type | Callable | BaseTool) -> ToolSpec:
        function = convert_to_openai_tool(tool)["function"]
        return cls(function["name"], function.get("description", ""), function.get("parameters", {}))

    @property
    def arg_names(self) -> list[str]:
        return list(self.parameters.get("properties", {}))

    def args_from(self, tool_input: str, strict: bool = False) -> dict[str, Any]:
        """ReAct gives one string: the single argument (typed as the schema says: `{"input": 3}` from "3"), or a
        JSON object for a tool with several; a tool without arguments ignores it. Lenient (`strict=False`): what
        does not convert is passed on as text, for the tool to report. Strict: a ValueError says what is wrong."""
        names = self.arg_names
        if not names:
            return {}
        parsed = _json_or_none(tool_input)
        if len(names) == 1:
            if isinstance(parsed, dict) and parsed and set(parsed) <= set(names):  # {"input": 3} written out
                return parsed
            try:
                return {names[0]: _typed(tool_input, self.parameters["properties"][names[0]])}
            except ValueError:
                if strict:
                    raise
                return {names[0]: tool_input}
        if isinstance(parsed, dict):
            return parsed
        if strict:
            raise ValueError(f"expected a JSON object with {', '.join(names)}, got {tool_input!r}")
        required = self.parameters.get("required") or names
        return {required[0]: tool_input}

    def input_text(self, args: dict[str, Any]) -> str:
        names = self.arg_names
        if len(names) == 1 and names[0] in args:
            return str(args[names[0]])
        return json.dumps(args)

    def render(self) -> str:
        if len(self.arg_names) > 1:
            return f"{self.name}: {self.description} Input: a JSON object with {', '.join(self.arg_names)}"
        return f"{self.name}: {self.description}"


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _typed(text: str, schema: dict) -> Any:
    """`text` as the JSON-schema type of one argument; a string (or an untyped argument) stays as written."""
    kind = schema.get("type")
    if kind not in _JSON_TYPES:
        return text
    value = _json_or_none(text)
    if kind == "integer" and isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) and kind != "boolean" or not isinstance(value, _JSON_TYPES[kind]):
        raise ValueError(f"expected {kind}, got {text!r}")
    return value


def react_tools_renderer(tools: Sequence[BaseTool]) -> str:
    """ "name: description" lines, as the offline traces show tools. Pass it as `tools_renderer=` to
    langchain_classic's `create_react_agent`: its default writes "Calculator(expr: 'str') -> 'str' - ..."."""
    return "\n".join(ToolSpec.of(t).render() for t in tools)


# ---- messages → prompt text ----


def closes_turns_with_a_special_token(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template writes a special token after an assistant's text."""
    if not has_chat_template(tokenizer) or tokenizer.chat_template == DIALOGUE_CHAT_TEMPLATE:
        return False
    marker = "\u2063reply\u2063"  # text no template writes itself
    probe = [{"role": "user", "content": "question"}, {"role": "assistant", "content": marker}]
    try:
        after = render_messages(probe, tokenizer, False).rsplit(marker, 1)[-1]
    except Exception:  # a template that refuses this probe: keep the line stop
        return False
    return any(token and token in after for token in getattr(tokenizer, "all_special_tokens", ()) or ())


def _text(message: BaseMessage) -> str:
    return message.text  # the text blocks of a content list, joined


def render_dialogue(messages: Sequence[BaseMessage], human: str = HUMAN_PREFIX, ai: str = AI_PREFIX) -> str:
    """System text first, then "Human: ..." / "AI: ..." lines, ending with "AI:" for the model to continue."""
    return dialogue_text(role_dicts(messages), True, human, ai)


def _line(message: BaseMessage, human: str, ai: str) -> str:
    if isinstance(message, SystemMessage):
        return _text(message)
    if is_summary(message):
        # Context, not something the human said: the layout ConversationSummaryMemory gives the same model.
        return summary_text(message)
    return f"{ai if isinstance(message, AIMessage) else human}: {_text(message)}"


def _turns(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """Messages worth a dialogue line: tool calls and tool results are left out."""
    return [
        m
        for m in messages
        if not isinstance(m, ToolMessage) and not (isinstance(m, AIMessage) and m.tool_calls)
    ]


def render_react(
    messages: Sequence[BaseMessage], tools: Sequence[ToolSpec], human: str = HUMAN_PREFIX, ai: str = AI_PREFIX
) -> str:
    """The ReAct prompt for the last human message, with the tool calls and results after it as scratchpad."""
    last_human = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=None)
    before = messages if last_human is None else messages[:last_human]
    after = [] if last_human is None else messages[last_human + 1 :]
    by_name = {t.name: t for t in tools}
    logs: dict[str, str] = {}  # tool_call_id -> the text that asked for it
    scratchpad = ""
    for message in after:
        if isinstance(message, AIMessage):
            for index, call in enumerate(message.tool_calls):
                logs[call["id"]] = _action_log(message, call, index, by_name.get(call["name"]))
        elif isinstance(message, ToolMessage) and message.tool_call_id in logs:
            scratchpad += logs.pop(message.tool_call_id) + f"\nObservation: {_text(message)}\nThought: "
    systems = [_text(m) for m in before if isinstance(m, SystemMessage)]
    history = [m for m in _turns(before) if not isinstance(m, SystemMessage)]
    react = REACT_TEMPLATE.format(
        tools="\n".join(t.render() for t in tools),
        tool_names=", ".join(t.name for t in tools),
        input="" if last_human is None else _text(messages[last_human]),
        agent_scratchpad=scratchpad,
    )
    header = [*systems, "\n".join(_line(m, human, ai) for m in history)]
    return "\n\n".join([*(h for h in header if h), react])


def _action_log(message: AIMessage, call: dict, index: int, spec: ToolSpec | None) -> str:
    """The message's own text when it is the ReAct text that produced the call (byte-identical transcript);
    otherwise (another model's tool call, or a second call in one message) a synthesized step."""
    tool_input = spec.input_text(call["args"]) if spec else json.dumps(call["args"])
    content = _text(message)
    if index == 0 and _ACTION.search(content):
        return content
    thought = content.strip() if index == 0 and content.strip() else f"I should use {call['name']}."
    return f" {thought}\nAction: {call['name']}\nAction Input: {tool_input}"


# ---- generated text → AIMessage ----


def parse_react(text: str, tools: Sequence[ToolSpec], strict: bool = False) -> AIMessage:
    """ "Final Answer: x" → AIMessage(content="x"); "Action: T / Action Input: y" → a tool call of T with y as its
    input (content: the whole text, the scratchpad log); anything else → AIMessage(content=text) without calls.

    `strict` (a forced tool choice): the text must be a call. What is not (no Action, an unknown tool, an input
    that does not fit the tool's arguments) becomes an `invalid_tool_calls` entry saying why, as LangChain reports
    a call whose arguments do not parse."""
    action, final = _ACTION.search(text), _FINAL.search(text)
    if not strict and final and (not action or final.start() < action.start()):
        return AIMessage(content=text[final.end() :].strip())
    if not action:
        if strict:
            return _invalid(text, None, text, "the model wrote no Action / Action Input")
        return AIMessage(content=text.strip(), response_metadata={"react_error": "no Action or Final Answer"})
    name = action.group(1).strip()
    spec = next((t for t in tools if t.name == name), None) or next(
        (t for t in tools if t.name.lower() == name.lower()), None
    )
    tool_input = action.group(2).split("\n", 1)[0].strip().strip('"')
    if spec is None:
        if strict:
            known = [t.name for t in tools]
            return _invalid(text, name, tool_input, f"unknown tool {name!r}: expected one of {known}")
        return AIMessage(content=text.strip(), response_metadata={"react_error": f"unknown tool {name!r}"})
    try:
        args = spec.args_from(tool_input, strict=strict)
    except ValueError as error:
        return _invalid(text, spec.name, tool_input, f"{spec.name}: {error}")
    call = tool_call(name=spec.name, args=args, id=_call_id())
    return AIMessage(content=text, tool_calls=[call])


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:16]}"


def _invalid(text: str, name: str | None, args: str, error: str) -> AIMessage:
    return AIMessage(
        content=text,
        invalid_tool_calls=[invalid_tool_call(name=name, args=args, id=_call_id(), error=error)],
        response_metadata={"react_error": error},
    )


# ---- tool_choice ----

ANY_TOOL = "any"


def forced_choice(tool_choice: Any, specs: Sequence[ToolSpec]) -> str | None:
    """LangChain's `tool_choice` as this model can honour it: None (the model decides), "none" (tools left out),
    "any" (a call is forced, the model names the tool) or the name of the tool to call. A choice naming no bound
    tool is a ValueError."""
    if tool_choice in (None, "auto", False):
        return None
    if tool_choice == "none":
        return "none"
    if tool_choice in ("any", "required", True):
        if not specs:
            raise ValueError(f"tool_choice={tool_choice!r} forces a tool call, but no tools are bound")
        return specs[0].name if len(specs) == 1 else ANY_TOOL
    name = tool_choice
    # {"type": "function", "function": {"name": n}} (OpenAI) or {"type": "tool", "name": n} (Anthropic)
    if isinstance(tool_choice, dict):
        name = tool_choice.get("function", {}).get("name") or tool_choice.get("name")
    if name not in [t.name for t in specs]:
        known = [t.name for t in specs]
        raise ValueError(f"tool_choice={tool_choice!r} names no bound tool: the tools are {known}")
    return name


def forced_prefix(prompt: str, choice: str) -> str:
    """What is written for the model after the ReAct prompt when a call is forced: the Thought and the Action,
    up to where the model writes the tool's input (or, under "any", the tool's name)."""
    # The first Thought follows "Thought:", later ones (after an Observation) "Thought: ".
    space = "" if prompt.endswith(" ") else " "
    if choice == ANY_TOOL:
        return f"{space}I should use a tool.\nAction:"
    return f"{space}I should use {choice}.\nAction: {choice}\nAction Input:"


# ---- what streams live ----


def live_text(text: str, specs: Sequence[ToolSpec], forced: str | None) -> str | None:
    """The part of a partial generation that will surely be the reply's content (before stripping), or None when
    that is not known yet: the whole text of a dialogue reply; the text after "Final Answer:" of a ReAct step with
    no Action before it; nothing of a tool call (its content is the whole log, sent with the call at the end)."""
    if not specs:
        return text
    if forced:
        return None
    final = _FINAL.search(text)
    if final and "Action" not in text[: final.start()]:
        return text[final.end() :]
    return None


@dataclass
class _Call:
    """One model call, planned: which generator, the prompt (with a forced call's prefix), the settings."""

    generator: TextGenerator
    prompt: str
    prefix: str  # written for the model after the prompt (a forced call), part of each reply's text
    settings: GenerationSettings
    specs: list[ToolSpec]
    forced: str | None  # None, ANY_TOOL or a tool name
    model_name: str

    def message(self, sample: Sample) -> AIMessage:
        if not self.specs:
            return AIMessage(content=sample.text.strip())
        return parse_react(self.prefix + sample.text, self.specs, strict=self.forced is not None)

    def metadata(self, sample: Sample) -> dict[str, Any]:
        return {**generation_info(sample), "model_name": self.model_name}

    def usage(self, sample: Sample) -> UsageMetadata | None:
        return usage_of(prompt_tokens(self.generator, self.prompt), sample)


class CriticChatModel(GenerationFields, BaseChatModel):
    """A LangChain chat model over a critic export; `bind_tools` switches to the ReAct transcript.

    Every reply carries the critic's score of itself: `response_metadata["critic_score"]`, with `finish_reason`
    and `model_name`, and `usage_metadata` (input, output and total tokens). `stream`/`astream` yield the reply
    token by token (a tool call comes whole, with the last chunk); async calls run the model in a worker thread.

    Args:
        model: an export directory (`<run dir>/export`) or a hub id holding one; loaded at first use and shared
            by every adapter of the same model, device and dtype.
        generator: instead of `model`, any `TextGenerator` (a `CriticGenerator`, or a scripted one in tests).
        temperature: 0 or unset is greedy, > 0 samples (`do_sample` overrides: see `GenerationFields`).
        max_tokens: new tokens per reply (also `max_new_tokens`). stop: extra stop strings.
        streaming: make `invoke` stream internally (callbacks see each token).

    `bind_tools(tools, tool_choice=...)`: "none" leaves the tools out; "any"/"required" or a tool's name force a
    call: the prompt is continued with "I should use X.\\nAction: X\\nAction Input:" for the model to write the
    input (under "any" with several tools, the model writes the tool's name too), and the reply is parsed strictly:
    what is not a valid call comes back in `invalid_tool_calls`. So `with_structured_output(Schema)` works: the
    schema is a tool whose call is forced, and LangChain parses its arguments.

    Example:
        chat = CriticChatModel(model="outputs/finetune/run/export", max_tokens=48)
        agent = create_agent(model=chat, tools=[calculator_tool(CALCULATOR_DESCRIPTION)])
        reply = chat.invoke("What is my name?")
        reply.response_metadata["critic_score"], reply.usage_metadata["output_tokens"]
    """

    dialogue_stop: list[str] = Field(default_factory=lambda: list(DIALOGUE_STOP))
    react_stop: list[str] = Field(default_factory=lambda: list(REACT_STOP))
    human_prefix: str = HUMAN_PREFIX
    ai_prefix: str = AI_PREFIX

    @classmethod
    def from_export(cls, path: str | Path, batch_size: int = 16, **fields: Any) -> CriticChatModel:
        """The same as `CriticChatModel(model=path, ...)`: the export loads at first use."""
        return cls(model=str(path), batch_size=batch_size, **fields)

    @property
    def _llm_type(self) -> str:
        return "autocritic-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self.settings_params

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | dict | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Tools are rendered into the ReAct prompt. `tool_choice`: None/"auto" (the model decides), "none" (tools
        left out), "any"/"required"/True (a call is forced) or a tool's name (that tool's call is forced)."""
        specs = [convert_to_openai_tool(t) for t in tools]
        forced_choice(tool_choice, [ToolSpec.of(t) for t in specs])  # a choice naming no tool fails here
        return self.bind(tools=specs, tool_choice=tool_choice, **kwargs)

    def turn_stop(self, generator: TextGenerator) -> list[str]:
        """What ends a reply: the dialogue layout's line end (`dialogue_stop`), or nothing for a chat template that
        closes an assistant turn with a special token (`<|im_end|>`, `<|eot_id|>`...): that token ends generation
        as an eos, and a reply may span lines."""
        tokenizer = getattr(generator, "tokenizer", None)
        return [] if closes_turns_with_a_special_token(tokenizer) else self.dialogue_stop

    def prompt_for(
        self, messages: Sequence[BaseMessage], tools: Sequence[ToolSpec] = (), generator: TextGenerator | None = None
    ) -> str:
        """With tools, the ReAct prompt; else the chat template of the generator's tokenizer when it has one (what
        training renders conversational rows with), or the dialogue (`render_dialogue`, where the prefixes apply).
        `generator`: the one of this call (default: this adapter's own, loaded at first use)."""
        if tools:
            return render_react(messages, tools, self.human_prefix, self.ai_prefix)
        tokenizer = getattr(generator or self.active_generator(), "tokenizer", None)
        return render_messages(role_dicts(messages), tokenizer, True, self.human_prefix, self.ai_prefix)

    def _plan(
        self,
        messages: Sequence[BaseMessage],
        stop: list[str] | None,
        tools: Sequence[dict] | None,
        tool_choice: Any,
        kwargs: dict[str, Any],
    ) -> _Call:
        specs = [ToolSpec.of(t) for t in tools or ()]
        forced = forced_choice(tool_choice, specs)
        if forced == "none":
            specs, forced = [], None
        model = kwargs.pop("model", None)
        generator = self.active_generator(model)
        format_stop = self.react_stop if specs else self.turn_stop(generator)
        settings = self.generation_settings([*format_stop, *(stop or [])], **kwargs)
        prompt = self.prompt_for(messages, specs, generator)
        prefix = forced_prefix(prompt, forced) if forced else ""
        return _Call(generator, prompt + prefix, prefix, settings, specs, forced, self.label(model))

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        tools: Sequence[dict] | None = None,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._plan(messages, stop, tools, tool_choice, kwargs)
        [samples] = call.generator.generate([call.prompt], call.settings)
        generations = []
        for sample in samples:
            message = call.message(sample)
            info = call.metadata(sample)
            message.response_metadata = {**message.response_metadata, **info}
            message.usage_metadata = call.usage(sample)
            generations.append(ChatGeneration(message=message, generation_info=info))
        return ChatResult(generations=generations, llm_output={"model_name": call.model_name})

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        tools: Sequence[dict] | None = None,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """The reply's content token by token as it becomes certain (see `live_text`); the last chunk carries what
        is left of it, the tool call (as `tool_call_chunks`), the critic score and the usage."""
        call = self._plan(messages, stop, tools, tool_choice, kwargs)
        if call.settings.n != 1:
            raise ValueError(f"streaming gives one reply: n={call.settings.n} needs invoke/generate")
        text, sent, sample = "", "", None
        for item in call.generator.stream(call.prompt, call.settings):
            if isinstance(item, Sample):
                sample = item
                break
            text += item
            live = live_text(call.prefix + text, call.specs, call.forced)
            ready = "" if live is None else live.strip()  # trailing spaces wait: they may end the reply
            if len(ready) > len(sent):
                yield ChatGenerationChunk(message=AIMessageChunk(content=ready[len(sent) :]))
                sent = ready
        if sample is None:
            raise RuntimeError("the generator's stream ended without its final Sample")
        message = call.message(sample)
        content = message.text
        if not content.startswith(sent):  # cannot happen while live_text agrees with parse_react
            raise RuntimeError(f"streamed {sent!r}, but the reply is {content!r}")
        info = call.metadata(sample)
        chunks = [_chunk_of(c, i) for i, c in enumerate(message.tool_calls)]
        chunks += [_invalid_chunk_of(c, i + len(chunks)) for i, c in enumerate(message.invalid_tool_calls)]
        last = AIMessageChunk(
            content=content[len(sent) :],
            tool_call_chunks=chunks,
            response_metadata={**message.response_metadata, **info},
            usage_metadata=call.usage(sample),
            chunk_position="last",
        )
        yield ChatGenerationChunk(message=last, generation_info=info)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        """`_stream` in a worker thread, its chunks handed over through an asyncio queue."""
        async for chunk in iterate_in_thread(lambda: self._stream(messages, stop, None, **kwargs)):
            yield chunk


def _chunk_of(call: dict, index: int) -> dict:
    return tool_call_chunk(name=call["name"], args=json.dumps(call["args"]), id=call["id"], index=index)


def _invalid_chunk_of(call: dict, index: int) -> dict:
    """Its raw text as args, unless LangChain's lenient parse of chunks would read that as a valid call."""
    args = call["args"] or ""
    try:
        readable = isinstance(parse_partial_json(args), dict)
    except ValueError:
        readable = False
    args = json.dumps(args) if readable else args
    return tool_call_chunk(name=call["name"], args=args, id=call["id"], index=index)
