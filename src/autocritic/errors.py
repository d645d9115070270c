"""Errors caused by user input: printed as one clear paragraph, never as a traceback."""


class AutocriticError(Exception):
    """A mistake the user can fix (bad config, bad data, missing checkpoint): the message says how."""


class ConfigError(AutocriticError):
    pass


class DataError(AutocriticError):
    pass


class CheckpointError(AutocriticError):
    pass


def is_of_kind(value, kinds: tuple[type, ...]) -> bool:
    """isinstance, except that true/false is not a number (bool subclasses int)."""
    return isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))


def invalid_value(key: str, value, expected: str, fix: str) -> ConfigError:
    """The one shape of a bad setting's message: the key, the value, what a good value looks like, how to fix it."""
    return ConfigError(f"{key}={value!r} is not valid: expected {expected}. {fix}")
