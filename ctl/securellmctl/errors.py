"""CLI errors and exit codes: 0 ok, 1 failure, 2 usage, 3 daemon unreachable."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class CtlError(Exception):
    """An error to print as ``securellmctl: MESSAGE`` before exiting with ``exit_code``."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unreachable(CtlError):
    exit_code = EXIT_UNREACHABLE
