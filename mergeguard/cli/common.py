"""The typer application and what every command shares: the console, error handling, common options.

Commands live one module each beside this file and register themselves on `app` (listed in
`mergeguard.cli.COMMAND_MODULES`). They parse options, call a library function, print the result; logic a
library user would need belongs in the library.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr
from typing import Any

import click
import typer
from typer.core import TyperCommand, TyperGroup
from typer.main import get_click_param
from typer.models import ParamMeta

from mergeguard import __version__
from mergeguard.db.render import render_rows
from mergeguard.errors import MergeguardError, UsageError

COMMAND_MODULES: dict[str, str] = {
    "audit": "audit",
    "probe": "probe",
    "merge": "merge",
    "check": "check",
    "eval": "evaluate",
    "import": "importer",
    "leaderboard": "reports",
    "lineage": "reports",
    "history": "reports",
    "report": "report",
    "card": "card",
    "benchmarks": "benchmarks",
    "serve": "serve",
    "demo": "demo",
}
"""command -> the module beside this file that registers it (`mergeguard.cli.load_commands` imports only
the one being run); `--help` lists the commands in this order."""


def error_console() -> Any:
    from rich.console import Console  # rich: imported when drawing (mergeguard.lazy)

    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_error(error: MergeguardError) -> None:
    """One line on stderr: `error: <problem>; <fix>` (escaped: it may hold [brackets] from the input)."""
    from rich.markup import escape

    error_console().print(f"[bold red]error:[/] {escape(str(error))}", markup=True, emoji=False)


def warn_ignored_flags(given: dict[str, Any], what: str) -> None:
    """One warning line naming the flags given (truthy) that another tool's command line carries but that
    change nothing here: accepted, so that its command line works after swapping the program name."""
    names = [name for name, value in given.items() if value]
    if names:
        error_console().print(f"[yellow]warning:[/] {', '.join(names)}: {what}", emoji=False)


class GuardedGroup(TyperGroup):
    """Turns the project's exceptions into one line on stderr and the error's exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:  # COMMAND_MODULES's order, then declared order
        order = {name: index for index, name in enumerate(COMMAND_MODULES)}
        return sorted(self.commands, key=lambda name: order.get(name, len(order)))

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


# ---------------------------------------------------------------- options defined as a table

OptionTable = dict[str, tuple[Any, Any]]
"""name -> (type, typer.Option(...)): options a command accepts without a parameter each in its signature."""


def table_options(group: str, table: OptionTable) -> list[click.Parameter]:
    """The table's options, built by typer as for a parameter (type, default, help); each value lands in
    `ctx.meta[group][name]` (read it with `options_of`), so that a command taking many pass-through flags
    (mergekit's, lm-eval's) keeps a short signature. They are listed in `--help` like any other option."""
    params = []
    for name, (annotation, info) in table.items():
        param, convertor = get_click_param(ParamMeta(name=name, default=info, annotation=annotation))
        param.callback = _store(group, param.callback, convertor)
        param.expose_value = False
        params.append(param)
    return params


def _store(group: str, callback: Callable[..., Any] | None, convertor: Any) -> Callable[..., Any]:
    """A click callback keeping the option's value (converted as typer would) under `ctx.meta[group]`."""

    def store(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if callback is not None:
            value = callback(ctx, param, value)
        elif convertor is not None and value is not None:
            value = convertor(value)
        ctx.meta.setdefault(group, {})[param.name] = value
        return value

    return store


def options_of(ctx: click.Context, group: str) -> dict[str, Any]:
    """The values of a table's options (`table_options(group, ...)`), by name."""
    return dict(ctx.meta.get(group, {}))


def given(ctx: click.Context, group: str, labels: dict[str, str]) -> dict[str, bool]:
    """label -> whether the option `name` of `labels` was set to other than its default (for warnings)."""
    command = ctx.command
    defaults = {p.name: p.default for p in command.params}
    values = options_of(ctx, group)
    return {label: values.get(name) != defaults.get(name) for name, label in labels.items()}


def command_with(*tables: list[click.Parameter]) -> type[TyperCommand]:
    """A command class that adds the tables' options to those of the function's signature:
    `@app.command("merge", cls=command_with(MERGEKIT_FLAGS))`."""
    extra = [param for table in tables for param in table]

    class TableCommand(TyperCommand):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["params"] = [*(kwargs.get("params") or []), *extra]
            super().__init__(*args, **kwargs)

    return TableCommand


def output_format(fmt: str, as_json: bool, choices: tuple[str, ...] = FORMATS) -> str:
    """The format asked for: `--json` wins (it is an alias); anything outside `choices` is a usage error."""
    chosen = "json" if as_json else fmt.strip().lower()
    if chosen not in choices:
        raise UsageError(f"unknown format {fmt!r}", hint=f"use --format {'|'.join(choices)}")
    return chosen


@contextmanager
def quiet_stderr(enabled: bool) -> Iterator[None]:
    """Under -q, the libraries' own progress bars and log lines (all on stderr) are not shown; an error
    still reaches the user as its one line, printed after this block."""
    if not enabled:
        yield
        return
    with redirect_stderr(io.StringIO()):
        yield


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
    emit(render_rows(title, headers, rows, fmt, keep=keep))


def new_group(name: str, help_text: str) -> typer.Typer:
    """A sub-command group (e.g. `mergeguard benchmarks list`) with the same error handling."""
    group = typer.Typer(cls=GuardedGroup, name=name, help=help_text, no_args_is_help=True)
    app.add_typer(group, name=name)
    return group
