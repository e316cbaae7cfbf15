"""Error types the CLI and the HTTP layer turn into one clear line (CLI exit 2, HTTP 4xx)."""

from __future__ import annotations


class LLM4TagError(Exception):
    """Base for every error caused by the user's input or configuration, not by a bug."""


class DataError(LLM4TagError):
    """A data file is missing, unreadable or holds a bad record.

    The message always names the file and, where there is one, the line or row and the field.
    """

    def __init__(self, path: str, problem: str, *, line: int | None = None, field: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        self.problem = problem
        where = self.path
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}")


class ConfigError(LLM4TagError):
    """A configuration file or value is invalid."""


class ModelError(LLM4TagError):
    """A model cannot be found or loaded."""


class PromptTooLong(ModelError):
    """One item's prompt does not fit the model's context: that item's request fails (413), not the
    batch it shares with others."""
