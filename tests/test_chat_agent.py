"""CriticChatModel: dialogue and ReAct transcripts, ReAct parsing into tool calls, and full agent loops
(LangGraph `create_agent`, classic `create_react_agent` + `AgentExecutor`) driven by scripted replies."""

from __future__ import annotations

import pytest
from helpers import ScriptedGenerator
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

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
