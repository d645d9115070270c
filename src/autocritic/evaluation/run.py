"""`python evaluate.py`: load an export, run the suites, write results.json, report.md and the plots.

export ──load_critic──► CriticGenerator ──► prompts, fewshot, agent, memory, rerank, score ──► run dir

A suite module holds `Settings` and `run(ctx, settings)`; an optional `check(settings)` reads its inputs (the score
suite's files) before the model is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch
from omegaconf import DictConfig

from autocritic.errors import AutocriticError, CheckpointError, ConfigError, invalid_value, is_of_kind
from autocritic.evaluation import agent, fewshot, memory, prompts, rerank, score, search
from autocritic.evaluation.context import EvalContext
from autocritic.evaluation.report import (
    REPORT_NAME,
    RESULTS_NAME,
    SuiteResult,
    flatten,
    format_summary,
    jsonable,
    write_report,
    write_results,
)
from autocritic.inference.generation import CriticGenerator
from autocritic.model.export import CONFIG_NAME, read_critic_config
from autocritic.model.hub import locate_export
from autocritic.settings import settings_from
from autocritic.signals import stop_with
from autocritic.tracking import is_wandb, wandb_mode

log = logging.getLogger("autocritic")

SUITES: dict[str, ModuleType] = {
    "prompts": prompts,
    "fewshot": fewshot,
    "agent": agent,
    "memory": memory,
    "rerank": rerank,
    "score": score,
    "search": search,
}
SEARCHED_PHASES = ("finetune", "transfer")  # the first phase with an export wins, its newest run
ZERO_ALLOWED = {"shots", "trees", "rollout_resample", "rollout_widen"}  # may be 0; every other whole-number setting of a suite is a count, at least 1


def looks_like_hub_id(name: str) -> bool:
    """owner/name, and no such local path: a hub repository."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def is_step_critic(export: Path) -> bool:
    """Was the export's critic trained on steps (data.schema=stepwise, as experiment=steps trains it)?"""
    try:
        config = json.loads((Path(export) / CONFIG_NAME).read_text())
        return (config.get("data") or {}).get("schema") == "stepwise"
    except (OSError, ValueError, AttributeError):  # a damaged or remote export: not known to be one
        return False


def find_export(cfg: DictConfig, step_critic: bool = False) -> Path:
    """`ckpt` (an export directory or a hub id), or the newest export of outputs/finetune, else of outputs/transfer;
    with `step_critic` (suites=[search] alone) the newest one whose critic was trained on steps."""
    if cfg.ckpt:
        path = Path(str(cfg.ckpt)).expanduser()
        if not path.is_dir() and not looks_like_hub_id(str(cfg.ckpt)):
            raise CheckpointError(
                f"ckpt={cfg.ckpt} does not exist. Pass the export directory of a training run, e.g. "
                f"ckpt={cfg.paths.outputs}/transfer/<run>/export, or the hub id it was pushed to."
            )
        path = locate_export(path if path.is_dir() else str(cfg.ckpt))  # a hub id: its snapshot
        read_critic_config(path)  # says clearly when the directory is not an export
        return path
    root = Path(cfg.paths.outputs)
    for phase in SEARCHED_PHASES:
        found = sorted(root.glob(f"{phase}/*/export/{CONFIG_NAME}"), key=lambda p: p.stat().st_mtime)
        if step_critic:
            found = [p for p in found if is_step_critic(p.parent)]
        if found:
            return found[-1].parent
    if step_critic:
        raise CheckpointError(
            f"suites=[search] needs a step critic, and no export under {root}/finetune or {root}/transfer was "
            "trained on steps. Train one (`python train.py experiment=steps phase=transfer`) or pass "
            "ckpt=<step critic export>."
        )
    raise CheckpointError(
        f"no export found under {root}/finetune/*/export or {root}/transfer/*/export. Train one first "
        "(`python train.py phase=transfer`) or pass ckpt=<export dir>."
    )


DEVICES = ("cpu", "cuda", "auto")
DTYPES = ("float32", "bfloat16", "float16", "auto")


def resolve_device(device: str, dtype: str) -> tuple[str, str]:
    """`device` and `dtype` as the model is loaded: auto is the GPU in bfloat16 when CUDA is there, else the CPU in
    float32. Unknown names, and cuda on a machine without it, are ConfigErrors before anything is loaded."""
    if device not in DEVICES:
        raise ConfigError(f"device={device!r} is not one of {', '.join(DEVICES)}: e.g. device=auto.")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not one of {', '.join(DTYPES)}: e.g. dtype=auto.")
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise ConfigError(
            f"device=cuda but torch {torch.__version__} sees no CUDA device: use device=cpu or device=auto, or "
            "install a CUDA build of torch."
        )
    if device == "auto":
        device = "cuda" if has_cuda else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    return device, dtype


def load_generator(path: Path, cfg: DictConfig) -> CriticGenerator:
    """Any failure to rebuild the export becomes one clear CheckpointError naming the export."""
    device, dtype = resolve_device(str(cfg.get("device", "cpu")), str(cfg.dtype))
    try:
        return CriticGenerator.from_export(path, batch_size=cfg.batch_size, dtype=dtype, device=device)
    except CheckpointError:
        raise
    except AutocriticError as error:
        raise CheckpointError(f"the export {path} cannot be loaded: {error}") from None
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"the export {path} is incomplete or incompatible with this version of autocritic "
            f"({type(error).__name__}: {str(error)[:300]}). Re-export it with `python train.py`."
        ) from None


def suite_settings(name: str, section: DictConfig | None, **extra):
    """The suite's Settings from its config section: unknown keys, values of the wrong kind, names the suite does
    not know and counts below 1 are ConfigErrors here, before the model is loaded."""
    settings = settings_from(SUITES[name].Settings, section, name, **extra)
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        counts = value if isinstance(value, tuple) else (value,)
        least = 0 if field.name in ZERO_ALLOWED else 1
        if any(is_of_kind(v, (int,)) and v < least for v in counts):
            raise ConfigError(f"{name}.{field.name}={value!r}: {'each' if counts is value else 'it'} must be "
                              f"{'a positive integer' if least else 'an integer ≥ 0'}.")
    return settings


def check_suites(cfg: DictConfig) -> list[str]:
    suites = list(cfg.suites) if not isinstance(cfg.suites, str) else [cfg.suites]
    unknown = [s for s in suites if s not in SUITES]
    if unknown or not suites:
        raise ConfigError(f"suites={suites}: choose among {list(SUITES)}, e.g. suites=[agent,rerank].")
    return suites


def check_run_settings(cfg: DictConfig) -> None:
    """The top-level counts every suite shares (threads, batch_size, seed)."""
    for key in ("threads", "batch_size"):
        value = cfg.get(key)
        if not is_of_kind(value, (int,)) or value < 1:
            raise invalid_value(key, value, "a positive integer", f"Override it, e.g. `{key}=1`.")
    if not is_of_kind(cfg.get("seed"), (int,)):
        raise invalid_value("seed", cfg.get("seed"), "an integer", "Override it, e.g. `seed=0`.")


def check_logger(cfg: DictConfig) -> bool:
    """True for wandb; evaluate writes no other logger (results.json is the machine-readable record)."""
    target = cfg.logger.get("_target_") if cfg.get("logger") else None
    if target is None:
        return False
    if not is_wandb(cfg.logger):
        raise ConfigError(f"logger={target} is not used by evaluate: use logger=wandb or logger=none.")
    wandb_mode(cfg.logger.get("offline", True))  # an online run without a key fails here, before any compute
    return True


def log_to_wandb(cfg: DictConfig, run_dir: Path, meta: dict, results: list[SuiteResult]) -> None:
    """An offline wandb run (unless logger.offline=false) with every figure, every table and every plot."""
    import wandb

    run = wandb.init(
        project=cfg.logger.get("project", "autocritic"),
        name=cfg.logger.get("name"),
        dir=str(run_dir),
        mode=wandb_mode(cfg.logger.get("offline", True)),
        job_type="evaluate",
        config=jsonable(meta),
    )

    def value(v):
        return v if v is None or isinstance(v, int | float) and not isinstance(v, bool) else str(v)

    for result in results:
        for table in result.tables:
            data = [[value(v) for v in row] for row in table.rows]
            run.log({f"{result.name}/{table.title}": wandb.Table(columns=table.columns, data=data)})
        for plot in result.plots:
            run.log({f"{result.name}/{Path(plot).stem}": wandb.Image(str(run_dir / plot))})
        run.summary.update(flatten(result.figures, result.name))
    run.finish()


def evaluate(cfg: DictConfig) -> float | None:
    """Returns the best-of-N accuracy of the rerank suite (None when it did not run)."""
    from langchain_core._api import LangChainDeprecationWarning

    # The classic chains and memories are run on purpose (parity with LangChain 1.x): their notices are noise here.
    warnings.filterwarnings("ignore", category=LangChainDeprecationWarning)
    check_run_settings(cfg)
    torch.set_num_threads(cfg.threads)
    resolve_device(str(cfg.get("device", "cpu")), str(cfg.dtype))  # a wrong name fails before any loading
    suites = check_suites(cfg)
    settings = {
        name: suite_settings(
            name, cfg.get(name), **({"n_samples": cfg.n_samples} if name == "rerank" else {})
        )
        for name in suites
    }
    for name in suites:
        if hasattr(SUITES[name], "check"):
            SUITES[name].check(settings[name])  # a suite's own inputs, before the model loads
    use_wandb = check_logger(cfg)
    export = find_export(cfg, step_critic=suites == ["search"])
    log.info("evaluating %s (suites: %s)", export, ", ".join(suites))
    if "rerank" in suites:
        offline, source = rerank.critic_data_settings(export)
        settings["rerank"] = settings["rerank"].resolved(offline)
        log.info("suite rerank: unset sampling settings as %s", source)
    if "search" in suites:
        learned = search.step_family(export)  # refuses a backbone that never learned a step family
        if settings["search"].family is None:
            settings["search"] = dataclasses.replace(settings["search"], family=learned)
        if not is_step_critic(export):
            log.warning(
                "suite search: %s was trained on whole answers, not steps; its step values are read where it never "
                "learned to judge. A step critic: `python train.py experiment=steps phase=transfer`, then "
                "ckpt=<its export>.",
                export,
            )
    started = time.perf_counter()
    generator = load_generator(export, cfg)
    run_dir = Path(
        cfg.paths.run_dir or Path(cfg.paths.outputs) / "evaluate" / time.strftime("%Y-%m-%d_%H-%M-%S")
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = EvalContext.for_generator(generator, seed=cfg.seed, out_dir=run_dir)

    results = []
    current = suites[0]

    def stopped(signal_name: str) -> str:
        return (
            f"stopped by {signal_name} in the {current} suite: nothing is written before every suite is done; run "
            "the same command again (suites=[...] runs fewer)."
        )

    with stop_with(stopped):
        for current in suites:
            log.info("suite %s: %s", current, settings[current])
            suite_start = time.perf_counter()
            try:
                result = SUITES[current].run(ctx, settings[current])
            except ValueError as error:  # a setting the suite refuses (unknown variant, selector, ...)
                raise ConfigError(f"{current}: {error}") from None
            result.seconds = time.perf_counter() - suite_start
            log.info("suite %s done in %.1f s: %s", current, result.seconds, result.headline)
            results.append(result)

    config = read_critic_config(export)
    meta = {
        "ckpt": str(export),
        "export": {
            k: config.get(k) for k in ("backbone", "phase", "template", "test_metrics", "started_from")
        },
        "seed": cfg.seed,
        "suites": suites,
        "settings": {name: dataclasses.asdict(s) for name, s in settings.items()},
        "threads": torch.get_num_threads(),
        "device": str(generator.device),
        "dtype": str(next(generator.model.parameters()).dtype).removeprefix("torch."),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "seconds": time.perf_counter() - started,
    }
    write_results(run_dir, meta, results)
    write_report(run_dir, meta, results)
    print(f"\n{format_summary(results)}\n\n{run_dir / RESULTS_NAME}\n{run_dir / REPORT_NAME}")
    if use_wandb:
        log_to_wandb(cfg, run_dir, meta, results)
    headline = next((r.figures["gap"]["best_of_n"] for r in results if r.name == "rerank"), None)
    return float(headline) if headline is not None else None
