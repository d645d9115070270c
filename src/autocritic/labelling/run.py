"""`python train.py phase=generate generate.problems=<file>`: your model labels its own answers to your problems.
With `generate.step_labels=shepherd` it also labels each step of each answer by sampling `generate.completions`
continuations from it (Math-Shepherd, `labelling/steps.py`) and writes them in the stepwise schema.

Everything a user can get wrong (the checker's import path, the problems file, the numeric answers, the model
directory, the template) is checked before the model loads.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from autocritic.data.stepwise import DEFAULT_SEPARATOR
from autocritic.data.template import Template
from autocritic.errors import DataError
from autocritic.labelling.build import STEPS, TEMPLATE, StepLabelling, build_labelled_data
from autocritic.labelling.checkers import Checker, last_number, load_checker
from autocritic.labelling.problems import SPLITS, Problem, read_problems, split_by_problem
from autocritic.model.backbone import load_backbone, load_tokenizer
from autocritic.model.complete import complete
from autocritic.settings import settings_from

log = logging.getLogger("autocritic")
OUT_NAME = "labelled"  # <run dir>/labelled unless generate.out says otherwise
STEP_LABELS = ("none", "shepherd")


@dataclass(frozen=True)
class LabelSettings:
    problems: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    checker: str = "numeric"
    tolerance: float = 1e-6
    samples: int = 8
    temperature: float = 0.8
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ("\n\n",)
    batch_size: int = 32
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    unique: bool = True
    out: str | None = None
    step_labels: str = "none"  # shepherd: each step labelled by `completions` continuations (Math-Shepherd)
    completions: int = 4
    step_separator: str = DEFAULT_SEPARATOR  # what ends a step, as data.step_separator
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples < 1 or self.max_new_tokens < 1 or self.batch_size < 1 or self.completions < 1:
            raise ValueError("samples, completions, max_new_tokens and batch_size must be positive integers.")
        if self.step_labels not in STEP_LABELS:
            raise ValueError(f"step_labels={self.step_labels!r} is unknown: use one of {list(STEP_LABELS)}.")
        if not self.step_separator:
            raise ValueError("step_separator is empty: steps need a separator, e.g. a newline (the default).")
        if self.temperature < 0 or self.tolerance < 0:
            raise ValueError("temperature and tolerance must be ≥ 0.")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must be in [0, 1).")


@dataclass
class Prepared:
    """Everything checked before the model loads."""

    settings: LabelSettings
    checker: Checker
    template: str
    splits: dict[str, list[Problem]]
    out_dir: Path


def prepare(cfg: DictConfig) -> Prepared:
    """The settings, the checker's import, the template and every problem, checked in seconds."""
    settings = settings_from(LabelSettings, cfg.get("generate"), "generate")
    checker = load_checker(settings.checker, settings.tolerance)
    template = Template(cfg.data.template).text
    problems = read_problems(settings.problems, settings.columns)
    if settings.checker == "numeric":
        for number, problem in enumerate(problems, start=1):
            if last_number(problem.answer) is None:
                raise DataError(
                    f"{settings.problems}, row {number}: answer {problem.answer!r} has no number for "
                    "generate.checker=numeric. Use generate.checker=exact, or your own checker (module:function)."
                )
    splits = split_by_problem(problems, settings.val_fraction, settings.test_fraction, settings.seed)
    out_dir = Path(settings.out or Path(cfg.paths.run_dir or cfg.paths.outputs) / OUT_NAME)
    return Prepared(settings, checker, template, splits, out_dir)


def label_your_problems(cfg: DictConfig, prepared: Prepared | None = None) -> None:
    prepared = prepared or prepare(cfg)
    settings, out_dir = prepared.settings, prepared.out_dir
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    model = load_backbone(cfg.model.name_or_path, cfg.model.dtype, cfg.model.trust_remote_code)
    if torch.cuda.is_available():
        model = model.to("cuda")
    started = time.perf_counter()

    def sample(prompts, num_samples=settings.samples, desc="label your problems"):
        return complete(
            model,
            tokenizer,
            prompts,
            max_new_tokens=settings.max_new_tokens,
            stop=settings.stop,
            temperature=settings.temperature,
            num_samples=num_samples,
            batch_size=settings.batch_size,
            seed=settings.seed,
            progress=cfg.progress_bar != "none",
            desc=desc,
        )

    steps = None
    if settings.step_labels == "shepherd":
        def continue_steps(prompts):
            return sample(prompts, settings.completions, "continue each step")

        steps = StepLabelling(continue_steps, settings.completions, settings.step_separator)

    card = build_labelled_data(
        prepared.splits,
        sample,
        prepared.checker,
        prepared.template,
        out_dir,
        settings.unique,
        card={"model": str(cfg.model.name_or_path), "settings": asdict(settings)},
        steps=steps,
    )
    log.info("labelled in %.0f s: %s", time.perf_counter() - started, card["splits"])
    if steps is not None:
        log.info("step labels (Math-Shepherd, %d continuations per step): %s", settings.completions, card["steps"])
        print(
            f"\nlabelled steps in {out_dir}; train a step critic on them:\n"
            f"  {train_command(cfg, out_dir, STEPS)} data.schema=stepwise"
            + ("" if settings.step_separator == "\n" else f" 'data.step_separator={settings.step_separator}'")
        )
    print(f"\nlabelled answers in {out_dir}; train a critic on them:\n  {train_command(cfg, out_dir, '')}")
    return None


def train_command(cfg: DictConfig, out_dir: Path, prefix: str) -> str:
    files = {split: out_dir / f"{prefix}{split}.jsonl" for split in SPLITS}
    return (
        f"python train.py data=files model.name_or_path={cfg.model.name_or_path} "
        f"data.train_files=[{files['train']}] data.val_files=[{files['val']}] data.test_files=[{files['test']}] "
        f"data.template_file={out_dir / TEMPLATE}"
    )
