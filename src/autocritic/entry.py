"""What every entry point does around its job: run dir, quiet libraries, clear errors, wandb closed."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable

from omegaconf import DictConfig, open_dict

from autocritic.errors import AlreadyDone, AutocriticError, ConfigError
from autocritic.progress import is_quiet, set_quiet
from autocritic.run_dirs import register_resolver

log = logging.getLogger("autocritic")
register_resolver()  # before @hydra.main resolves hydra.run.dir


def quiet_libraries() -> None:
    warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated")
    # The frozen phase keeps its backbone in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("bitsandbytes", "kernels", "transformers.modeling_utils", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()


def apply_quiet(cfg: DictConfig) -> None:
    """`quiet=true` or AUTOCRITIC_QUIET=1: no progress bars, ours nor Lightning's."""
    quiet = cfg.get("quiet", False)
    if not isinstance(quiet, bool):
        raise ConfigError(f"quiet={quiet!r} is not valid: expected true or false.")
    set_quiet(quiet)
    if is_quiet() and "progress_bar" in cfg:
        with open_dict(cfg):
            cfg.progress_bar = "none"


def task(job: Callable[[DictConfig], float | None], cfg: DictConfig) -> float | None:
    """Run `job`; a user mistake ends with its message and exit code 2 (a diverged run 3, a signal 128 + its
    number), never a traceback."""
    from hydra.core.hydra_config import HydraConfig

    quiet_libraries()
    if cfg.paths.get("run_dir") is None and HydraConfig.initialized():
        with open_dict(cfg):
            cfg.paths.run_dir = HydraConfig.get().runtime.output_dir
    try:
        apply_quiet(cfg)
        return job(cfg)
    except AlreadyDone as done:
        log.info("%s", done)
        print(f"autocritic: {done}", file=sys.stderr)
        return None
    except KeyboardInterrupt:  # Ctrl+C outside training (Lightning handles it inside)
        print("\nautocritic: stopped by SIGINT (Ctrl+C); what had been written so far stays.", file=sys.stderr)
        sys.exit(130)
    except AutocriticError as error:
        log.error("%s", error)
        print(f"\nautocritic: {error}", file=sys.stderr)
        sys.exit(getattr(error, "exit_code", 2))
    finally:
        try:
            import wandb

            if wandb.run is not None:
                wandb.finish()
        except ImportError:
            pass


def train_job(cfg: DictConfig) -> float | None:
    """What `python train.py` runs: phase=improve's rounds (autocritic.improve, which drives training and
    evaluation both), any other phase one training run."""
    if cfg.phase.name == "improve":
        from autocritic.improve.run import improve

        return improve(cfg)
    from autocritic.training.run import train

    return train(cfg)
