"""CLI subcommands, one module per area; see neko/cli.py."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NoReturn

import typer


def fail(error: object, code: int = 2) -> NoReturn:
    """End the command with one ``error: ...`` line on stderr and exit ``code`` (2: bad input or an
    unwritable output; 1 and 3 where a command documents them). Never a traceback."""
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(code)


def one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """An unwritable output or unreadable file anywhere in a command ends it with one ``error:`` line
    naming the file and the fix (exit 2), never a traceback: the safety net under the commands' own
    handling of bad input. Applied to every command by neko/cli.py."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        from neko.io import OutputError, os_error_message

        try:
            return command(*args, **kwargs)
        except OutputError as e:
            fail(e)
        except OSError as e:
            fail(os_error_message(e))

    return run
