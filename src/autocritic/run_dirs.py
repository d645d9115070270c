"""Run directories that belong to one run: two runs started in the same second (parallel seeds, sweep agents on one
machine) would otherwise share Hydra's `<outputs>/<phase>/<date>_<time>` and overwrite each other's checkpoints,
export and logs."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

RESOLVER = "new_dir"
_claimed: dict[str, str] = {}


def claim_new_dir(path: str) -> str:
    """Create and return the first of `path`, `path_2`, `path_3`, ... that does not exist yet. The directory is made
    here, atomically, so a second process asking for the same path gets the next name; asked again in this process,
    the same answer (Hydra may resolve its run dir more than once)."""
    if path in _claimed:
        return _claimed[path]
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = base, 1
    while True:
        try:
            candidate.mkdir()
            break
        except FileExistsError:
            n += 1
            candidate = base.with_name(f"{base.name}_{n}")
    _claimed[path] = str(candidate)
    return _claimed[path]


def register_resolver() -> None:
    """`${new_dir:<path>}` in the configs' hydra.run.dir."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, claim_new_dir)
