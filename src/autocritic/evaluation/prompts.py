"""Suite "prompts": the notebook's prompt chain, as LCEL and as the legacy LLMChain, each answer with its critic score.

    PromptTemplate | CriticLLM | StrOutputParser()      (LangChain 1.x)
    LLMChain(prompt=PromptTemplate, llm=CriticLLM)      (langchain_classic, for parity: same text under greedy)

Two templates over held-out arithmetic questions: the notebook's ("You are an intelligent chatbot...") and the
offline model's own "Question: ...\\nAnswer:" format; plus the notebook's free-form question as a demo.
"""

from __future__ import annotations

from dataclasses import dataclass

from langchain_classic.chains import LLMChain
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate

from autocritic.evaluation.context import EvalContext
from autocritic.evaluation.metrics import auroc, rate
from autocritic.evaluation.report import SuiteResult, Table
from autocritic.formats import ANSWER_PREFIX, ARITHMETIC_STOP, QUESTION_PREFIX
from autocritic.offline.labelling import extract_answer, is_correct
from autocritic.progress import track

NOTEBOOK_TEMPLATE = (
    "You are an intelligent chatbot. Help the following question with brilliant answers.\n"
    "Question: {question}\n"
    "Answer:"
)
OFFLINE_TEMPLATE = f"{QUESTION_PREFIX}{{question}}\n{ANSWER_PREFIX}"
NOTEBOOK_QUESTION = "Explain what is Artificial Intelligence as Nursery Rhymes"
TEMPLATES = {"notebook": NOTEBOOK_TEMPLATE, "offline": OFFLINE_TEMPLATE}


@dataclass
class Settings:
    n_problems: int = 64
    max_new_tokens: int = 12
    questions: tuple[str, ...] = (NOTEBOOK_QUESTION,)  # free-form demo questions (notebook template)
    demo_new_tokens: int = 32
    examples: int = 6  # answers shown in the report


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def run_template(llm, template: str, questions: list[str]) -> tuple[list[str], list[str], list[float | None]]:
    """(LCEL texts, LLMChain texts, LLMChain critic scores), each batched into one generate call."""
    prompt = PromptTemplate.from_template(template)
    inputs = [{"question": q} for q in questions]
    lcel = (prompt | llm | StrOutputParser()).batch(inputs)
    legacy = LLMChain(prompt=prompt, llm=llm).generate(inputs)
    texts = [row[0].text for row in legacy.generations]
    scores = [(row[0].generation_info or {}).get("critic_score") for row in legacy.generations]
    return lcel, texts, scores


def run(ctx: EvalContext, settings: Settings) -> SuiteResult:
    problems = ctx.test_problems("arithmetic", settings.n_problems)
    llm = ctx.llm(max_new_tokens=settings.max_new_tokens, stop=list(ARITHMETIC_STOP))
    figures: dict = {"n_problems": len(problems)}
    summary_rows, example_rows = [], []
    for name, template in track(TEMPLATES.items(), total=len(TEMPLATES), desc="prompts: templates"):
        lcel, legacy, scores = run_template(llm, template, [p.question for p in problems])
        right = [is_correct(extract_answer(t), p.answer) for t, p in zip(lcel, problems, strict=True)]
        scored = [(s, r) for s, r in zip(scores, right, strict=True) if s is not None]
        figures[name] = {
            "accuracy": rate(right),
            "parity": rate([a == b for a, b in zip(lcel, legacy, strict=True)]),
            "score_right": _mean([s for s, r in scored if r]),
            "score_wrong": _mean([s for s, r in scored if not r]),
            "auroc": auroc([s for s, _ in scored], [r for _, r in scored]),
        }
        f = figures[name]
        summary_rows.append(
            [name, f["accuracy"], f["parity"], f["score_right"], f["score_wrong"], f["auroc"]]
        )
        for problem, text, score, ok in list(zip(problems, lcel, scores, right, strict=True))[
            : settings.examples
        ]:
            example_rows.append([name, problem.question, problem.answer, text.strip(), score, ok])

    demo_llm = ctx.llm(max_new_tokens=settings.demo_new_tokens)
    demo_rows = []
    if settings.questions:
        lcel, legacy, scores = run_template(demo_llm, NOTEBOOK_TEMPLATE, list(settings.questions))
        figures["demo"] = [
            {"question": q, "answer": t, "critic_score": s, "parity": t == lt}
            for q, t, lt, s in zip(settings.questions, lcel, legacy, scores, strict=True)
        ]
        demo_rows = [[d["question"], d["answer"].strip(), d["critic_score"]] for d in figures["demo"]]

    tables = [
        Table(
            "Prompt chains on held-out arithmetic (greedy)",
            ["template", "accuracy", "LCEL = LLMChain", "mean score (right)", "mean score (wrong)", "AUROC"],
            summary_rows,
            note=f"{len(problems)} TEST questions; `PromptTemplate | CriticLLM | StrOutputParser()` and the legacy "
            "`LLMChain` over the same model; the critic score comes with each generation (`generation_info`).",
        ),
        Table(
            "Answers with their critic score",
            ["template", "question", "truth", "answer", "critic score", "correct"],
            example_rows,
        ),
    ]
    if demo_rows:
        tables.append(Table("The notebook's question", ["question", "answer", "critic score"], demo_rows))
    return SuiteResult(
        "prompts",
        figures,
        tables,
        headline={
            "accuracy (notebook template)": figures["notebook"]["accuracy"],
            "accuracy (offline format)": figures["offline"]["accuracy"],
            "LCEL = LLMChain": min(figures["notebook"]["parity"] or 0.0, figures["offline"]["parity"] or 0.0),
        },
    )
