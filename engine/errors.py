"""Errors a user can cause. Each message names the input and says how to fix it.

The UI shows these as messages and keeps running; anything else is a bug and surfaces as one.
"""


class EngineError(Exception):
    """Base class for errors caused by user input, configuration or the environment."""


class ConfigError(EngineError, ValueError):
    """A preset, config file or override is invalid."""


class InputError(EngineError, ValueError):
    """A request argument (prompt, frame count, size, file) is invalid."""


class ModelLoadError(EngineError):
    """Model weights could not be found or loaded."""
