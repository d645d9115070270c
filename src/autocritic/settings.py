"""Settings dataclasses from config sections: an unknown key, or a value of the wrong kind, is a ConfigError before
any compute starts. Training's groups, the offline builds (`offline.pretrain`, ...) and the evaluation suites
(`agent`, ...) all go through `settings_from`."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping

from omegaconf import DictConfig, OmegaConf

from autocritic.errors import ConfigError, invalid_value, is_of_kind

# What a value of each kind may be, and how the message names it.
KINDS: dict[type, tuple[tuple[type, ...], str]] = {
    bool: ((bool,), "true or false"),
    int: ((int,), "a whole number"),
    float: ((int, float), "a number"),
    str: ((str,), "a string"),
    dict: ((dict,), "a mapping"),
    tuple: ((tuple,), "a list"),
    list: ((list,), "a list"),
}
MAPPING_FIX = "A mapping on the command line is written key={a: 1, b: 2} (quote it for the shell)."
LIST_FIX = "A list on the command line is written key=[a,b] (quote it for the shell)."


def settings_from(cls, section: DictConfig | Mapping | None, where: str, skip: Iterable[str] = (), **extra):
    """`cls(**section, **extra)`: the one way a config section becomes a settings dataclass. Every value is checked
    against its annotation (lists become tuples where a tuple is annotated); keys in `skip` belong to someone else
    and are left out; an unknown key, a value of the wrong kind, or a ValueError of `cls` (a bad name, a value out
    of range) is a ConfigError that names `where`."""
    if isinstance(section, DictConfig):
        values = OmegaConf.to_container(section, resolve=True)
    else:
        values = dict(section or {})
    values = {k: v for k, v in values.items() if k not in set(skip)} | extra
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where} has unknown keys {unknown}; known keys: {sorted(known)}.")
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if isinstance(value, list) and _wants_tuple(hints[name]):
            values[name] = value = tuple(value)
        check_kind(hints[name], value, f"{where}.{name}", default_of(known[name]))
    try:
        return cls(**values)
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None


def at_least(settings, minimum: float, *names: str) -> None:
    """A ValueError naming the first of `names` whose value is below `minimum` (None passes: that field's "off").
    Called from a settings dataclass's `__post_init__`; `settings_from` turns it into a ConfigError naming the
    section."""
    for name in names:
        value = getattr(settings, name)
        if value is not None and value < minimum:
            raise ValueError(f"{name}={value} must be ≥ {minimum}: set it to {minimum} or more")


def positive(settings, *names: str) -> None:
    """The same for values that must be above 0 (a learning rate)."""
    for name in names:
        value = getattr(settings, name)
        if value is not None and value <= 0:
            raise ValueError(f"{name}={value} must be > 0: set a positive value")


def _wants_tuple(hint) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_wants_tuple(a) for a in typing.get_args(hint))
    return (typing.get_origin(hint) or hint) is tuple


def default_of(spec: dataclasses.Field):
    return spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default


def check_kind(hint, value, key: str, default=None) -> None:
    """`value` fits the annotation `hint` (bool, int, float, str, dict, tuple[X, ...], list[X], X | None); other
    hints are not checked."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    kind = origin or hint
    if kind not in KINDS:
        return
    accepted, name = KINDS[kind]
    example = "" if default is None or kind is bool else f" such as {format_example(default)}"
    fix = {dict: MAPPING_FIX, tuple: LIST_FIX, list: LIST_FIX}.get(kind, f"Override it, e.g. `{key}=<value>`.")
    shown = list(value) if isinstance(value, tuple) else value  # as it was written
    if not is_of_kind(value, accepted):
        raise invalid_value(key, shown, f"{name}{example}", fix)
    item_hint = args[0] if (kind is tuple and args and args[-1] is Ellipsis) or (kind is list and args) else None
    if item_hint is not None:
        item_accepted, item_name = KINDS.get(item_hint, ((object,), ""))
        wrong = [item for item in value if not is_of_kind(item, item_accepted)]
        if wrong:
            raise invalid_value(key, shown, f"a list of {item_name.removeprefix('a ')}s{example}", LIST_FIX)


def format_example(value) -> str:
    """A default as the command line writes it: [0,2,4], {a: 1}, 0.8."""
    if isinstance(value, tuple | list):
        return "[" + ",".join(map(str, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in list(value.items())[:2]) + "}"
    return repr(value)
