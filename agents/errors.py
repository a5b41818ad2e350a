"""User-facing errors: each says where (file, line, key) and what was expected."""

from __future__ import annotations

from pathlib import Path


class FactoryError(Exception):
    """An error a person can act on; the CLI prints it without a traceback."""


class LocatedError(FactoryError):
    def __init__(
        self,
        message: str,
        *,
        path: Path | None = None,
        line: int | None = None,
        key: str | None = None,
        expected: str | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.key = key
        self.expected = expected
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = f"{self.path}:{self.line}: " if self.line else f"{self.path}: "
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"
