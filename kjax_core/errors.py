"""The one exception family of kjax.

Library code raises these; the CLI prints ``str(error)`` as one line and exits with ``exit_code``.
Every message says what went wrong and what to do next.
"""

from __future__ import annotations


class KjaxError(Exception):
    """Base of every error kjax raises on purpose."""

    exit_code = 1


class UnknownModelError(KjaxError):
    """A model name no loaded plugin provides."""

    exit_code = 2


class OptionError(KjaxError):
    """An option that the model does not take, or a value of the wrong type or range."""

    exit_code = 2


class WeightsError(KjaxError):
    """Weights that cannot be had or do not fit the model (missing, unexpected or mis-shaped)."""


class CorruptFileError(KjaxError):
    """A file that is unreadable, truncated, or not what it claims to be."""


class OutputError(KjaxError):
    """An output location that cannot be written, or exists already."""


class PluginError(KjaxError):
    """A plugin that failed to load or registered something inconsistent."""
