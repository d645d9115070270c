"""Errors caused by user input: printed as one clear paragraph, never as a traceback."""


class AutocriticError(Exception):
    """A mistake the user can fix (bad config, bad data, missing checkpoint): the message says how."""


class ConfigError(AutocriticError):
    pass


class DataError(AutocriticError):
    pass


class CheckpointError(AutocriticError):
    pass
