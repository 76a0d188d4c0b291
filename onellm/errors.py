"""The library's exceptions: one family, so callers can catch `OneLLMError`."""

from __future__ import annotations


class OneLLMError(Exception):
    """Base of every error this library raises on purpose."""


class InputError(OneLLMError, ValueError):
    """Bad user input: unknown modality, wrong shape/dtype, non-finite values, unreadable file.

    The message names the modality, what was expected and what was given.
    """


class ConfigError(OneLLMError, ValueError):
    """A config file or override is malformed: unknown key, wrong type, unset variable."""


class RegistryError(ConfigError, KeyError):
    """A registry lookup failed or a registration was refused."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(OneLLMError):
    """A checkpoint is missing, unreadable, or does not fit the model."""
