"""Errors that reach the user: each says what went wrong, where, and what to do.

The CLI prints an :class:`EsdistillError` as a short message (no traceback). Library code raises it instead
of letting a deep exception from pandas, elasticsearch-py or torch escape with no context.
"""

from __future__ import annotations

from .redact import redact


class EsdistillError(Exception):
    """A problem the user can fix. ``hint`` says how. Credentials in a URL of either are redacted
    (:func:`esdistill.redact.redact`): an error message is the likeliest place for a cluster URL to leak."""

    def __init__(self, message: str, hint: str | None = None):
        message, hint = redact(message), redact(hint)
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class InputError(EsdistillError):
    """Bad input data: a file, a line, a field."""


class ConfigError(EsdistillError):
    """A config file or an option with unknown keys or wrong types."""


class ClusterError(EsdistillError):
    """Elasticsearch cannot be reached, refused a request, or holds something incompatible."""


class ModelError(EsdistillError):
    """A model cannot be loaded or does not fit the index it is meant for."""


class EsdistillWarning(UserWarning):
    """Something the user should know that does not stop the run (data left out, a key that cannot see every
    change). The CLI prints these as one line each, and silences the libraries' own warnings."""
