"""The one exception family of kjax.

Library code raises these; the CLI prints one line and exits with ``exit_code``. Every message says
what went wrong and what to do next, in the words of the caller: ``str(error)`` speaks Python
(``force=True``, ``weights="imagenet=PATH"``); where the command line says it differently
(``--force``, ``--weights imagenet=PATH``) the error carries that wording too, and the CLI prints it.
"""

from __future__ import annotations


class KjaxError(Exception):
    """Base of every error kjax raises on purpose.

    :param cli: the same message worded for the command line, where it names flags; None when the
        message reads the same for both.
    """

    exit_code = 1

    def __init__(self, message: str = "", *, cli: str | None = None):
        super().__init__(message)
        self.cli = cli

    @property
    def cli_message(self) -> str:
        """What the ``kjax`` command prints (after ``error: ``)."""
        return self.cli or str(self)


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


class InputError(KjaxError):
    """Inputs of the wrong shape or kind for a model (images without a batch axis, channels
    first, a score array that is not (N, 1000))."""

    exit_code = 2


class UnsupportedModelError(KjaxError):
    """A Keras model ``kjax convert`` cannot run as Flax: a layer class without an op (a Lambda, a
    custom class, a configuration the op does not cover), or a model that is no graph (subclassed)."""
