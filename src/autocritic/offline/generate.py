"""Critic data the backbone writes about itself (Cobbe et al. 2021): sample K answers per problem, label each.

    problems --few-shot prompt--> backbone samples K continuations --label_fn--> pointwise rows + pairs

Output in `out_dir`: {train,val,test}.jsonl with {"prompt", "response", "label"} where `prompt + response` is
exactly the sampled sequence; pairs_{train,val,test}.jsonl with {"prompt", "chosen", "rejected"}; card.json with
counts per split. Skipped when card.json records the same settings, problems and backbone.

Problems whose steps can be checked (chains) also get steps_{train,val,test}.jsonl in TRL's stepwise-supervision
format, {"prompt", "completions": [steps], "labels": [bools]}, one row per distinct sampled answer (`steps.py`).
With `step_alternatives`, countdowns also get steps_alternatives_train.jsonl: other allowed next steps from the states
the train solutions reach through right steps, one row each, the steps before it in its prompt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from autocritic.formats import ARITHMETIC_STOP, STEP_SEPARATOR
from autocritic.model.complete import complete
from autocritic.offline.labelling import LabelFn, label_offline
from autocritic.offline.pretrain import BUILD_INFO, recorded_fingerprint
from autocritic.offline.steps import countdown_alternatives, split_steps, step_labels
from autocritic.offline.tasks import SPLITS, STEP_FAMILIES, Problem, few_shot_prompts, make_splits
from autocritic.progress import track
from autocritic.settings import at_least
from autocritic.staging import staged

CARD = "card.json"
ALTERNATIVES = "steps_alternatives_train.jsonl"


@dataclass(frozen=True)
class GenerateSettings:
    seed: int = 0
    families: tuple[str, ...] = ("arithmetic",)  # each gets the problem counts below
    # Deduplication leaves at most one right answer per problem, so positives grow with problems, not with K. The
    # checker needs the model's own mistakes on many problems (docs/results.md §2.7): 24,000, not 3,000.
    train_problems: int = 24000
    val_problems: int = 300
    test_problems: int = 500
    samples: int = 8
    temperature: float = 0.8
    shots: int = 2
    max_new_tokens: int = 12
    stop: tuple[str, ...] = ARITHMETIC_STOP
    batch_size: int = 64
    max_pairs_per_problem: int = 4
    # Countdowns: other allowed next steps per state a train solution reaches through right steps (ALTERNATIVES),
    # the siblings a search ranks; 0 writes none.
    step_alternatives: int = 0

    def __post_init__(self) -> None:
        at_least(self, 1, "train_problems", "val_problems", "test_problems", "samples", "max_new_tokens", "batch_size")
        at_least(self, 0, "temperature", "shots", "max_pairs_per_problem", "step_alternatives")
        if not self.families:
            raise ValueError("families is empty: name at least one task family, e.g. [arithmetic]")


def output_files(out_dir: Path, stepwise: bool = False, alternatives: bool = False) -> list[Path]:
    names = [f"{split}.jsonl" for split in SPLITS] + [f"pairs_{split}.jsonl" for split in SPLITS] + [CARD]
    if stepwise:
        names += [f"steps_{split}.jsonl" for split in SPLITS]
    if stepwise and alternatives:
        names.append(ALTERNATIVES)
    return [Path(out_dir) / name for name in names]


def backbone_fingerprint(backbone_dir: Path) -> str:
    """The build fingerprint of an offline backbone; for any other model, its config and weight file sizes
    (hashing gigabytes of weights would cost more than the generation)."""
    backbone_dir = Path(backbone_dir)
    recorded = recorded_fingerprint(backbone_dir / BUILD_INFO)
    if recorded is not None:
        return recorded
    digest = hashlib.sha256((backbone_dir / "config.json").read_bytes())
    for path in sorted(backbone_dir.glob("*.safetensors")) + sorted(backbone_dir.glob("*.bin")):
        digest.update(f"{path.name}:{path.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def _fingerprint(
    settings: GenerateSettings, backbone: str, label_fn: LabelFn, problems: Mapping | None
) -> str:
    recorded = dataclasses.asdict(settings)
    if not settings.step_alternatives:
        del recorded["step_alternatives"]  # as before the setting existed: those builds stay valid
    content = {
        "settings": recorded,
        "backbone": backbone,
        "label_fn": f"{getattr(label_fn, '__module__', '')}.{getattr(label_fn, '__qualname__', repr(label_fn))}",
        "problems": None
        if problems is None
        else {s: [(p.question, p.answer) for p in ps] for s, ps in problems.items()},
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def is_built(out_dir: Path, fingerprint: str, stepwise: bool = False, alternatives: bool = False) -> bool:
    files = output_files(out_dir, stepwise, alternatives)
    return all(path.is_file() for path in files) and recorded_fingerprint(Path(out_dir) / CARD) == fingerprint


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    # Written beside the target and renamed, so a crash never leaves a half file that looks finished.
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    tmp.replace(path)


def label_split(
    problems: Sequence[Problem],
    prompts: Sequence[str],
    responses: Sequence[Sequence[str]],
    label_fn: LabelFn,
    max_pairs_per_problem: int,
    seed: int,
    progress: bool = False,
    desc: str = "labelling",
) -> tuple[list[dict], list[dict], dict]:
    """Pointwise rows, pairwise rows and counts; drops empty responses, exact duplicates and unjudgeable ones."""
    rng = random.Random(f"{seed}|pairs")
    rows, pairs = [], []
    counts = dict.fromkeys(("generated", "empty", "duplicates", "unlabelled", "problems_with_both"), 0)
    # A label_fn may be slow (a judge model, a test run): the bar counts problems.
    problem_rows = track(
        zip(problems, prompts, responses, strict=True), total=len(problems), desc=desc, enabled=progress
    )
    for problem, prompt, samples in problem_rows:
        right, wrong = [], []
        for response in samples:
            counts["generated"] += 1
            if not response.strip():
                counts["empty"] += 1
                continue
            if response in right or response in wrong:
                counts["duplicates"] += 1
                continue
            label = label_fn(problem, response)
            if label is None:
                counts["unlabelled"] += 1
                continue
            (right if label else wrong).append(response)
            rows.append({"prompt": prompt, "response": response, "label": int(label)})
        if right and wrong:
            counts["problems_with_both"] += 1
            combos = list(itertools.product(right, wrong))
            rng.shuffle(combos)
            pairs += [
                {"prompt": prompt, "chosen": c, "rejected": r} for c, r in combos[:max_pairs_per_problem]
            ]
    positives = sum(row["label"] for row in rows)
    counts |= {
        "problems": len(problems),
        "rows": len(rows),
        "positives": positives,
        "negatives": len(rows) - positives,
        "positive_rate": round(positives / max(1, len(rows)), 4),
        "pairs": len(pairs),
    }
    return rows, pairs, counts


def step_rows(
    problems: Sequence[Problem], prompts: Sequence[str], responses: Sequence[Sequence[str]]
) -> tuple[list[dict], dict]:
    """Stepwise rows for the step-checkable problems: each distinct non-empty answer (as in `label_split`) cut into
    its steps, each step labelled by `step_labels`; and the counts card.json records."""
    rows = []
    for problem, prompt, samples in zip(problems, prompts, responses, strict=True):
        if problem.family not in STEP_FAMILIES:
            continue
        seen: set[str] = set()
        for response in samples:
            if not response.strip() or response in seen:
                continue
            seen.add(response)
            steps = split_steps(response)
            rows.append({"prompt": prompt, "completions": steps, "labels": step_labels(problem, steps)})
    labels = [label for row in rows for label in row["labels"]]
    counts = {
        "rows": len(rows),
        "steps": len(labels),
        "positive_steps": sum(labels),
        "step_positive_rate": round(sum(labels) / max(1, len(labels)), 4),
        "rows_all_steps_right": sum(all(row["labels"]) for row in rows),
        "mean_steps_per_row": round(len(labels) / max(1, len(rows)), 2),
    }
    return rows, counts


def alternative_step_rows(
    problems: Sequence[Problem], prompts: Sequence[str], rows: Sequence[dict], per_state: int, seed: int
) -> list[dict]:
    """Stepwise rows of one step each: `per_state` other allowed next steps from every state the countdown rows
    reach through right steps (`countdown_alternatives`), the steps before it in the prompt, so a row is read as
    that one step. They show the step critic what a search ranks: the steps from one state."""
    problem_of = dict(zip(prompts, problems, strict=True))
    rng, seen, out = random.Random(seed), set(), []
    for row in rows:
        problem = problem_of[row["prompt"]]
        if problem.family != "countdown":
            continue
        for before, step, good in countdown_alternatives(
            problem, row["completions"], row["labels"], per_state, rng, seen
        ):
            before_text = "".join(s + STEP_SEPARATOR for s in before)
            out.append({"prompt": row["prompt"] + before_text, "completions": [step], "labels": [good]})
    rng.shuffle(out)
    return out


def read_problems(
    path: Path,
    extract: Callable[[str], str | None],
    question_key: str = "question",
    answer_key: str = "answer",
    family: str = "file",
) -> list[Problem]:
    """Problems from a JSON-lines file such as GSM8K's {"question", "answer": "... #### 42"}: the worked answer
    is what a few-shot example shows, `extract` pulls the final answer that samples are checked against."""
    problems = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            final = extract(row[answer_key])
            if final is not None:
                problems.append(
                    Problem(family, row[question_key], final.strip(), 0, family, solution=row[answer_key])
                )
    return problems


def build_critic_data(
    backbone_dir: Path,
    settings: GenerateSettings,
    out_dir: Path,
    force: bool = False,
    label_fn: LabelFn | None = None,
    problems: Mapping[str, Sequence[Problem]] | None = None,
    progress: bool = True,
) -> Path:
    """Sample, label and write the critic data; `problems` (split -> problems, e.g. a GSM8K-style file read by
    the caller) replaces the generated arithmetic, and few-shot examples always come from its train split."""
    out_dir = Path(out_dir)
    label_fn = label_fn or label_offline
    fingerprint = _fingerprint(settings, backbone_fingerprint(backbone_dir), label_fn, problems)
    stepwise = _stepwise(settings, problems)
    if not force and is_built(out_dir, fingerprint, stepwise, settings.step_alternatives > 0):
        return out_dir
    with staged(out_dir) as staging:  # the previous data stays in place until this build is complete
        _build_into(staging, backbone_dir, settings, fingerprint, label_fn, problems, stepwise, progress)
    return out_dir


def critic_data_built(backbone_dir: Path, settings: GenerateSettings, out_dir: Path) -> bool:
    """Whether `build_critic_data` of the offline arithmetic would skip: `out_dir` holds this build."""
    fingerprint = _fingerprint(settings, backbone_fingerprint(backbone_dir), label_offline, None)
    return is_built(Path(out_dir), fingerprint, _stepwise(settings, None), settings.step_alternatives > 0)


def _stepwise(settings: GenerateSettings, problems: Mapping[str, Sequence[Problem]] | None) -> bool:
    if problems is None:
        return any(family in STEP_FAMILIES for family in settings.families)
    return any(p.family in STEP_FAMILIES for split in problems.values() for p in split)


def _build_into(
    staging: Path,
    backbone_dir: Path,
    settings: GenerateSettings,
    fingerprint: str,
    label_fn: LabelFn,
    problems: Mapping[str, Sequence[Problem]] | None,
    stepwise: bool,
    progress: bool,
) -> None:
    """Sample and label every split, writing the files and the card (last) into `staging`."""
    started = time.perf_counter()
    if problems is None:
        sizes = {
            "train": settings.train_problems,
            "val": settings.val_problems,
            "test": settings.test_problems,
        }
        problems = make_splits(settings.seed, families=list(settings.families), **sizes)
    tokenizer = AutoTokenizer.from_pretrained(backbone_dir)
    if tokenizer.pad_token is None:
        # Generation masks padding by the attention mask, so pad = eos is safe.
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(backbone_dir).eval()

    card = {
        "fingerprint": fingerprint,
        "backbone": str(backbone_dir),
        "settings": dataclasses.asdict(settings),
    }
    card["label_fn"] = getattr(label_fn, "__qualname__", repr(label_fn))
    card["splits"] = {}
    for index, split in enumerate(SPLITS):
        split_problems = list(problems.get(split, []))
        prompts = few_shot_prompts(split_problems, problems["train"], settings.shots, settings.seed + index)
        split_start = time.perf_counter()
        responses = complete(
            model,
            tokenizer,
            prompts,
            max_new_tokens=settings.max_new_tokens,
            stop=settings.stop,
            temperature=settings.temperature,
            num_samples=settings.samples,
            batch_size=settings.batch_size,
            seed=settings.seed + index,
            progress=progress,
            desc=f"critic data: sampling {split}",
        )
        rows, pairs, counts = label_split(
            split_problems,
            prompts,
            responses,
            label_fn,
            settings.max_pairs_per_problem,
            settings.seed + index,
            progress=progress,
            desc=f"critic data: labelling {split}",
        )
        if stepwise:
            steps, counts["steps"] = step_rows(split_problems, prompts, responses)
            _write_jsonl(staging / f"steps_{split}.jsonl", steps)
            if split == "train" and settings.step_alternatives:
                alternatives = alternative_step_rows(
                    split_problems, prompts, steps, settings.step_alternatives, settings.seed
                )
                counts["steps"]["alternatives"] = len(alternatives)
                counts["steps"]["alternatives_right"] = sum(row["labels"][0] for row in alternatives)
                _write_jsonl(staging / ALTERNATIVES, alternatives)
        counts["seconds"] = round(time.perf_counter() - split_start, 1)
        card["splits"][split] = counts
        _write_jsonl(staging / f"{split}.jsonl", rows)
        _write_jsonl(staging / f"pairs_{split}.jsonl", pairs)
    card["seconds"] = round(time.perf_counter() - started, 1)
    card["torch_threads"] = torch.get_num_threads()  # sampling rounds by it: another count can flip a sampled token
    (staging / CARD).write_text(json.dumps(card, indent=2) + "\n")
