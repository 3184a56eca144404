"""The project's user-facing error: one sentence naming the bad value and the fix."""


class ScalorError(Exception):
    """An error caused by user input (config, data, paths).

    The entry point prints ``str(err)`` as one line, without a traceback, and exits with code 2.
    """


class ConfigError(ScalorError):
    """An impossible or unsupported configuration."""


class DataError(ScalorError):
    """Missing, corrupt or wrongly sized input data."""
