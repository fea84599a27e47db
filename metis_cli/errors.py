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


def printable(text: str, controls: bool = True) -> str:
    """`text` safe to print on one line, as `ls -b` shows names: bytes of a file name that are
    not UTF-8 (Python's surrogate escapes) and control characters (unless controls=False)
    become ``\\xNN``."""
    if text.isprintable() and text.isascii():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of a file name (os.fsdecode)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:  # any other lone surrogate cannot be encoded either
            out.append(f"\\u{code:04x}")
        elif controls and (code < 0x20 or code == 0x7F):
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    return "".join(out)


class Cancelled(MetisError):
    """Work stopped on request (the client went away or its deadline passed)."""
