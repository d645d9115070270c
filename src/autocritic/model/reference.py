"""Where an export finds the backbone it does not carry: a reference that survives moving the export.

A hub id stays a hub id. A local directory is stored relative to the export directory (an export moved together
with its backbone, or a whole project copied elsewhere, still finds it), with the absolute path as a second place
to look (an export copied alone on the same machine). Reading resolves the first that exists; a `backbone=`
override wins over both.
"""

from __future__ import annotations

import os
from pathlib import Path

from autocritic.errors import CheckpointError
from autocritic.model.backbone import looks_local


def backbone_reference(name_or_path: str | Path, export_dir: Path) -> dict:
    """The `backbone` entries of critic_config.json that say where the backbone is: `name_or_path` (a hub id, or
    a local directory relative to `export_dir`), `local`, and for a local one `absolute_path`."""
    name = str(name_or_path)
    if not looks_local(name):
        return {"name_or_path": name, "local": False}
    absolute = Path(name).expanduser().resolve()
    try:
        relative = os.path.relpath(absolute, export_dir.resolve())
    except ValueError:  # another drive (Windows): no relative path exists
        relative = str(absolute)
    return {"name_or_path": relative, "local": True, "absolute_path": str(absolute)}


def resolve_backbone(export_dir: Path, entry: dict, override: str | Path | None = None) -> str:
    """The hub id or the existing local directory of an export's backbone. `entry`: critic_config.json's
    `backbone`; `override`: a directory or hub id given by the user instead."""
    if override is not None:
        override = str(override)
        if looks_local(override) and not Path(override).expanduser().is_dir():
            raise CheckpointError(f"backbone={override!r} does not exist: pass the backbone's directory or hub id.")
        return override
    name = str(entry["name_or_path"])
    if not entry.get("local", looks_local(name)):  # exports before the `local` key held a hub id or an absolute path
        return name
    candidates = [(export_dir / name).resolve() if not os.path.isabs(name) else Path(name)]
    if entry.get("absolute_path"):
        candidates.append(Path(entry["absolute_path"]))
    for candidate in candidates:
        if candidate.is_dir():
            return str(candidate)
    looked = " nor ".join(str(c) for c in dict.fromkeys(candidates))
    raise CheckpointError(
        f"the backbone of the export {export_dir} is missing: neither {looked} exists. Copy the backbone there, or "
        "pass its directory or hub id as `backbone=` (load_critic(..., backbone=...))."
    )
