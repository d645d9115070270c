"""Console scripts `autocritic-train` and `autocritic-evaluate`: the Hydra apps of train.py and evaluate.py, run from
the configs that ship inside the package (autocritic/conf), so they work from any directory after `pip install`.

They take the same overrides (`autocritic-train phase=finetune peft=lora`); outputs/ and data/ are relative to the
directory they are run from, as with `python train.py`. The repository's top-level conf/ is this same directory.

`autocritic-push <export> <user/repo>` uploads an export to the Hugging Face Hub (`push_export`).
"""

from __future__ import annotations

import argparse
import sys

import hydra
from omegaconf import DictConfig

from autocritic.entry import task, train_job
from autocritic.training.sweep_args import sanitize_overrides


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _train(cfg: DictConfig) -> float | None:
    return task(train_job, cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def _evaluate(cfg: DictConfig) -> float | None:
    from autocritic.evaluation.run import evaluate

    return task(evaluate, cfg)


def train() -> None:
    sys.argv[1:] = sanitize_overrides(sys.argv[1:])  # safe for wandb sweep agents, a no-op otherwise
    _train()


def evaluate() -> None:
    _evaluate()


def push(argv: list[str] | None = None) -> None:
    """`autocritic-push <export dir> <user/repo> [--private] [--revision R] [--message M]`; the token comes from
    `hf auth login` or HF_TOKEN. A directory that is not an export, or a failed upload, is one line and exit 2 / 1."""
    parser = argparse.ArgumentParser(prog="autocritic-push", description="Upload an autocritic export to the Hub.")
    parser.add_argument("export", help="an export directory, e.g. outputs/finetune/<run>/export")
    parser.add_argument("repo_id", help="the model repository, user/name (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", default=None, help="the branch to push to (default: main)")
    parser.add_argument("--message", default="Upload autocritic export", help="the commit message")
    args = parser.parse_args(argv)
    from autocritic.errors import AutocriticError
    from autocritic.model.hub import push_export

    try:
        url = push_export(args.export, args.repo_id, private=args.private or None, revision=args.revision,
                          commit_message=args.message)
    except AutocriticError as error:
        print(f"autocritic-push: {error}", file=sys.stderr)
        sys.exit(2)
    except Exception as error:  # the hub's own errors: no network, no token, no rights to the repository
        print(f"autocritic-push: uploading {args.export} to {args.repo_id} failed: {type(error).__name__}: "
              f"{str(error).splitlines()[0] if str(error) else ''} (log in with `hf auth login` or set HF_TOKEN; "
              "check the network and the repository name)", file=sys.stderr)
        sys.exit(1)
    print(url)
