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


def warn_ignored_flags(given: dict[str, Any], what: str) -> None:
    """One warning line naming the flags given (truthy) that another tool's command line carries but that
    change nothing here: accepted, so that its command line works after swapping the program name."""
    names = [name for name, value in given.items() if value]
    if names:
        error_console().print(f"[yellow]warning:[/] {', '.join(names)}: {what}", emoji=False)


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


# ---------------------------------------------------------------- options every command shares

FORMATS = ("table", "json", "csv", "markdown")


def format_option(default: str = "table", choices: tuple[str, ...] = FORMATS) -> Any:
    """`--format` (one name for one idea on every command); `--json` stays as its alias."""
    return typer.Option(default, "--format", help=f"Output format: {', '.join(choices)}.")


JSON_ALIAS = typer.Option(False, "--json", help="Alias for --format json.")
QUIET = typer.Option(
    False, "--quiet", "-q", "--no-progress", help="No progress bars (--no-progress is an old alias)."
)
DB = typer.Option(None, "--db", help="Database file (else $MERGEGUARD_DB, else the user data folder).")


def output_format(fmt: str, as_json: bool, choices: tuple[str, ...] = FORMATS) -> str:
    """The format asked for: `--json` wins (it is an alias); anything outside `choices` is a usage error."""
    from mergeguard.errors import UsageError

    chosen = "json" if as_json else fmt.strip().lower()
    if chosen not in choices:
        raise UsageError(f"unknown format {fmt!r}", hint=f"use --format {'|'.join(choices)}")
    return chosen


def split_names(values: list[str] | None) -> list[str]:
    """Names given as repeats, commas or both (`-b gsm8k,mmlu -b arc`), in order, each once."""
    names = [name.strip() for value in values or [] for name in value.replace(" ", ",").split(",")]
    return list(dict.fromkeys(name for name in names if name))


def console(stderr: bool = False) -> Any:
    """A console as wide as the terminal (80 columns in a pipe): tables fold long names, never cut them."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def emit(rendered: Any) -> None:
    """Text formats go to stdout verbatim (pipe-safe); rich renderables through a terminal-wide console."""
    if isinstance(rendered, str):
        typer.echo(rendered, nl=not rendered.endswith("\n"))
    else:
        console().print(rendered)


def emit_rows(
    title: str | None,
    headers: list[str],
    rows: list[list[Any]],
    fmt: str,
    *,
    keep: tuple[str, ...] = ("model",),
) -> None:
    """Print one table in any of FORMATS (see `mergeguard.db.render.render_rows`)."""
    from mergeguard.db.render import render_rows

    emit(render_rows(title, headers, rows, fmt, keep=keep))


def new_group(name: str, help_text: str) -> typer.Typer:
    """A sub-command group (e.g. `mergeguard benchmarks list`) with the same error handling."""
    group = typer.Typer(cls=GuardedGroup, name=name, help=help_text, no_args_is_help=True)
    app.add_typer(group, name=name)
    return group
