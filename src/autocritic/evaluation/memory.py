"""Suite "memory": conversation memories, classic and LangGraph, on dialogues with a fact to recall.

    kind           classic (langchain_classic)                LangGraph (langchain 1.x)
    buffer         ConversationChain + ConversationBufferMemory  graph_buffer   create_agent(checkpointer=InMemorySaver())
    window         ConversationBufferWindowMemory(k=window)       graph_window   before_model middleware: trim_messages to
                                                                                 the last 2*window+1 messages
    summary        ConversationSummaryMemory (our model writes   graph_summary  SummarizationMiddleware(summarizer=our
                   the summary)                                                  model, the same summary prompt)

Dialogues are held-out `offline.tasks` dialogues: a fact ("My name is Ada."), small talk, then a question about
the fact, `distance` exchanges after it. Every turn goes through the chain or the agent (so each memory saves,
trims or summarizes as it would), but the earlier AI turns are the dialogue's own replies (teacher forcing): every
memory kind sees the same conversation and only the answer to the last question is generated. The prompt of each
turn is recorded: prompt tokens per turn, and whether the fact is still in the prompt when the question comes.
The prompt is the "Human:/AI:" layout the offline model was trained on, not ConversationChain's default preamble.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from langchain_core.messages import HumanMessage, RemoveMessage, get_buffer_string, trim_messages
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from langgraph.graph.message import REMOVE_ALL_MESSAGES

from autocritic.evaluation import plots
from autocritic.evaluation.context import EvalContext, RecordingGenerator
from autocritic.evaluation.metrics import ci95, rate, with_ci
from autocritic.evaluation.report import SuiteResult, Table
from autocritic.formats import AI_PREFIX, DIALOGUE_STOP, HUMAN_PREFIX
from autocritic.inference.chat import is_summary, summary_text
from autocritic.inference.generation import GenerationSettings, Sample, TextGenerator
from autocritic.offline.tasks import Problem
from autocritic.progress import track

KINDS = ("buffer", "window", "summary", "graph_buffer", "graph_window", "graph_summary")
APIS = {
    "buffer": "ConversationChain + ConversationBufferMemory",
    "window": "ConversationChain + ConversationBufferWindowMemory(k)",
    "summary": "ConversationChain + ConversationSummaryMemory",
    "graph_buffer": "create_agent + InMemorySaver",
    "graph_window": "create_agent + InMemorySaver + before_model(trim_messages)",
    "graph_summary": "create_agent + InMemorySaver + SummarizationMiddleware",
}
DIALOGUE_PROMPT = PromptTemplate.from_template(f"{{history}}\n{HUMAN_PREFIX}: {{input}}\n{AI_PREFIX}:")
# "compact" is the prompt the offline model is trained to follow (offline.documents.summary_document: the summary keeps
# the human's facts in their own words). LangChain's default (~200 tokens of instructions and an example) is
# available for real models; the tiny model was never taught it.
SUMMARY_PROMPTS = {
    "compact": "Summary: {summary}\n{new_lines}\nNew summary:",
    "langchain": None,  # langchain_classic.memory.prompt.SUMMARY_PROMPT
}
SUMMARY_STOP = ("\n",)
WINDOW_KINDS = ("window", "graph_window")  # they forget by design: recall is judged within the window


@dataclass
class Settings:
    n_dialogues: int = 160  # 80 facts within a 2-exchange window: a 95% CI of a few points
    window: int = 2  # exchanges kept by the window memories
    max_new_tokens: int = 8
    summary_new_tokens: int = 48  # three facts in the human's words
    summary_prompt: str = "compact"  # compact | langchain
    kinds: tuple[str, ...] = KINDS

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown memory kinds {sorted(unknown)}: use {KINDS}")
        if self.summary_prompt not in SUMMARY_PROMPTS:
            raise ValueError(f"summary_prompt={self.summary_prompt!r}: use one of {sorted(SUMMARY_PROMPTS)}")


@dataclass
class Dialogue:
    exchanges: list[tuple[str, str]]  # (human, ai) before the question
    question: str
    answer: str
    distance: int | None  # exchanges from the fact to the question: 1 = the exchange just before it

    @property
    def fact(self) -> str | None:
        return None if self.distance is None else self.exchanges[len(self.exchanges) - self.distance][0]


@dataclass
class Trace:
    reply: str
    prompts: list[str]  # the model's prompt at each turn, the question's last
    summary_prompts: list[str] = field(default_factory=list)
    summary: str | None = None


def mentions(text: str, value: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text) is not None


def parse_dialogue(problem: Problem) -> Dialogue:
    """Split an `offline.tasks` dialogue into exchanges and the final question; find the fact asked about."""
    turns = [line.split(": ", 1)[1] for line in problem.question.split("\n")]
    *history, question = turns
    exchanges = list(zip(history[0::2], history[1::2], strict=True))
    fact = next((i for i, (human, _) in enumerate(exchanges) if mentions(human, problem.answer)), None)
    distance = None if fact is None else len(exchanges) - fact
    return Dialogue(exchanges, question, problem.answer, distance)


def recalled(reply: str, answer: str) -> bool:
    """The fact appears in the reply as a whole word ("Ada", or "Your name is Ada." as the model was taught)."""
    return re.search(rf"(?<!\w){re.escape(answer.casefold())}(?!\w)", reply.casefold()) is not None


class ForcedReplies:
    """A `TextGenerator` for teacher forcing: returns the queued replies first (no model call), then asks `inner`.
    Every prompt is recorded."""

    def __init__(self, inner: TextGenerator):
        self.inner = inner
        self.replies: list[str] = []
        self.prompts: list[str] = []

    def start(self, replies: Sequence[str]) -> None:
        self.replies, self.prompts = list(replies), []

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings | None = None, **overrides
    ) -> list[list[Sample]]:
        self.prompts.extend(prompts)
        if not self.replies:
            return self.inner.generate(prompts, settings, **overrides)
        n = replace(settings or GenerationSettings(), **overrides).n
        sample = Sample(" " + self.replies.pop(0), None, [], "stop")
        return [[replace(sample) for _ in range(n)] for _ in prompts]

    def stream(self, prompt: str, settings: GenerationSettings | None = None, **overrides):
        [[sample]] = self.generate([prompt], settings, **overrides)
        yield sample.text
        yield sample


class StripParser(StrOutputParser):
    """The model continues "AI:" with " Ada": store "Ada", so the history keeps the one-space training layout."""

    def parse(self, text: str) -> str:
        return text.strip()


def summary_prompt_of(name: str) -> PromptTemplate:
    """The template of a name Settings accepted."""
    if SUMMARY_PROMPTS[name] is None:
        from langchain_classic.memory.prompt import SUMMARY_PROMPT

        return SUMMARY_PROMPT
    return PromptTemplate.from_template(SUMMARY_PROMPTS[name])


class ClassicRunner:
    """One ConversationChain per dialogue (a fresh memory each time), driven turn by turn."""

    def __init__(self, ctx: EvalContext, kind: str, settings: Settings):
        self.kind, self.settings = kind, settings
        self.forced = ForcedReplies(ctx.generator)
        self.summarizer = RecordingGenerator(ctx.generator)
        self.llm = ctx.llm(self.forced, max_new_tokens=settings.max_new_tokens, stop=list(DIALOGUE_STOP))
        self.summary_llm = ctx.llm(
            self.summarizer, max_new_tokens=settings.summary_new_tokens, stop=list(SUMMARY_STOP)
        )
        self.summary_prompt = summary_prompt_of(settings.summary_prompt)

    def memory(self):
        from langchain_classic.memory import (
            ConversationBufferMemory,
            ConversationBufferWindowMemory,
            ConversationSummaryMemory,
        )

        prefixes = {"human_prefix": HUMAN_PREFIX, "ai_prefix": AI_PREFIX}
        if self.kind == "buffer":
            return ConversationBufferMemory(**prefixes)
        if self.kind == "window":
            return ConversationBufferWindowMemory(k=self.settings.window, **prefixes)
        return ConversationSummaryMemory(llm=self.summary_llm, prompt=self.summary_prompt, **prefixes)

    def __call__(self, dialogue: Dialogue) -> Trace:
        from langchain_classic.chains import ConversationChain

        self.forced.start([ai for _, ai in dialogue.exchanges])
        self.summarizer.prompts = []
        memory = self.memory()
        chain = ConversationChain(
            llm=self.llm, memory=memory, prompt=DIALOGUE_PROMPT, output_parser=StripParser()
        )
        summary = None
        for human, _ in dialogue.exchanges:
            chain.invoke({"input": human})
        if self.kind == "summary":
            summary = memory.buffer  # what the question will see
        reply = chain.invoke({"input": dialogue.question})["response"]
        return Trace(reply, list(self.forced.prompts), list(self.summarizer.prompts), summary)


def keep_last_messages(count: int):
    """A `before_model` middleware: the state keeps only the last `count` messages, starting on a human turn."""
    from langchain.agents.middleware import before_model

    @before_model(name="KeepLastMessages")
    def keep_last(state, runtime):
        messages = state["messages"]
        kept = trim_messages(
            messages,
            strategy="last",
            token_counter=len,
            max_tokens=count,
            start_on="human",
            include_system=True,
        )
        if len(kept) == len(messages):
            return None
        return {"messages": [RemoveMessage(id=REMOVE_ALL_MESSAGES), *kept]}

    return keep_last


class GraphRunner:
    """One LangGraph agent per memory kind (no tools), one checkpointer thread per dialogue."""

    def __init__(self, ctx: EvalContext, kind: str, settings: Settings):
        from langchain.agents import create_agent
        from langchain.agents.middleware import SummarizationMiddleware
        from langgraph.checkpoint.memory import InMemorySaver

        self.kind = kind
        self.forced = ForcedReplies(ctx.generator)
        self.summarizer = RecordingGenerator(ctx.generator)
        self.summaries: list[str] = []
        self.threads = 0
        summary_llm = ctx.llm(
            self.summarizer, max_new_tokens=settings.summary_new_tokens, stop=list(SUMMARY_STOP)
        )
        summary_prompt = summary_prompt_of(settings.summary_prompt)

        def summarize(messages) -> str:
            """The classic memory's step: previous summary + new lines → new summary, with the same prompt."""
            previous, lines = "", []
            for message in messages:
                if is_summary(message):
                    # The middleware strips what the summarizer returns; the summary prompt gets the last one as
                    # written (leading space included), as ConversationSummaryMemory keeps it.
                    previous = self.summaries[-1] if self.summaries else summary_text(message)
                else:
                    lines.append(message)
            new_lines = get_buffer_string(lines, human_prefix=HUMAN_PREFIX, ai_prefix=AI_PREFIX)
            text = summary_llm.invoke(summary_prompt.format(summary=previous, new_lines=new_lines))
            self.summaries.append(text)
            return text

        middleware = []
        if kind == "graph_window":
            middleware.append(keep_last_messages(2 * settings.window + 1))
        elif kind == "graph_summary":
            # Everything before the current human message is folded into the summary, as the classic memory does.
            middleware.append(
                SummarizationMiddleware(
                    model=ctx.chat(self.summarizer),
                    trigger=("messages", 2),
                    keep=("messages", 1),
                    summarizer=summarize,
                    trim_tokens_to_summarize=None,
                )
            )
        self.agent = create_agent(
            model=ctx.chat(self.forced, max_new_tokens=settings.max_new_tokens),
            tools=[],
            middleware=middleware,
            checkpointer=InMemorySaver(),
        )

    def __call__(self, dialogue: Dialogue) -> Trace:
        self.forced.start([ai for _, ai in dialogue.exchanges])
        self.summarizer.prompts, self.summaries = [], []
        self.threads += 1
        config = {"configurable": {"thread_id": f"dialogue-{self.threads}"}}
        for human, _ in dialogue.exchanges:
            self.agent.invoke({"messages": [HumanMessage(human)]}, config)
        reply = self.agent.invoke({"messages": [HumanMessage(dialogue.question)]}, config)["messages"][
            -1
        ].text
        summary = self.summaries[-1] if self.summaries else None
        return Trace(reply, list(self.forced.prompts), list(self.summarizer.prompts), summary)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def measure(
    ctx: EvalContext, traces: list[Trace], dialogues: list[Dialogue], reach: int | None = None
) -> dict:
    """`reach`: the exchanges a window memory keeps; its recall is also reported over the facts within it."""
    ok = [recalled(t.reply, d.answer) for t, d in zip(traces, dialogues, strict=True)]
    within = [flag for flag, d in zip(ok, dialogues, strict=True) if reach is None or d.distance <= reach]
    kept = [mentions(t.prompts[-1], d.answer) for t, d in zip(traces, dialogues, strict=True)]
    by_distance: dict[int, list[bool]] = defaultdict(list)
    kept_by_distance: dict[int, list[bool]] = defaultdict(list)
    for flag, keep, dialogue in zip(ok, kept, dialogues, strict=True):
        by_distance[dialogue.distance].append(flag)
        kept_by_distance[dialogue.distance].append(keep)
    turns = max(len(t.prompts) for t in traces)
    tokens = [[ctx.count_tokens(t.prompts[i]) for t in traces if i < len(t.prompts)] for i in range(turns)]
    return {
        "recall": rate(ok),
        "recall_ci95": ci95([float(flag) for flag in ok]),
        "recall_within_window": None if reach is None else rate(within),
        "recall_within_window_ci95": None if reach is None else ci95([float(flag) for flag in within]),
        "fact_in_prompt": rate(kept),
        "recall_by_distance": {d: rate(v) for d, v in sorted(by_distance.items())},
        "fact_in_prompt_by_distance": {d: rate(v) for d, v in sorted(kept_by_distance.items())},
        "prompt_tokens_by_turn": [_mean(v) for v in tokens],
        "question_prompt_tokens": _mean([ctx.count_tokens(t.prompts[-1]) for t in traces]),
        "summary_calls": _mean([len(t.summary_prompts) for t in traces]),
        "summary_prompt_tokens": _mean([sum(map(ctx.count_tokens, t.summary_prompts)) for t in traces]),
        "summary_has_fact": rate(
            [
                mentions(t.summary, d.answer)
                for t, d in zip(traces, dialogues, strict=True)
                if t.summary is not None
            ]
        )
        if any(t.summary is not None for t in traces)
        else None,
    }


def run(ctx: EvalContext, settings: Settings) -> SuiteResult:
    dialogues = [
        d
        for d in map(parse_dialogue, ctx.test_problems("dialogue", settings.n_dialogues))
        if d.distance is not None
    ]
    figures: dict = {
        "n_dialogues": len(dialogues),
        "window": settings.window,
        "distances": {
            d: sum(x.distance == d for x in dialogues) for d in sorted({x.distance for x in dialogues})
        },
    }
    examples = []
    for kind in settings.kinds:
        started = time.perf_counter()
        runner = (
            GraphRunner(ctx, kind, settings)
            if kind.startswith("graph_")
            else ClassicRunner(ctx, kind, settings)
        )
        traces = [runner(d) for d in track(dialogues, desc=f"memory: {kind}")]
        reach = settings.window if kind in WINDOW_KINDS else None
        figures[kind] = measure(ctx, traces, dialogues, reach) | {"seconds": time.perf_counter() - started}
        if "summary" in kind:
            examples += [
                [kind, d.fact, t.summary, t.reply] for d, t in list(zip(dialogues, traces, strict=True))[:3]
            ]

    distances = sorted(figures["distances"])
    rows = []
    for kind in settings.kinds:
        f = figures[kind]
        rows.append(
            [
                kind,
                APIS[kind],
                with_ci(f["recall"], f["recall_ci95"]),
                with_ci(f["recall_within_window"], f["recall_within_window_ci95"]),
                f["fact_in_prompt"],
                *(f["recall_by_distance"].get(d) for d in distances),
                f["question_prompt_tokens"],
                f["summary_calls"],
                f["seconds"],
            ]
        )
    turns = max(len(figures[k]["prompt_tokens_by_turn"]) for k in settings.kinds) if settings.kinds else 0
    token_rows = [
        [k, *(figures[k]["prompt_tokens_by_turn"] + [None] * turns)[:turns]] for k in settings.kinds
    ]
    tables = [
        Table(
            "Recall by memory kind",
            [
                "kind",
                "API",
                "recall (± 95% CI)",
                f"recall within the window ({settings.window} exchanges)",
                "fact in prompt",
                *(f"recall @ distance {d}" for d in distances),
                "prompt tokens at question",
                "summary calls / dialogue",
                "seconds",
            ],
            rows,
            note=f"{len(dialogues)} TEST dialogues (distance in exchanges between the fact and the question: "
            f"{figures['distances']}); window = last {settings.window} exchanges; summary prompt "
            f"'{settings.summary_prompt}', written by the model under test.",
        ),
        Table(
            "Prompt tokens per turn (mean)", ["kind", *(f"turn {i + 1}" for i in range(turns))], token_rows
        ),
    ]
    if examples:
        tables.append(
            Table("What the model's summaries kept", ["kind", "fact", "summary", "answer"], examples)
        )
    plot_files = []
    if (path := ctx.plot_path("memory_tokens.png")) is not None and turns:
        plot_files.append(
            plots.lines_plot(
                path,
                {k: figures[k]["prompt_tokens_by_turn"] for k in settings.kinds},
                list(range(1, turns + 1)),
                "turn",
                "prompt tokens",
                "Prompt tokens per turn by memory kind (dashed: LangGraph)",
                dashed=[k for k in settings.kinds if k.startswith("graph_")],
            )
        )
    return SuiteResult(
        "memory",
        figures,
        tables,
        plot_files,
        headline={
            f"recall ({k}, within the window)" if k in WINDOW_KINDS else f"recall ({k})": figures[k][
                "recall_within_window" if k in WINDOW_KINDS else "recall"
            ]
            for k in settings.kinds
        },
    )
