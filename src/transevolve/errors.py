"""The base class of errors caused by bad input (a config, a file, an option), not by a bug.

The command line prints these as ``error: <message>`` with exit code 2 and no traceback (``--debug`` or
``TRANSEVOLVE_DEBUG=1`` shows it). It is a :class:`ValueError`, so ``except ValueError`` keeps catching them.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: the message says what is wrong and how to fix it."""


class ConfigError(UserError):
    """A run file, comparison file or override that cannot be used."""
