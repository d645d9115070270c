"""CriticChatModel: dialogue and ReAct transcripts, ReAct parsing into tool calls, and full agent loops
(LangGraph `create_agent`, classic `create_react_agent` + `AgentExecutor`) driven by scripted replies."""

from __future__ import annotations

import pytest
from helpers import ScriptedGenerator
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from pydantic import BaseModel

from autocritic.formats import CALCULATOR_DESCRIPTION, REACT_TEMPLATE
from autocritic.inference.calculator import calculator_tool
from autocritic.inference.chat import (
    CriticChatModel,
    ToolSpec,
    parse_react,
    react_tools_renderer,
    render_dialogue,
    render_react,
)
from autocritic.inference.llm import CriticLLM
from autocritic.offline.tasks import dialogue_problem, prompt_of, react_action, react_finish, react_prompt

QUESTION = "What is 2+3?"
ACTION = "Thought: I should use the calculator.\nAction: Calculator\nAction Input: 2+3"


@pytest.fixture
def calculator():
    return calculator_tool(CALCULATOR_DESCRIPTION)


@pytest.fixture
def specs(calculator):
    return [ToolSpec.of(calculator)]


# ---- parsing ----


def test_parse_action_into_a_tool_call(specs):
    message = parse_react(react_action("(2+3)*4") + "\nObservation: 20", specs)
    [call] = message.tool_calls
    assert call["name"] == "Calculator" and call["args"] == {"__arg1": "(2+3)*4"}
    assert message.content.startswith(" I should use the calculator.")  # the log, rendered back verbatim


def test_parse_final_answer_into_content(specs):
    message = parse_react(react_finish("5"), specs)
    assert message.content == "5" and message.tool_calls == []
    # A final answer written before an action wins (the model answered, then rambled on).
    assert (
        parse_react("Final Answer: 7\nAction: Calculator\nAction Input: 1", specs).content
        == "7\nAction: Calculator\nAction Input: 1"
    )


@pytest.mark.parametrize(
    "text, error",
    [
        ("I think the answer is five.", "no Action"),
        ("Action: Search\nAction Input: weather", "unknown tool"),
        ("Action: Calculator", "no Action"),  # no Action Input
    ],
)
def test_malformed_text_becomes_content_without_tool_calls(specs, text, error):
    message = parse_react(text, specs)
    assert message.content == text and message.tool_calls == []
    assert error in message.response_metadata["react_error"]


def test_multi_argument_tools_take_json():
    from langchain_core.tools import tool

    @tool
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    [spec] = [ToolSpec.of(add)]
    assert spec.render() == "add: Add two numbers. Input: a JSON object with a, b"
    assert parse_react('Action: add\nAction Input: {"a": 2, "b": 3}', [spec]).tool_calls[0]["args"] == {
        "a": 2,
        "b": 3,
    }


# ---- rendering: byte-identical to the offline training text ----


def test_react_transcript_matches_the_training_traces(specs):
    messages = [HumanMessage(QUESTION)]
    assert render_react(messages, specs) == react_prompt(QUESTION)
    call = {"name": "Calculator", "args": {"__arg1": "2+3"}, "id": "c1", "type": "tool_call"}
    messages += [AIMessage(react_action("2+3"), tool_calls=[call]), ToolMessage("5", tool_call_id="c1")]
    assert render_react(messages, specs) == react_prompt(
        QUESTION, react_action("2+3") + "\nObservation: 5\nThought: "
    )


def test_foreign_tool_calls_history_and_system_are_rendered(specs):
    call = {"name": "Calculator", "args": {"__arg1": "2+3"}, "id": "c1", "type": "tool_call"}
    messages = [
        SystemMessage("Be brief."),
        HumanMessage("hi"),
        AIMessage("Hello."),
        HumanMessage(QUESTION),
        AIMessage("", tool_calls=[call]),  # another model's call: no ReAct text to reuse
        ToolMessage("5", tool_call_id="c1"),
    ]
    prompt = render_react(messages, specs)
    assert prompt.startswith("Be brief.\n\nHuman: hi\nAI: Hello.\n\n" + REACT_TEMPLATE.split("{tools}")[0])
    assert prompt.endswith(
        "Thought: I should use Calculator.\nAction: Calculator\nAction Input: 2+3\nObservation: 5\nThought: "
    )


def test_dialogue_transcript_matches_the_training_format():
    import random

    problem = dialogue_problem(random.Random(0))
    turns = [line.split(": ", 1) for line in problem.question.split("\n")]
    messages = [HumanMessage(text) if who == "Human" else AIMessage(text) for who, text in turns]
    assert render_dialogue(messages) == prompt_of(problem)


def test_a_summarization_message_is_context_not_a_human_turn():
    summary = HumanMessage(
        "Here is a summary of the conversation to date:\n\nMy name is Ada.",
        additional_kwargs={"lc_source": "summarization"},
    )
    messages = [summary, HumanMessage("What is my name?")]
    assert render_dialogue(messages) == "My name is Ada.\nHuman: What is my name?\nAI:"
    same_words = HumanMessage(summary.text)  # the same text from the human stays the human's turn
    assert render_dialogue([same_words]).startswith("Human: Here is a summary")


# ---- the chat model ----


def test_chat_model_stops_and_reports_the_critic_score():
    generator = ScriptedGenerator([" Ada\nHuman: and mine?"], score=1.5)
    reply = CriticChatModel(generator=generator).invoke(
        [HumanMessage("My name is Ada."), AIMessage("Noted."), HumanMessage("What is my name?")]
    )
    assert reply.content == "Ada"
    assert (
        reply.response_metadata["critic_score"] == 1.5 and reply.response_metadata["finish_reason"] == "stop"
    )
    assert generator.prompts == ["Human: My name is Ada.\nAI: Noted.\nHuman: What is my name?\nAI:"]


def test_chat_model_scores_equal_the_generator(tiny_backbone):
    from test_inference import Spy, assert_scores_match, tiny_generator

    spy = Spy(tiny_generator(tiny_backbone))
    chat = CriticChatModel(generator=spy, max_new_tokens=6, do_sample=True, temperature=1.5, n=2)
    result = chat.generate([[HumanMessage("what is two plus three")]])
    [(prompts, settings, samples)] = spy.calls
    assert prompts == ["Human: what is two plus three\nAI:"] and settings.stop == ("\n",)
    assert_scores_match(spy.inner, prompts, samples)
    for generation, sample in zip(result.generations[0], samples[0], strict=True):
        assert generation.message.content == sample.text.strip()
        assert generation.message.response_metadata["critic_score"] == sample.score


def test_tool_choice_none_leaves_tools_out(calculator):
    generator = ScriptedGenerator([" hello"])
    CriticChatModel(generator=generator).bind_tools([calculator], tool_choice="none").invoke("hi")
    assert generator.prompts == ["Human: hi\nAI:"]


def test_create_agent_runs_the_tool_loop(calculator):
    from langchain.agents import create_agent

    generator = ScriptedGenerator(
        [ACTION + "\nObservation: 7 (hallucinated)", " I now know the final answer.\nFinal Answer: 5"],
        score=0.5,
    )
    agent = create_agent(model=CriticChatModel(generator=generator), tools=[calculator])
    messages = agent.invoke({"messages": [HumanMessage(QUESTION)]})["messages"]
    human, action, observation, final = messages
    assert action.tool_calls[0]["args"] == {"__arg1": "2+3"} and action.content == ACTION  # stop cut the rest
    assert isinstance(observation, ToolMessage) and observation.content == "5"
    assert final.content == "5" and final.tool_calls == []
    assert final.response_metadata["critic_score"] == 0.5
    assert generator.prompts == [
        react_prompt(QUESTION),
        react_prompt(QUESTION, ACTION + "\nObservation: 5\nThought: "),
    ]


def test_classic_react_agent_executor_over_the_llm(calculator):
    from langchain_classic.agents import AgentExecutor, create_react_agent
    from langchain_core.prompts import PromptTemplate

    generator = ScriptedGenerator(
        [react_action("2+3") + "\nObservation: 7", "not the format", react_finish("5")]
    )
    agent = create_react_agent(
        CriticLLM(generator=generator),
        [calculator],
        PromptTemplate.from_template(REACT_TEMPLATE),
        tools_renderer=react_tools_renderer,
    )
    executor = AgentExecutor(
        agent=agent,
        tools=[calculator],
        max_iterations=3,
        handle_parsing_errors=True,
        return_intermediate_steps=True,
    )
    result = executor.invoke({"input": QUESTION})
    assert result["output"] == "5"
    (action, observation), (_, parse_error) = result["intermediate_steps"]
    assert action.tool == "Calculator" and action.tool_input == "2+3" and observation == "5"
    assert "Invalid Format" in parse_error  # fed back to the model, which then answers
    assert generator.prompts[0] == react_prompt(QUESTION)  # the tools line as the traces write it
    assert generator.prompts[1] == react_prompt(QUESTION, react_action("2+3") + "\nObservation: 5\nThought: ")


# ---- tool_choice: forced calls, strict parsing, structured output ----


def test_a_named_tool_choice_prefixes_the_call_and_types_its_input():
    """The standard suite's own check (xfail on the random model) passes when the model writes the input."""
    from langchain_tests.integration_tests.chat_models import _validate_tool_call_message, magic_function

    generator = ScriptedGenerator([" 3\nObservation: 5", " 3"])
    chat = CriticChatModel(generator=generator).bind_tools([magic_function], tool_choice="any")
    reply = chat.invoke("What is the value of magic_function(3)? Use the tool.")
    _validate_tool_call_message(reply)  # {"input": 3}: typed as the schema says, with an id
    assert reply.content == " I should use magic_function.\nAction: magic_function\nAction Input: 3"
    assert generator.prompts[0].endswith("Thought: I should use magic_function.\nAction: magic_function\nAction Input:")
    streamed = None
    for chunk in chat.stream("What is the value of magic_function(3)? Use the tool."):
        streamed = chunk if streamed is None else streamed + chunk
    _validate_tool_call_message(streamed)
    assert streamed.content == reply.content


def test_tool_choice_any_with_several_tools_lets_the_model_name_one(calculator):
    from langchain_tests.integration_tests.chat_models import magic_function

    generator = ScriptedGenerator([" magic_function\nAction Input: 3", " Search\nAction Input: weather"])
    chat = CriticChatModel(generator=generator).bind_tools([calculator, magic_function], tool_choice="required")
    reply = chat.invoke("Hello!")
    assert generator.prompts[0].endswith("Thought: I should use a tool.\nAction:")
    assert reply.tool_calls[0]["name"] == "magic_function" and reply.tool_calls[0]["args"] == {"input": 3}
    unknown = chat.invoke("Hello!")
    assert unknown.tool_calls == [] and "unknown tool 'Search'" in unknown.invalid_tool_calls[0]["error"]


def test_a_forced_call_that_does_not_parse_is_an_invalid_tool_call():
    from langchain_tests.integration_tests.chat_models import magic_function

    chat = CriticChatModel(generator=ScriptedGenerator([" three", " three"])).bind_tools(
        [magic_function], tool_choice="magic_function"
    )
    reply = chat.invoke("Hello!")
    [invalid] = reply.invalid_tool_calls
    assert reply.tool_calls == [] and invalid["name"] == "magic_function" and invalid["args"] == "three"
    assert "expected integer" in invalid["error"]
    streamed = None
    for chunk in chat.stream("Hello!"):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed.tool_calls == [] and streamed.invalid_tool_calls[0]["args"] == "three"


def test_without_a_forced_choice_a_mistyped_input_goes_to_the_tool():
    """Lenient: the tool's own validation reports the error to the agent, which can try again."""
    from langchain_tests.integration_tests.chat_models import magic_function

    text = "Thought: I should use it.\nAction: magic_function\nAction Input: three"
    assert parse_react(text, [ToolSpec.of(magic_function)]).tool_calls[0]["args"] == {"input": "three"}
    assert parse_react(text.replace("three", "4"), [ToolSpec.of(magic_function)]).tool_calls[0]["args"] == {
        "input": 4
    }


def test_a_tool_choice_naming_no_bound_tool_fails_at_bind(calculator):
    with pytest.raises(ValueError, match="names no bound tool"):
        CriticChatModel(generator=ScriptedGenerator([])).bind_tools([calculator], tool_choice="Search")
    with pytest.raises(ValueError, match="no tools are bound"):
        CriticChatModel(generator=ScriptedGenerator([])).bind_tools([], tool_choice="any")


class Person(BaseModel):
    """A person."""

    name: str
    age: int


async def test_with_structured_output_returns_the_parsed_schema():
    replies = [' {"name": "Ada", "age": 36}\nObservation: x'] * 3
    generator = ScriptedGenerator(replies)
    structured = CriticChatModel(generator=generator).with_structured_output(Person)
    assert structured.invoke("Ada is 36.") == Person(name="Ada", age=36)
    assert generator.prompts[0].endswith("Thought: I should use Person.\nAction: Person\nAction Input:")
    assert list(structured.stream("Ada is 36.")) == [Person(name="Ada", age=36)]
    assert [p async for p in structured.astream("Ada is 36.")] == [Person(name="Ada", age=36)]


def test_malformed_structured_output_follows_include_raw():
    """LangChain's semantics: arguments that are no JSON object are an invalid tool call, so nothing is parsed
    (None); a JSON object that does not fit the schema raises, or with include_raw comes back as parsing_error."""
    from pydantic import ValidationError

    chat = CriticChatModel(generator=ScriptedGenerator([" Ada, 36", ' {"name": "Ada", "age": "old"}'] * 2))
    assert chat.with_structured_output(Person).invoke("Ada?") is None
    with pytest.raises(ValidationError, match="age"):
        chat.with_structured_output(Person).invoke("Ada?")
    raw = chat.with_structured_output(Person, include_raw=True)
    no_json = raw.invoke("Ada?")
    assert no_json["parsed"] is None and no_json["parsing_error"] is None
    assert "JSON object with name, age" in no_json["raw"].invalid_tool_calls[0]["error"]
    wrong_type = raw.invoke("Ada?")
    assert wrong_type["parsed"] is None and isinstance(wrong_type["parsing_error"], ValidationError)
    assert wrong_type["raw"].tool_calls[0]["args"] == {"name": "Ada", "age": "old"}


# ---- streaming ----


def test_chat_streams_token_by_token_with_metadata_on_the_last_chunk():
    reply = " Ada Lovelace  \nHuman: and mine?"
    generator = ScriptedGenerator([reply, reply], score=1.5)
    chat = CriticChatModel(generator=generator, model="my-critic")
    chunks = list(chat.stream("What is my name?"))
    assert len(chunks) > 3 and "".join(c.content for c in chunks) == "Ada Lovelace" == chat.invoke("?").content
    *first, last = chunks
    assert last.chunk_position == "last" and last.response_metadata["critic_score"] == 1.5
    assert last.response_metadata["finish_reason"] == "stop" and last.response_metadata["model_name"] == "my-critic"
    assert all("critic_score" not in c.response_metadata and c.chunk_position is None for c in first)


def test_a_final_answer_streams_live_and_a_tool_call_comes_whole(calculator):
    final = " I now know the final answer.\nFinal Answer: 5 apples "
    generator = ScriptedGenerator([final, final, ACTION, ACTION])
    chat = CriticChatModel(generator=generator).bind_tools([calculator])
    chunks = list(chat.stream(QUESTION))
    assert len(chunks) > 2 and "".join(c.content for c in chunks) == "5 apples" == chat.invoke(QUESTION).content
    *before, last = list(chat.stream(QUESTION))
    assert [c.content for c in before] == [] and last.content == ACTION  # the log, with its call, at the end
    invoked = chat.invoke(QUESTION)
    assert [(c["name"], c["args"]) for c in last.tool_calls] == [(c["name"], c["args"]) for c in invoked.tool_calls]
    assert last.tool_call_chunks[0]["args"] == '{"__arg1": "2+3"}'


def test_streaming_true_makes_invoke_stream():
    from langchain_core.callbacks import BaseCallbackHandler

    class Tokens(BaseCallbackHandler):
        def __init__(self):
            self.tokens = []

        def on_llm_new_token(self, token, **kwargs):
            self.tokens.append(token)

    for streaming, streamed in [(True, True), (False, False)]:
        handler = Tokens()
        chat = CriticChatModel(generator=ScriptedGenerator([" Ada Lovelace"]), streaming=streaming)
        assert chat.invoke("name?", config={"callbacks": [handler]}).content == "Ada Lovelace"
        assert (len(handler.tokens) > 2) is streamed


async def test_astream_leaves_the_event_loop_free():
    """The generator waits for the event loop to release it: a stream run on the loop's thread would deadlock."""
    import asyncio
    import threading

    release = threading.Event()

    class Gated(ScriptedGenerator):
        def stream(self, prompt, settings=None, **overrides):
            assert release.wait(10), "the event loop was blocked while the model generated"
            yield from super().stream(prompt, settings, **overrides)

    chat = CriticChatModel(generator=Gated([" Ada Lovelace"] * 2))
    consumer = asyncio.create_task(_collect(chat.astream("name?")))
    await asyncio.sleep(0)  # the consumer starts and waits on its queue
    release.set()
    chunks = await consumer
    assert "".join(c.content for c in chunks) == "Ada Lovelace" and chunks[-1].chunk_position == "last"
    assert (await chat.ainvoke("name?")).content == "Ada Lovelace"


async def _collect(stream):
    return [item async for item in stream]
