"""Exception types. Every message is one line that names the file or input and the problem."""

from __future__ import annotations


class MetisError(Exception):
    """Base class for errors the CLI reports as a one-line message (no traceback)."""


class CheckpointError(MetisError):
    """A weight file is missing, unreadable, or does not match the expected layout."""


class MissingModelError(MetisError):
    """A model's files are not available locally and could not be downloaded."""


class AudioError(MetisError):
    """An audio file cannot be read, is empty, too short or not finite."""


class InputError(MetisError):
    """A bad argument or job description (empty text, unsupported language, bad path...)."""


class TextError(InputError):
    """The text front end cannot turn a text into phones."""


class VideoError(InputError):
    """A video cannot be read or no face/mouth can be found in it."""


class UsageError(InputError):
    """A bad option value or command line (the CLI exits 2): `--steps: must be >= 1 (got 0)`."""


class OutputError(MetisError):
    """An output file cannot be written (full filesystem, name too long, no permission...)."""


class NonFiniteError(MetisError):
    """A model produced inf/NaN values (e.g. an fp16 overflow); the message names the stage and step."""


class Cancelled(MetisError):
    """Work stopped on request (the client went away or its deadline passed)."""
