"""Errors caused by user input: printed as one clear paragraph, never as a traceback."""


class AutocriticError(Exception):
    """A mistake the user can fix (bad config, bad data, missing checkpoint): the message says how."""


class ConfigError(AutocriticError):
    pass


class DataError(AutocriticError):
    pass


class CheckpointError(AutocriticError):
    pass


class DivergedError(AutocriticError):
    """Training ran but the model did not learn (exploding or collapsed scores): nothing is exported as a model."""

    exit_code = 3


class Interrupted(AutocriticError):
    """SIGTERM or SIGINT stopped the run; the message says what was saved and how to resume."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class AlreadyDone(Exception):
    """Nothing to do (e.g. resume=auto after a finished run): said once, exit status 0."""


def is_of_kind(value, kinds: tuple[type, ...]) -> bool:
    """isinstance, except that true/false is not a number (bool subclasses int)."""
    return isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))


def invalid_value(key: str, value, expected: str, fix: str) -> ConfigError:
    """The one shape of a bad setting's message: the key, the value, what a good value looks like, how to fix it."""
    return ConfigError(f"{key}={value!r} is not valid: expected {expected}. {fix}")
