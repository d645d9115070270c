"""Suite "agent": the notebook's zero-shot ReAct math agent, with and without the calculator, greedy and critic-guided.

    direct            Question: ... / Answer:  (the model answers on its own, no tool)
    direct_critic     k sampled direct answers, the critic's best kept
    classic           langchain_classic create_react_agent + AgentExecutor(max_iterations, handle_parsing_errors)
                      with the safe calculator; the tools are rendered as the offline traces show them
    classic_lm_tool   the same plus the notebook's "Language Model" tool (a prompt chain), appended as in the notebook
    classic_critic    classic, each step (action or final answer) the critic's best of k samples
    create_agent      LangChain 1.x `create_agent` over `CriticChatModel` (ReAct text parsed into tool calls)
    create_agent_critic  the same, critic-guided

Questions are held-out ReAct problems (`offline.tasks`, TEST split). Success: the final answer's number equals
the exact result. A run that hits the iteration limit, or ends on unparsable text, fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from langchain_core.tools import Tool

from autocritic.evaluation.context import EvalContext
from autocritic.evaluation.metrics import ci95, rate, with_ci
from autocritic.evaluation.prompts import NOTEBOOK_TEMPLATE, OFFLINE_TEMPLATE
from autocritic.evaluation.report import SuiteResult, Table
from autocritic.formats import ARITHMETIC_STOP, CALCULATOR_DESCRIPTION, REACT_TEMPLATE
from autocritic.inference.calculator import calculator_tool
from autocritic.inference.chat import react_tools_renderer
from autocritic.inference.generation import GenerationSettings, Sample, TextGenerator
from autocritic.inference.rerank import best_of_n
from autocritic.offline.labelling import extract_answer, is_correct
from autocritic.offline.tasks import Problem
from autocritic.progress import track

LM_TOOL_NAME = "Language Model"
LM_TOOL_DESCRIPTION = "use this tool for general purpose queries and logic"
STOPPED = "Agent stopped"  # AgentExecutor's output when max_iterations is reached
VARIANTS = (
    "direct",
    "direct_critic",
    "classic",
    "classic_lm_tool",
    "classic_critic",
    "create_agent",
    "create_agent_critic",
)
DESCRIPTIONS = {
    "direct": "no tool: the model answers",
    "direct_critic": "no tool, critic's best of k answers",
    "classic": "AgentExecutor + calculator",
    "classic_lm_tool": "AgentExecutor + calculator + Language Model tool",
    "classic_critic": "AgentExecutor + calculator, critic's best of k at each step",
    "create_agent": "create_agent(CriticChatModel) + calculator",
    "create_agent_critic": "create_agent + calculator, critic's best of k at each step",
}


@dataclass
class Settings:
    n_problems: int = 150  # enough for a 95% CI of a few points around 90%
    max_iterations: int = 3
    max_new_tokens: int = 48  # per ReAct step
    candidates: int = 4  # k of the critic-guided variants
    temperature: float = 0.8
    variants: tuple[str, ...] = VARIANTS[:6]
    lm_tool_new_tokens: int = 16

    def __post_init__(self) -> None:
        unknown = set(self.variants) - set(VARIANTS)
        if unknown:
            raise ValueError(f"unknown agent variants {sorted(unknown)}: use {VARIANTS}")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be above 0 (the critic-guided variants sample)")


@dataclass
class Outcome:
    success: bool
    output: str
    model_calls: int
    tool_calls: int
    parse_errors: int
    limit_hit: bool
    trace: str = ""


class CriticBestOf:
    """A `TextGenerator` for critic-guided decoding: every call samples k candidates per prompt and returns the
    critic's best (the first on ties). Under an agent, each step (action or final answer) is chosen this way."""

    def __init__(self, inner: TextGenerator, k: int, temperature: float):
        self.inner, self.k, self.temperature = inner, k, temperature

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings | None = None, **overrides
    ) -> list[list[Sample]]:
        settings = replace(settings or GenerationSettings(), **overrides)
        sampled = replace(settings, do_sample=True, temperature=self.temperature)
        return [[r.best] * settings.n for r in best_of_n(self.inner, prompts, self.k, sampled)]

    def stream(self, prompt: str, settings: GenerationSettings | None = None, **overrides):
        [[sample]] = self.generate([prompt], settings, **overrides)
        yield sample.text
        yield sample


def solved(output: str, problem: Problem) -> bool:
    return is_correct(extract_answer(output), problem.answer)


def language_model_tool(ctx: EvalContext, generator: TextGenerator, max_new_tokens: int) -> Tool:
    """The notebook's general-purpose tool: its prompt chain (`llm_chain.run`) behind a `Tool`."""
    chain = (
        PromptTemplate.from_template(NOTEBOOK_TEMPLATE)
        | ctx.llm(generator, max_new_tokens=max_new_tokens, stop=list(ARITHMETIC_STOP))
        | StrOutputParser()
    )
    return Tool(
        name=LM_TOOL_NAME,
        func=lambda q: chain.invoke({"question": q}).strip(),
        description=LM_TOOL_DESCRIPTION,
    )


def run_direct(ctx: EvalContext, problems: list[Problem], settings: Settings) -> list[Outcome]:
    chain = (
        PromptTemplate.from_template(OFFLINE_TEMPLATE)
        | ctx.llm(max_new_tokens=12, stop=list(ARITHMETIC_STOP))
        | StrOutputParser()
    )
    texts = chain.batch([{"question": p.question} for p in problems])
    return [Outcome(solved(t, p), t.strip(), 1, 0, 0, False) for t, p in zip(texts, problems, strict=True)]


def run_direct_critic(
    ctx: EvalContext, problems: list[Problem], settings: Settings
) -> tuple[list[Outcome], float]:
    """Critic's best of k sampled answers; also returns the success of one sample (the first) for reference."""
    prompts = [OFFLINE_TEMPLATE.format(question=p.question) for p in problems]
    sampling = GenerationSettings(
        max_new_tokens=12,
        do_sample=True,
        temperature=settings.temperature,
        stop=ARITHMETIC_STOP,
        seed=ctx.seed,
    )
    reranked = best_of_n(ctx.generator, prompts, settings.candidates, sampling)
    outcomes = [
        Outcome(solved(r.best.text, p), r.best.text.strip(), 1, 0, 0, False)
        for r, p in zip(reranked, problems, strict=True)
    ]
    single = rate([solved(r.samples[0].text, p) for r, p in zip(reranked, problems, strict=True)])
    return outcomes, single


def run_classic(
    ctx: EvalContext,
    problems: list[Problem],
    settings: Settings,
    generator: TextGenerator,
    lm_tool: bool,
    name: str = "classic",
) -> list[Outcome]:
    from langchain_classic.agents import AgentExecutor, create_react_agent

    tools = [calculator_tool(CALCULATOR_DESCRIPTION)]
    if lm_tool:
        tools.append(language_model_tool(ctx, ctx.generator, settings.lm_tool_new_tokens))
    names = {t.name for t in tools}
    agent = create_react_agent(
        ctx.llm(generator, max_new_tokens=settings.max_new_tokens),
        tools,
        PromptTemplate.from_template(REACT_TEMPLATE),
        tools_renderer=react_tools_renderer,
    )
    executor = AgentExecutor(
        agent=agent,
        tools=tools,
        max_iterations=settings.max_iterations,
        handle_parsing_errors=True,
        return_intermediate_steps=True,
    )
    outcomes = []
    for problem in track(problems, desc=f"agent: {name}"):
        result = executor.invoke({"input": problem.question})
        steps, output = result["intermediate_steps"], str(result["output"])
        limit = output.startswith(STOPPED)
        trace = "".join(f"{a.log}\nObservation: {o}\n" for a, o in steps) + f"→ {output}"
        outcomes.append(
            Outcome(
                success=not limit and solved(output, problem),
                output=output,
                model_calls=len(steps) + (0 if limit else 1),
                tool_calls=sum(a.tool in names for a, _ in steps),
                parse_errors=sum(a.tool == "_Exception" for a, _ in steps),
                limit_hit=limit,
                trace=trace,
            )
        )
    return outcomes


def run_create_agent(
    ctx: EvalContext, problems: list[Problem], settings: Settings, generator: TextGenerator, name: str = "create_agent"
) -> list[Outcome]:
    from langchain.agents import create_agent
    from langchain.agents.middleware import ModelCallLimitMiddleware

    agent = create_agent(
        model=ctx.chat(generator, max_new_tokens=settings.max_new_tokens),
        tools=[calculator_tool(CALCULATOR_DESCRIPTION)],
        middleware=[ModelCallLimitMiddleware(run_limit=settings.max_iterations, exit_behavior="end")],
    )
    outcomes = []
    for problem in track(problems, desc=f"agent: {name}"):
        messages = agent.invoke({"messages": [HumanMessage(problem.question)]})["messages"]
        replies = [m for m in messages if isinstance(m, AIMessage) and "finish_reason" in m.response_metadata]
        final = messages[-1]
        # A model reply without a tool call ends the loop: an answer, or text that parsed as nothing.
        finished = any(final is r for r in replies) and not final.tool_calls
        clean = finished and "react_error" not in final.response_metadata
        trace = "\n".join(f"{type(m).__name__}: {m.text}" for m in messages[1:])
        outcomes.append(
            Outcome(
                success=clean and solved(final.text, problem),
                output=final.text,
                model_calls=len(replies),
                tool_calls=sum(isinstance(m, ToolMessage) for m in messages),
                parse_errors=sum("react_error" in m.response_metadata for m in replies),
                limit_hit=not finished,
                trace=trace,
            )
        )
    return outcomes


def summarize(outcomes: list[Outcome], seconds: float) -> dict:
    n = max(1, len(outcomes))
    return {
        "success": rate([o.success for o in outcomes]),
        "success_ci95": ci95([float(o.success) for o in outcomes]),
        "model_calls": sum(o.model_calls for o in outcomes) / n,
        "tool_calls": sum(o.tool_calls for o in outcomes) / n,
        "parse_errors": sum(o.parse_errors for o in outcomes),
        "questions_with_parse_errors": rate([o.parse_errors > 0 for o in outcomes]),
        "limit_hits": sum(o.limit_hit for o in outcomes),
        "seconds": seconds,
        "n": len(outcomes),
    }


def run(ctx: EvalContext, settings: Settings) -> SuiteResult:
    problems = ctx.test_problems("react", settings.n_problems)
    guided = CriticBestOf(ctx.generator, settings.candidates, settings.temperature)
    runners: dict[str, Callable[[], list[Outcome]]] = {
        "direct": lambda: run_direct(ctx, problems, settings),
        "classic": lambda: run_classic(ctx, problems, settings, ctx.generator, lm_tool=False),
        "classic_lm_tool": lambda: run_classic(ctx, problems, settings, ctx.generator, True, "classic_lm_tool"),
        "classic_critic": lambda: run_classic(ctx, problems, settings, guided, False, "classic_critic"),
        "create_agent": lambda: run_create_agent(ctx, problems, settings, ctx.generator),
        "create_agent_critic": lambda: run_create_agent(ctx, problems, settings, guided, "create_agent_critic"),
    }
    figures: dict = {
        "n_problems": len(problems),
        "candidates": settings.candidates,
        "max_iterations": settings.max_iterations,
    }
    traces = []
    for variant in settings.variants:
        started = time.perf_counter()
        if variant == "direct_critic":
            outcomes, single = run_direct_critic(ctx, problems, settings)
        else:
            outcomes, single = runners[variant](), None
        figures[variant] = summarize(outcomes, time.perf_counter() - started)
        if single is not None:
            figures[variant]["single_sample_success"] = single
        if outcomes and outcomes[0].trace:
            traces.append([variant, problems[0].question, problems[0].answer, outcomes[0].trace])

    gains = {}
    for base in ("direct", "classic", "create_agent"):
        critic = "direct_critic" if base == "direct" else f"{base}_critic"
        if base in figures and critic in figures:
            gains[base] = figures[critic]["success"] - figures[base]["success"]
    figures["critic_gain"] = gains

    rows = [
        [
            v,
            DESCRIPTIONS[v],
            with_ci(figures[v]["success"], figures[v]["success_ci95"]),
            figures[v]["model_calls"],
            figures[v]["tool_calls"],
            figures[v]["parse_errors"],
            figures[v]["limit_hits"],
            figures[v]["seconds"],
        ]
        for v in settings.variants
    ]
    tables = [
        Table(
            "Math agent on held-out expression questions",
            [
                "variant",
                "what",
                "success (± 95% CI)",
                "model calls / question",
                "tool calls / question",
                "parse errors",
                "iteration-limit hits",
                "seconds",
            ],
            rows,
            note=f"{len(problems)} TEST ReAct questions, max_iterations={settings.max_iterations}, "
            f"critic-guided: best of k={settings.candidates} samples at T={settings.temperature}.",
        )
    ]
    if gains:
        tables.append(
            Table(
                "Critic-guided gain (success, critic-guided − greedy)",
                ["setting", "gain"],
                [[k, v] for k, v in gains.items()],
            )
        )
    if traces:
        tables.append(
            Table("First question, each variant", ["variant", "question", "truth", "trace"], traces)
        )
    headline = {
        f"success ({v})": figures[v]["success"]
        for v in settings.variants
        if v in ("direct", "classic", "create_agent")
    }
    headline |= {f"critic gain ({k})": v for k, v in gains.items()}
    return SuiteResult("agent", figures, tables, headline=headline)
