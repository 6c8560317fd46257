"""Errors fedsim raises for bad input.

Every user-facing error is a :class:`ConfigError`: one line that names what was given and what is
allowed. The CLI prints it without a traceback and exits with status 2.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad user input: an unknown name, an invalid value or missing data."""


def invalid(key: str, value: object, allowed: str) -> ConfigError:
    """Build the standard one-line error for an invalid configuration value.

    Parameters
    ----------
    key
        The dotted configuration key, e.g. ``partition.alpha``.
    value
        The value that was given.
    allowed
        A short description of what is allowed, e.g. ``"a number > 0"``.
    """
    return ConfigError(f"invalid {key}={value!r}: allowed {allowed}")


class RunStopped(RuntimeError):
    """The server stopped a run early (for example, too few clients replied); the run directory
    keeps its metrics and checkpoints, so ``resume`` can continue it."""
