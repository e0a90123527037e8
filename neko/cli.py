"""The one ``neko`` command. Each area registers its subcommands from ``neko/commands/<area>.py``.

Subcommands are thin typed wrappers: they parse options, call one library function and print.
Heavy imports (torch, transformers) happen inside the commands so ``neko --help`` stays fast.
"""

from __future__ import annotations

import importlib

import typer

from neko.commands import one_line_errors

app = typer.Typer(
    name="neko",
    help="Generative post-recognition error correction with task-guided Mixture-of-Experts LMs.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Build, convert and inspect correction data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

# Order is the order of `neko --help`: data -> model -> train -> infer/serve -> eval -> main job.
COMMAND_MODULES = ("data", "build", "model", "train", "infer", "eval", "experiment")

for _name in COMMAND_MODULES:
    importlib.import_module(f"neko.commands.{_name}").register(app, data_app)


def _guard(typer_app: typer.Typer) -> None:
    for command in typer_app.registered_commands:
        command.callback = one_line_errors(command.callback)
    for group in typer_app.registered_groups:
        _guard(group.typer_instance)


_guard(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
