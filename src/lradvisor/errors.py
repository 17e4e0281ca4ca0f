"""The one library exception, and the config error that names file, field and expectation."""

from __future__ import annotations


class LRAdvisorError(Exception):
    """Base class of every error lradvisor raises on purpose.

    The CLI prints ``str(error)`` on one line and exits with code 2.
    """


class ConfigError(LRAdvisorError):
    """A model, study or data file that cannot be used as written.

    The message always names the file, the field (dotted path) and what was expected,
    so a user can fix the file without reading a traceback.
    """

    def __init__(self, file: str, field: str, expected: str, got: object = None) -> None:
        self.file = file
        self.field = field
        self.expected = expected
        self.got = got
        got_text = "" if got is None else f", got {got!r}"
        super().__init__(f"{file}: field '{field}': expected {expected}{got_text}")
