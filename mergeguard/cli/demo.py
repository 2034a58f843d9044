"""`mergeguard demo`: the whole story offline, in a folder it creates, in a few minutes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from mergeguard.auditor.report import AuditReport
from mergeguard.cli.audit import print_report
from mergeguard.cli.common import QUIET, app
from mergeguard.demo.run import DemoOptions, run_demo


class RichReporter:
    """Prints the demo's steps for someone who has never seen the tool: a heading a step, then tables."""

    def __init__(self, console: Any) -> None:
        self.console = console

    def step(self, number: int, title: str) -> None:
        self.console.rule(f"[bold]Step {number}[/]  {title}", align="left")

    def line(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)

    def audit(self, report: dict[str, Any]) -> None:
        print_report(AuditReport.from_json(report), self.console)

    def refused(self, message: str) -> None:
        self.console.print(f"[bold red]refused:[/] {message}", highlight=False)

    def table(self, renderable: Any) -> None:
        self.console.print(renderable)


@app.command("demo")
def demo_command(
    workdir: Path | None = typer.Option(
        None, "--workdir", help="Folder to work in (default: a new temporary folder, named at the end)."
    ),
    benchmarks_dir: Path | None = typer.Option(
        None, "--benchmarks-dir", help="Real benchmark test sets: also plant and catch real GSM8K items."
    ),
    fast: bool = typer.Option(False, "--fast", help="Fewer training steps and eval items (for tests)."),
    quiet: bool = QUIET,
) -> None:
    """Show the whole story offline: fine-tune, audit, refuse, merge, evaluate, rank (-q: only the
    working folder at the end).

    Exit status: 0 the story ran to its end, 2 an error.

    Example: mergeguard demo --workdir ./mergeguard-demo
    """
    from rich.console import Console  # rich: imported when drawing (mergeguard.lazy)

    console = Console(highlight=False, quiet=quiet)  # tables fit the terminal's width, 80 columns too
    started = time.perf_counter()
    result = run_demo(DemoOptions(workdir, benchmarks_dir, fast), RichReporter(console))
    console.rule("[bold]Explore further", align="left")
    db = result.db_path
    for command in (
        f"mergeguard leaderboard --db {db}",
        f"mergeguard lineage {result.merged} --db {db}",
        f"mergeguard history --db {db}",
        f"mergeguard audit {result.workdir / 'merge-all.yml'} --benchmark-spec "
        f"{result.workdir / 'benchmarks' / 'demo_quiz.yaml'} --benchmark demo_quiz",
        f"datasette {db}    # pip install datasette",
    ):
        console.print(f"  {command}", markup=False)
    typer.echo(f"\nworking folder: {result.workdir}  ({time.perf_counter() - started:.0f} s)")
