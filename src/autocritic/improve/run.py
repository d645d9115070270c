"""`python train.py phase=improve`: the config read, the run directory chosen (new, or resumed), the rounds run,
and after each round rounds.json and accuracy_by_round.png written in the run directory."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from autocritic.errors import AlreadyDone, ConfigError
from autocritic.evaluation.plots import lines_plot
from autocritic.improve.critic import check_refresh_overrides
from autocritic.improve.filters import FILTERS
from autocritic.improve.generator import GeneratorSettings
from autocritic.improve.loop import ROUNDS, LoopSettings, read_rounds, run_rounds
from autocritic.improve.world import OfflineWorld, ProblemSettings, SamplingSettings
from autocritic.improve.yours import YourSettings, YourWorld
from autocritic.model.export import CONFIG_NAME, read_critic_config
from autocritic.settings import settings_from
from autocritic.signals import stop_with
from autocritic.training.preflight import latest

log = logging.getLogger("autocritic")
PLOT = "accuracy_by_round.png"
PLOTTED = ("greedy_accuracy", "majority@{k}", "best_of_{k}_critic", "pass@{k}")


def run_dir_of(cfg: DictConfig) -> Path:
    """A new run directory, or with `resume` (a run directory, or auto: the latest improve run) that one."""
    resume = cfg.get("resume")
    if not resume:
        return Path(cfg.paths.run_dir or cfg.paths.outputs)
    if resume == "auto":
        found = latest(f"improve/*/{ROUNDS}", Path(cfg.paths.outputs))
        if found is None:
            raise ConfigError(f"resume=auto found no improve run under {cfg.paths.outputs}/improve: start one without resume.")
        return found.parent
    path = Path(resume).expanduser()
    if not (path / ROUNDS).is_file():
        raise ConfigError(f"resume={resume} is not an improve run directory ({ROUNDS} is missing): pass <run dir> of phase=improve.")
    return path


def plot_rounds(run_dir: Path, rounds: list[dict], samples: int, filter_name: str) -> None:
    keys = [k.format(k=samples) for k in PLOTTED]
    series = {key: [r["metrics"].get(key) for r in rounds] for key in keys}
    lines_plot(run_dir / PLOT, series, [r["round"] for r in rounds], "round", "accuracy on held-out problems",
               f"self-training, improve.filter={filter_name}")


def latest_transfer_export(cfg: DictConfig) -> Path:
    """Round 0 when improve.critic is unset: the newest transfer export, as phase=finetune starts."""
    found = latest(f"transfer/*/export/{CONFIG_NAME}", Path(cfg.paths.outputs))
    if found is None:
        raise ConfigError(
            f"improve.critic is not set and no transfer export was found under {cfg.paths.outputs}/transfer/: run "
            "`python train.py phase=transfer` first, or pass the round-0 export, improve.critic=<export dir>."
        )
    log.info("round 0: the latest transfer export, %s", found.parent)
    return found.parent


def stopped_message(run_dir: Path, signal_name: str) -> str:
    """What a signal in the middle of a run leaves, and how to go on: the finished rounds stay, the cut one starts
    over."""
    done = read_rounds(run_dir)
    if not done:
        return f"stopped by {signal_name} while measuring round 0: nothing was finished; run the same command again."
    last = done[-1]["round"]
    kept = "round 0 (the start, measured) is" if last == 0 else f"rounds 0–{last} and their exports are"
    return (
        f"stopped by {signal_name} in round {last + 1}: {kept} kept in {run_dir}; go on with the same command and "
        f"resume={run_dir} (round {last + 1} starts over)."
    )


def improve(cfg: DictConfig) -> float | None:
    section = cfg.improve
    loop = settings_from(
        LoopSettings, section, "improve", skip=("critic", "problems", "sampling", "generator", "critic_refresh", "replay_files", "yours")
    )
    if loop.filter not in FILTERS:
        raise ConfigError(f"improve.filter={loop.filter!r} is not valid: expected one of {', '.join(FILTERS)}.")
    start = Path(section.critic).expanduser() if section.critic else latest_transfer_export(cfg)
    read_critic_config(start)  # a clear error now, not after the problems are built
    sampling = settings_from(SamplingSettings, section.sampling, "improve.sampling")
    generator = settings_from(GeneratorSettings, section.generator, "improve.generator")
    replay_files = OmegaConf.to_container(section.replay_files, resolve=True) or []
    critic_overrides = OmegaConf.to_container(section.critic_refresh.overrides, resolve=True) or []
    check_refresh_overrides(start, critic_overrides)
    yours = settings_from(YourSettings, section.get("yours"), "improve.yours")
    if yours.questions:
        if loop.filter == "oracle":
            raise ConfigError("improve.filter=oracle needs the true answers, which improve.yours.questions lacks: use critic, likelihood or none.")
        if loop.audit:
            log.info("improve.audit is off: your questions have no answers to audit the kept ones against")
            loop = replace(loop, audit=False)
        world = YourWorld(yours, start, sampling, generator, replay_files, critic_overrides)
    else:
        problems = settings_from(ProblemSettings, section.problems, "improve.problems")
        world = OfflineWorld(problems, sampling, generator, replay_files, critic_overrides)
    run_dir = run_dir_of(cfg)
    done = read_rounds(run_dir)
    if done and done[-1]["round"] >= loop.rounds:
        raise AlreadyDone(f"{run_dir} has finished its {loop.rounds} rounds; raise improve.rounds to go on.")
    log.info("phase=improve in %s: %d rounds, filter=%s, %d improving problems", run_dir, loop.rounds, loop.filter, len(world.improving_prompts()))
    samples = world.sampling.eval_samples
    with stop_with(lambda name: stopped_message(run_dir, name)):
        rounds = run_rounds(world, loop, run_dir, start, on_round=lambda r: plot_rounds(run_dir, r, samples, loop.filter))
    plot_rounds(run_dir, rounds, samples, loop.filter)
    return rounds[-1]["metrics"].get("greedy_accuracy")
