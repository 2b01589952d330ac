"""The one error type that means "the user's input is wrong".

The CLI prints the first line of an ``InputError`` and exits 2 before any job runs. Every
other exception that escapes is a bug in tnbench or in a plugin, shown with its traceback
(exit 1): a ``ValueError`` deep in ``prepare`` is not the user's fault and must not read as if
it were. Each module's own error (``SuiteError``, ``UsageError``, ...) subclasses it and keeps
its older base, so existing ``except ValueError`` handlers behave as before."""
from __future__ import annotations

import warnings


class InputError(Exception):
    """A bad suite, command line, name, plugin or data file; the message says what is valid."""


def existing_file(path, what: str, error: type[InputError] = InputError):
    """``path`` when it is a regular file; else ``error`` saying "WHAT PATH: not a regular file"
    (or "no such file"), the wording of every file flag."""
    if not path.is_file():
        raise error(f"{what} {path}: {'not a regular file' if path.exists() else 'no such file'}")
    return path


def one_line_warnings() -> None:
    """Print each distinct warning once, as ``warning: MESSAGE`` on one line: Python's default
    adds the source file and line of tnbench's own code, and a file read twice in one command
    (resume, then the report) warned twice. Only the text is changed (``formatwarning``), so
    whoever records warnings (``warnings.catch_warnings``, pytest) still gets every one."""
    shown: set[str] = set()

    def text(message, category, filename, lineno, line=None) -> str:
        one = " ".join(str(message).split())
        if one in shown:
            return ""
        shown.add(one)
        return f"warning: {one}\n"

    warnings.formatwarning = text
