"""The small vocabulary of input errors shared by every evstack command.

A user's mistake ends as one line naming the file, the key path (or line) and the reason,
and a documented exit code; never a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
"""Everything ran and every rule passed."""
EXIT_RULE_FAILED = 1
"""The input was read, but at least one rule of DOMAIN.md fails."""
EXIT_BAD_INPUT = 2
"""The input could not be read or is inconsistent (bad TOML/CSV, unknown profile, negative kW...)."""


class InputError(ValueError):
    """A user's input is wrong. Rendered as ``file: key: reason`` on one line.

    ``where`` is a key path (``piles[2].guns[1].rated_kw``) or a line (``line 7``).
    """

    def __init__(self, source: str | None, where: str | None, reason: str) -> None:
        self.source = source
        self.where = where
        self.reason = reason
        super().__init__(self.line())

    def line(self) -> str:
        parts = [p for p in (self.source, self.where) if p]
        return ": ".join([*parts, self.reason])

    def within(self, source: str) -> "InputError":
        """The same error, attributed to ``source`` if it had no file yet."""
        if self.source:
            return self
        return InputError(source, self.where, self.reason)

    def under(self, prefix: str) -> "InputError":
        """The same error with ``prefix`` put in front of its key path."""
        where = f"{prefix}.{self.where}" if self.where else prefix
        if self.where and self.where.startswith("["):
            where = f"{prefix}{self.where}"
        return InputError(self.source, where, self.reason)


def open_input(path):
    """Open a user's text file (CSV) for reading; a missing or unreadable file is an InputError."""
    src = str(path)
    try:
        return open(path, newline="", encoding="utf-8")
    except FileNotFoundError:
        raise InputError(src, None, "no such file") from None
    except (IsADirectoryError, PermissionError) as e:
        raise InputError(src, None, e.strerror) from None
