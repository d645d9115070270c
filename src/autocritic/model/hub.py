"""The critic on the Hugging Face Hub: an export directory is a hub model repository as it is.

    critic = AutoCritic.from_pretrained("user/my-critic")      # or an export directory
    critic.save_pretrained("elsewhere/export")
    critic.push_to_hub("user/my-critic", private=True)
    push_export("outputs/finetune/<run>/export", "user/my-critic")   # an export on disk, without loading it

A hub id resolves through `huggingface_hub.snapshot_download` (its cache, `HF_HUB_OFFLINE` and tokens apply). An
export whose backbone is a local directory loads elsewhere only with `backbone=`: pushing one says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

from autocritic.errors import CheckpointError
from autocritic.model.backbone import looks_local
from autocritic.model.export import LoadedCritic, load_critic, read_critic_config

log = logging.getLogger("autocritic")


def locate_export(name_or_path: str | Path, revision: str | None = None, token: str | None = None) -> Path:
    """The local directory of an export: `name_or_path` itself, or a hub repository's snapshot."""
    name = str(name_or_path)
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    if looks_local(name) or name.count("/") != 1:
        raise CheckpointError(
            f"{name} is neither an export directory nor a hub id (user/name). Pass the export directory of a "
            "training run (<run dir>/export) or the hub id it was pushed to."
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
    )

    try:
        return Path(snapshot_download(name, revision=revision, token=token))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        raise CheckpointError(
            f"{name} is no export directory here, and as a hub id it is not in the hub cache while the hub cannot be "
            f"reached ({type(error).__name__}): check the path, or download it once with hub access (unset "
            "HF_HUB_OFFLINE)."
        ) from None
    except (HfHubHTTPError, HFValidationError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(
            f"{name} is no export directory here, and as a hub id it could not be downloaded: {first_line}"
        ) from None


class AutoCritic:
    """`from_pretrained` of an export directory or hub id; the critic it returns has `save_pretrained` and
    `push_to_hub` (`LoadedCritic`)."""

    @staticmethod
    def from_pretrained(
        name_or_path: str | Path, revision: str | None = None, token: str | None = None, **load_kwargs
    ) -> LoadedCritic:
        """Args:
            name_or_path: an export directory or a hub id (user/name).
            revision, token: of the hub repository.
            load_kwargs: `load_critic`'s (device, dtype, merge, backbone).

        Example:
            critic = AutoCritic.from_pretrained("user/my-critic", device="auto", dtype="auto")
        """
        return load_critic(locate_export(name_or_path, revision, token), **load_kwargs)


def push_export(
    export: str | Path,
    repo_id: str,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload autocritic export",
    revision: str | None = None,
) -> str:
    """Upload an export directory to the model repository `repo_id` (created if missing); returns the commit's
    URL. Example: push_export("outputs/finetune/<run>/export", "user/my-critic", private=True)."""
    export = Path(export)
    config = read_critic_config(export)  # an export, not any directory
    backbone = config["backbone"]
    if backbone.get("local") and not (backbone["mode"] == "full" or backbone.get("merged")):
        log.warning(
            "the export's backbone is the local directory %s: who loads %s needs it too (backbone=<dir or hub id>)",
            backbone.get("absolute_path", backbone["name_or_path"]),
            repo_id,
        )
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(export),
        repo_type="model",
        commit_message=commit_message,
        revision=revision,
    )
    return str(getattr(commit, "commit_url", commit))
