"""The rounds of critic-filtered self-training, and where each leaves its results.

    round r:  export r-1 ──sample K answers per improving problem (no labels)──► filter keeps the best
              ──fine-tune the generator on them (+ replay documents)──► generator r
              ──sample, check and label answers to the labelled split──► refresh the critic on generator r
              ──► <run dir>/round_<r>/export ──measure on held-out problems──► rounds.json

Round 0 is the starting export, measured only. rounds.json is rewritten after each round, once its export is
complete: a round listed there is finished, and `resume` goes on with the next one (a half-done round starts
over). The parts that touch models are a `World`; tests script one.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from autocritic.errors import AutocriticError, CheckpointError, ConfigError
from autocritic.improve.filters import Candidate, Kept, select
from autocritic.settings import at_least

log = logging.getLogger("autocritic")

ROUNDS = "rounds.json"


class NothingKept(AutocriticError):
    """A round's filter kept no answer: there is nothing to train on."""


@dataclass(frozen=True)
class LoopSettings:
    rounds: int = 3
    samples: int = 16  # K answers per improving problem
    filter: str = "critic"
    keep: int = 1  # distinct answers kept per problem (critic, likelihood, oracle)
    threshold: float | None = None  # critic / likelihood: the least probability a kept answer has
    audit: bool = True  # after the filter has chosen: how many kept answers are right (reads the true answers)
    seed: int = 0

    def __post_init__(self) -> None:
        at_least(self, 1, "rounds", "samples", "keep")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold={self.threshold} must lie in [0, 1] (a probability), or be null (no bar)")


class World(Protocol):
    """What a round does with models; each step reads and writes exports and directories on disk."""

    def improving_prompts(self) -> Sequence[str]: ...

    def sample(self, export: Path, prompts: Sequence[str], samples: int, seed: int) -> list[list[Candidate]]: ...

    def judge(self, problem: int, text: str) -> bool:
        """Is this answer to the improving problem right? Read only by filter=oracle and the audit."""
        ...

    def fine_tune(self, export: Path, kept: Sequence[Kept], prompts: Sequence[str], out: Path, seed: int) -> Path:
        """The generator of `export` trained on the kept answers: a model directory under `out`."""
        ...

    def refresh_critic(self, generator: Path, previous: Path, out: Path, seed: int) -> Path:
        """The export of round `out`: `generator` with a critic retrained on its own labelled answers."""
        ...

    def measure(self, export: Path) -> dict: ...


def round_dir(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / f"round_{index}"


def read_run_file(run_dir: Path, hint: str = ": start a new run instead of resuming this one.") -> dict:
    """A run's rounds.json as {"settings": ..., "rounds": [...]}; empty ones when it has none yet. A damaged file
    is a CheckpointError naming it, followed by `hint`."""
    path = Path(run_dir) / ROUNDS
    if not path.is_file():
        return {"settings": {}, "rounds": []}
    try:
        data = json.loads(path.read_text())
        return {"settings": dict(data.get("settings") or {}), "rounds": list(data["rounds"])}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as error:
        raise CheckpointError(f"{path} is damaged ({error}){hint}") from None


def read_rounds(run_dir: Path) -> list[dict]:
    return read_run_file(run_dir)["rounds"]


def write_rounds(run_dir: Path, settings: LoopSettings, rounds: Sequence[dict]) -> None:
    path = Path(run_dir) / ROUNDS
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": asdict(settings), "rounds": list(rounds)}, indent=2) + "\n")
    tmp.replace(path)


def check_same_filter(run_dir: Path, settings: LoopSettings, recorded: dict) -> None:
    """A resumed run keeps its filter (another would mix two runs in one table); rounds, threshold, keep and the
    rest may change (a round that kept nothing is resumed with a lower threshold). `recorded`: the settings in its
    rounds.json."""
    before = recorded.get("filter")
    if before is not None and before != settings.filter:
        raise ConfigError(
            f"resume: {run_dir} ran with improve.filter={before}, not {settings.filter}: resume it with "
            f"improve.filter={before}, or start a new run."
        )


def precision(kept: Sequence[Kept], judge: Callable[[int, str], bool]) -> float | None:
    return round(sum(judge(k.problem, k.text) for k in kept) / len(kept), 4) if kept else None


def run_rounds(
    world: World,
    settings: LoopSettings,
    run_dir: Path,
    start: Path,
    on_round: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Round 0 (the start export, measured) and rounds 1..settings.rounds; rounds already in rounds.json are
    kept as they are. `on_round` sees the records after each round (e.g. to redraw a plot)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    recorded = read_run_file(run_dir)
    check_same_filter(run_dir, settings, recorded["settings"])
    rounds = recorded["rounds"]
    if not rounds:
        log.info("round 0: measuring the start export %s", start)
        rounds = [{"round": 0, "export": str(start), "metrics": world.measure(Path(start))}]
        write_rounds(run_dir, settings, rounds)
    prompts = list(world.improving_prompts())
    for index in range(len(rounds), settings.rounds + 1):
        started = time.perf_counter()
        previous = Path(rounds[-1]["export"])
        out = round_dir(run_dir, index)
        shutil.rmtree(out, ignore_errors=True)  # a round cut short starts over
        out.mkdir(parents=True)
        pools = world.sample(previous, prompts, settings.samples, settings.seed + index)
        judge = world.judge if settings.filter == "oracle" else None
        kept = select(pools, settings.filter, settings.keep, settings.threshold, judge)
        if not kept:
            raise NothingKept(
                f"round {index}: improve.filter={settings.filter} kept none of the {sum(map(len, pools))} answers "
                f"to {len(prompts)} problems (improve.threshold={settings.threshold}), so there is nothing to "
                f"train on. The last export, {previous}, is intact; lower improve.threshold or raise "
                "improve.samples, then resume."
            )
        log.info("round %d: %d answers kept of %d (filter=%s)", index, len(kept), sum(map(len, pools)), settings.filter)
        generator = world.fine_tune(previous, kept, prompts, out, settings.seed + index)
        export = world.refresh_critic(generator, previous, out, settings.seed + index)
        metrics = world.measure(export)
        record = {
            "round": index,
            "export": str(export),
            "kept": len(kept),
            "problems_kept": len({k.problem for k in kept}),
            "sampled": sum(map(len, pools)),
            "metrics": metrics,
        }
        if settings.audit:
            record["filter_precision"] = precision(kept, world.judge)
        record["seconds"] = round(time.perf_counter() - started, 1)
        rounds.append(record)
        write_rounds(run_dir, settings, rounds)
        log.info("round %d done: %s", index, json.dumps(record))
        if on_round is not None:
            on_round(rounds)
    return rounds
