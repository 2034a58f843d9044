"""The typer application and what every command shares: the console, error handling, common options.

Commands live one module each beside this file and register themselves on `app`. They parse options, call
a library function, print the result; logic a library user would need belongs in the library.
"""

from __future__ import annotations

from typing import Any

import click
import typer
from typer.core import TyperGroup

from mergeguard import __version__
from mergeguard.errors import MergeguardError


def error_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_error(error: MergeguardError) -> None:
    """One line on stderr: `error: <problem>; <fix>`."""
    from rich.markup import escape  # the message may hold [brackets] from the user's own input

    error_console().print(f"[bold red]error:[/] {escape(str(error))}", markup=True, emoji=False)


class GuardedGroup(TyperGroup):
    """Turns the project's exceptions into one line on stderr and the error's exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:  # keep the order commands were declared in
        return list(self.commands)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MergeguardError as error:
            print_error(error)
            ctx.exit(error.exit_code)


app = typer.Typer(
    cls=GuardedGroup,
    name="mergeguard",
    help="Audit merges of fine-tuned LLMs for benchmark contamination, merge them, and rank them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mergeguard {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Audit merges of fine-tuned LLMs for benchmark contamination, merge them, and rank them."""


def new_group(name: str, help_text: str) -> typer.Typer:
    """A sub-command group (e.g. `mergeguard benchmarks list`) with the same error handling."""
    group = typer.Typer(cls=GuardedGroup, name=name, help=help_text, no_args_is_help=True)
    app.add_typer(group, name=name)
    return group
