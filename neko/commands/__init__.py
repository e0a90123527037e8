"""CLI subcommands, one module per area; see neko/cli.py."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer


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
            typer.echo(f"error: {e}", err=True)
        except OSError as e:
            typer.echo(f"error: {os_error_message(e)}", err=True)
        raise typer.Exit(2)

    return run
