"""Make the arguments a wandb sweep agent passes safe for Hydra's override grammar.

An agent runs `python train.py key=value ...` with values rendered by Python's `str()`. Known traps (wandb issues
1427, 4016, 6249, 9143): `None` arrives as the string "None"; whitespace and braces break Hydra's parser; a resumed
or preempted run gets `_wandb=...` and the whole config injected, nested groups as Python dict reprs.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger("autocritic")

INJECTED_KEYS = {"_wandb", "wandb_version"}
PYTHON_DICT = re.compile(r"^\{\s*'[^']*'\s*:")
NEEDS_QUOTES = re.compile(r"[\s{}'\"\\]")  # commas and brackets stay: Hydra sweeps (a,b), range(), glob()


def quote(value: str) -> str:
    if "'" not in value:
        return f"'{value}'"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def is_hydra_dict(arg: str) -> bool:
    """`key={a:1,b:2}`, Hydra's own dict syntax (a user's override, never what an agent renders)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        [override] = OverridesParser.create().parse_overrides([arg])
    except OverrideParseException:
        return False
    return isinstance(override.value(), dict)


def sanitize_override(arg: str) -> str | None:
    """One override made safe, or None when it must be dropped."""
    if "=" not in arg or arg.startswith("-"):
        return arg
    key, value = arg.split("=", 1)
    if key.lstrip("+~") in INJECTED_KEYS:
        return None
    if PYTHON_DICT.match(value):
        # A whole config group injected on resume: the group's leaf values are passed separately.
        return None
    if value == "None":  # Python's str(None); lowercase "none" is a real choice (peft=none, logger=none)
        return f"{key}=null"
    already_quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""
    is_list = value.startswith("[") and value.endswith("]")
    if value.startswith("{") and is_hydra_dict(arg):
        return arg
    if value and not already_quoted and not is_list and NEEDS_QUOTES.search(value):
        return f"{key}={quote(value)}"
    return arg


def sanitize_overrides(args: list[str]) -> list[str]:
    out = []
    for arg in args:
        safe = sanitize_override(arg)
        if safe is None:
            log.info("dropped sweep-injected argument %s", arg[:80])
        elif safe != arg:
            log.info("rewrote argument %r as %r", arg, safe)
        if safe is not None:
            out.append(safe)
    return out
