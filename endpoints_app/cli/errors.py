"""The CLI's exit codes and the errors a command raises to end with one.

Every CLI module may raise these (the client, the profile reader, the command handlers), and
``main`` turns them into ``Error: <message>`` and an exit code. They live apart from the modules
that raise them so that none of those needs another just for its errors.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class CliError(Exception):
    """An error to show as ``Error: <message>`` on stderr, exiting with ``exit_code``."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, *, exit_code: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        # Extra lines shown only with --debug.
        self.detail = detail
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(CliError):
    """Bad input that no request could fix (unparsable --json, conflicting names)."""

    exit_code = EXIT_USAGE
