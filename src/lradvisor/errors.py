"""The one library exception, and the config error that names file, field and expectation."""

from __future__ import annotations

import reprlib

__all__ = ["ConfigError", "LRAdvisorError", "shorten"]

#: Longest echo of a user's value in an error message (a YAML alias bomb prints gigabytes).
ECHO_LIMIT = 160

_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 6
_repr.maxstring = _repr.maxother = ECHO_LIMIT


def shorten(value: object, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters, without ever building the whole repr.

    Containers are summarised (``reprlib``: a few items per level, three levels), so the
    cost is bounded however large or self-similar the value is.
    """
    text = " ".join(_repr.repr(value).split())
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


class LRAdvisorError(Exception):
    """Base class of every error lradvisor raises on purpose.

    The CLI prints ``str(error)`` on one line and exits with code 2.
    """


class ConfigError(LRAdvisorError):
    """A model, study or data file that cannot be used as written.

    The message always names the file, the field (dotted path) and what was expected,
    so a user can fix the file without reading a traceback. The offending value is echoed
    shortened (:func:`shorten`).
    """

    def __init__(self, file: str, field: str, expected: str, got: object = None) -> None:
        self.file = file
        self.field = field
        self.expected = expected
        self.got = got
        got_text = "" if got is None else f", got {shorten(got)}"
        super().__init__(f"{file}: field '{field}': expected {expected}{got_text}")
