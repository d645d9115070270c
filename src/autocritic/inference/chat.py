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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

from autocritic.chat_format import dialogue_text, is_summary, render_messages, role_dicts, summary_text
from autocritic.formats import AI_PREFIX, DIALOGUE_STOP, HUMAN_PREFIX, REACT_STOP, REACT_TEMPLATE
from autocritic.inference.generation import CriticGenerator, TextGenerator
from autocritic.inference.llm import GenerationFields, generation_info

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

    def args_from(self, tool_input: str) -> dict[str, Any]:
        """ReAct gives one string: the single argument, or a JSON object for a tool with several."""
        names = self.arg_names
        if len(names) == 1:
            return {names[0]: tool_input}
        try:
            parsed = json.loads(tool_input)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed
        required = self.parameters.get("required") or names
        return {required[0]: tool_input} if required else {}

    def input_text(self, args: dict[str, Any]) -> str:
        names = self.arg_names
        if len(names) == 1 and names[0] in args:
            return str(args[names[0]])
        return json.dumps(args)

    def render(self) -> str:
        if len(self.arg_names) > 1:
            return f"{self.name}: {self.description} Input: a JSON object with {', '.join(self.arg_names)}"
        return f"{self.name}: {self.description}"


def react_tools_renderer(tools: Sequence[BaseTool]) -> str:
    """ "name: description" lines, as the offline traces show tools. Pass it as `tools_renderer=` to
    langchain_classic's `create_react_agent`: its default writes "Calculator(expr: 'str') -> 'str' - ..."."""
    return "\n".join(ToolSpec.of(t).render() for t in tools)


# ---- messages → prompt text ----


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


def parse_react(text: str, tools: Sequence[ToolSpec]) -> AIMessage:
    """ "Final Answer: x" → AIMessage(content="x"); "Action: T / Action Input: y" → a tool call of T with y as its
    input (content: the whole text, the scratchpad log); anything else → AIMessage(content=text) without calls."""
    action, final = _ACTION.search(text), _FINAL.search(text)
    if final and (not action or final.start() < action.start()):
        return AIMessage(content=text[final.end() :].strip())
    if not action:
        return AIMessage(content=text.strip(), response_metadata={"react_error": "no Action or Final Answer"})
    name = action.group(1).strip()
    spec = next((t for t in tools if t.name == name), None) or next(
        (t for t in tools if t.name.lower() == name.lower()), None
    )
    if spec is None:
        return AIMessage(content=text.strip(), response_metadata={"react_error": f"unknown tool {name!r}"})
    tool_input = action.group(2).split("\n", 1)[0].strip().strip('"')
    call = {
        "name": spec.name,
        "args": spec.args_from(tool_input),
        "id": f"call_{uuid.uuid4().hex[:16]}",
        "type": "tool_call",
    }
    return AIMessage(content=text, tool_calls=[call])


class CriticChatModel(GenerationFields, BaseChatModel):
    """A chat model over a `CriticGenerator`; `bind_tools` switches to the ReAct transcript."""

    dialogue_stop: list[str] = Field(default_factory=lambda: list(DIALOGUE_STOP))
    react_stop: list[str] = Field(default_factory=lambda: list(REACT_STOP))
    human_prefix: str = HUMAN_PREFIX
    ai_prefix: str = AI_PREFIX

    @classmethod
    def from_export(cls, path: str | Path, batch_size: int = 16, **fields: Any) -> CriticChatModel:
        return cls(generator=CriticGenerator.from_export(path, batch_size=batch_size), **fields)

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
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Tools are rendered into the prompt; `tool_choice="none"` leaves them out. Other choices cannot be
        enforced on a text model and are ignored."""
        specs = [convert_to_openai_tool(t) for t in tools]
        return self.bind(tools=specs, tool_choice=tool_choice, **kwargs)

    def prompt_for(self, messages: Sequence[BaseMessage], tools: Sequence[ToolSpec] = ()) -> str:
        """With tools, the ReAct prompt; else the generator's tokenizer's chat template when it has one (what
        training renders conversational rows with), or the dialogue (`render_dialogue`, where the prefixes apply)."""
        if tools:
            return render_react(messages, tools, self.human_prefix, self.ai_prefix)
        tokenizer = getattr(self.generator, "tokenizer", None)
        return render_messages(role_dicts(messages), tokenizer, True, self.human_prefix, self.ai_prefix)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        tools: Sequence[dict] | None = None,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        specs = [ToolSpec.of(t) for t in tools or ()] if tool_choice != "none" else []
        format_stop = self.react_stop if specs else self.dialogue_stop
        settings = self.generation_settings([*format_stop, *(stop or [])], **kwargs)
        generator: TextGenerator = self.generator
        [samples] = generator.generate([self.prompt_for(messages, specs)], settings)
        generations = []
        for sample in samples:
            message = parse_react(sample.text, specs) if specs else AIMessage(content=sample.text.strip())
            info = generation_info(sample)
            message.response_metadata = {**message.response_metadata, **info}
            generations.append(ChatGeneration(message=message, generation_info=info))
        return ChatResult(generations=generations)
