"""Your problems: the same rounds on a file of your questions (no answers needed) and a small labelled file.

    improve.yours.questions   questions to improve on: only the question column is read
    improve.yours.labelled    questions with answers, split by question into the critic's refresh data (train and
                              validation) and the held-out problems every round is measured on
    improve.yours.checker     exact | numeric | mypkg.module:function (question, answer, response) -> bool

Prompts are your questions as they are; the export's template renders them, as in `phase=generate` and training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from autocritic.data.datamodule import read_local_file
from autocritic.data.template import Template
from autocritic.errors import DataError
from autocritic.improve.critic import refresh_critic
from autocritic.improve.generator import GeneratorSettings
from autocritic.improve.measure import measure_export
from autocritic.improve.world import ModelSteps, SamplingSettings
from autocritic.labelling.build import label_split
from autocritic.labelling.checkers import last_number, load_checker
from autocritic.labelling.problems import as_text, read_problems, split_by_problem
from autocritic.model.export import read_critic_config
from autocritic.settings import at_least


@dataclass(frozen=True)
class YourSettings:
    questions: str | None = None
    labelled: str | None = None
    columns: dict[str, str] = field(default_factory=dict)  # e.g. {question: q, answer: solution}
    checker: str = "numeric"
    tolerance: float = 1e-6
    held_out_fraction: float = 0.3  # of the labelled questions
    val_fraction: float = 0.2  # of the labelled questions: the critic refresh's validation rows
    stop: tuple[str, ...] = ("\n\n",)
    seed: int = 0

    def __post_init__(self) -> None:
        at_least(self, 0, "tolerance")
        for name in ("held_out_fraction", "val_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must lie between 0 and 1")
        if self.held_out_fraction + self.val_fraction >= 1:
            raise ValueError(
                f"held_out_fraction={self.held_out_fraction} and val_fraction={self.val_fraction} leave no labelled "
                "questions to refresh the critic on: their sum must stay below 1"
            )


def read_questions(path: str, columns: dict[str, str]) -> list[str]:
    """The question column of every row; any other column (an answer too) is left unread."""
    column = columns.get("question", "question")
    if not Path(path).expanduser().is_file():
        raise DataError(f"improve.yours.questions={path!r} is not a file: a json/jsonl/csv/parquet file with {column!r}.")
    questions = []
    for number, row in enumerate(read_local_file(str(Path(path).expanduser())), start=1):
        if row.get(column) is None:
            raise DataError(f"{path}, row {number}: missing column {column!r}. Map it with improve.yours.columns.question=<name>.")
        questions.append(as_text(row[column], f"{path}, row {number}", column))
    if not questions:
        raise DataError(f"{path}: no questions.")
    return questions


def answer_of(text: str) -> str | None:
    number = last_number(text)
    return text.strip() if number is None else format(number, "g")


class YourWorld(ModelSteps):
    def __init__(
        self,
        settings: YourSettings,
        start: Path,
        sampling: SamplingSettings,
        generator: GeneratorSettings,
        replay_files: Sequence[str],
        critic_overrides: Sequence[str],
    ):
        if not settings.questions or not settings.labelled:
            raise DataError("improve.yours needs both questions=<file of questions> and labelled=<file of questions and answers>.")
        self.settings, self.sampling, self.generator = settings, sampling, generator
        self.replay_files, self.critic_overrides, self.stop = list(replay_files), list(critic_overrides), settings.stop
        self.checker = load_checker(settings.checker, settings.tolerance)
        self.template = Template(read_critic_config(start)["template"])
        self.questions = read_questions(settings.questions, settings.columns)
        labelled = read_problems(settings.labelled, settings.columns)
        splits = split_by_problem(labelled, settings.val_fraction, settings.held_out_fraction, settings.seed)
        self.refresh_train, self.refresh_val, self.held_out = splits["train"], splits["val"], splits["test"]

    def improving_prompts(self) -> list[str]:
        return self.questions

    def judge(self, problem: int, text: str) -> bool:
        raise DataError("improve.filter=oracle and improve.audit need true answers, which improve.yours.questions lacks: "
                        "use another filter and improve.audit=false.")

    def refresh_critic(self, generator: Path, previous: Path, out: Path, seed: int) -> Path:
        rows = {}
        for split, problems in (("train", self.refresh_train), ("val", self.refresh_val)):
            prompts = [self.template.render_prompt(p.question) for p in problems]
            rows[split], _ = label_split(problems, self.sample_labelled(generator, prompts, seed), self.checker, unique=True)
        template_file = out / "critic_data" / "template.txt"
        template_file.parent.mkdir(parents=True, exist_ok=True)
        template_file.write_text(self.template.text)
        overrides = ["data=files", f"data.template_file={template_file}", f"seed={seed}", *self.critic_overrides]
        facts = {"improve": {"critic_data": {"rows": len(rows["train"]), "positives": sum(r["label"] for r in rows["train"])}}}
        return refresh_critic(generator, previous, out, rows["train"], rows["val"], overrides, facts)

    def measure(self, export: Path) -> dict:
        def judge(index: int, text: str) -> bool:
            problem = self.held_out[index]
            return bool(self.checker(problem.question, problem.answer, text))

        return measure_export(
            export, [p.question for p in self.held_out], [answer_of(p.answer) or p.answer for p in self.held_out],
            judge, answer_of, self.sampling.eval_samples, self.sampling.temperature, self.sampling.max_new_tokens,
            self.stop, self.sampling.batch_size, self.sampling.eval_seed,
        )
