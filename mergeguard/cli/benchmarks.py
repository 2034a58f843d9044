"""`mergeguard benchmarks list|show`: the benchmark test sets, where they load from, a few of their items."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer

from mergeguard.benchmarks import REGISTRY, get_spec, load_custom_spec, load_spec, spec_status
from mergeguard.cli.common import (
    FORMATS,
    JSON_ALIAS,
    QUIET,
    emit,
    emit_rows,
    format_option,
    new_group,
    output_format,
    quiet_stderr,
)
from mergeguard.errors import BenchmarkError

group = new_group("benchmarks", "The benchmark test sets mergeguard guards against.")

DIR_OPTION = typer.Option(
    None,
    "--benchmarks-dir",
    help="Local folder of test sets (<benchmark>/<split>.jsonl...); default $MERGEGUARD_BENCHMARKS_DIR, "
    "else the Hugging Face hub.",
)
SPEC_OPTION = typer.Option(None, "--benchmark-spec", help="A custom benchmark YAML file (repeatable).")


def _console() -> Any:
    from rich.console import Console  # rich: imported when drawing (mergeguard.lazy)

    return Console(highlight=False, soft_wrap=False)


def _specs(benchmark_spec: list[Path] | None) -> list[Any]:
    custom = [spec for path in benchmark_spec or [] for spec in load_custom_spec(path)]
    return [*REGISTRY.values(), *custom]


@group.command("list")
def list_command(
    benchmarks_dir: Path | None = DIR_OPTION,
    benchmark_spec: list[Path] | None = SPEC_OPTION,
    fmt: str = format_option(),
    as_json: bool = JSON_ALIAS,
    quiet: bool = QUIET,
) -> None:
    """List the known benchmarks: suite, split, item count, where each would load from, available or not.

    Exit status: 0 listed, 2 an error (an unreadable --benchmark-spec).

    Example: mergeguard benchmarks list --benchmarks-dir ./benchmarks --format markdown
    """
    fmt = output_format(fmt, as_json, FORMATS)
    with quiet_stderr(quiet):
        rows, specs = _rows(benchmarks_dir, benchmark_spec)
    _print_list(rows, specs, fmt)


def _rows(
    benchmarks_dir: Path | None, benchmark_spec: list[Path] | None
) -> tuple[list[dict[str, Any]], list]:
    """One row per known benchmark (local copies counted; the hub is never touched), and the specs."""
    rows: list[dict[str, Any]] = []
    specs = _specs(benchmark_spec)
    for spec in specs:
        available, where = spec_status(spec, benchmarks_dir)
        items: int | None = None
        if available and not where.startswith("hub:"):
            try:  # local copies are cheap to count; the hub is never touched by `list`
                items = len(load_spec(spec, benchmarks_dir, use_hub=False).items)
            except BenchmarkError as error:
                available, where = False, error.message
        rows.append(
            {
                "name": spec.name,
                "suites": list(spec.suites),
                "split": spec.split,
                "items": items,
                "available": available,
                "source": where,
                "hf_id": spec.hf_id,
                "lm_eval_task": spec.lm_eval_task,
                "metric": spec.metric,
                "num_fewshot": spec.num_fewshot,
                "random_baseline": spec.random_baseline,
                "contained_in": list(spec.contained_in),
            }
        )
    return rows, specs


def _print_list(rows: list[dict[str, Any]], specs: list[Any], fmt: str) -> None:
    """The list as JSON, or as a table in any other format."""
    if fmt == "json":
        emit(json.dumps(rows, indent=2) + "\n")
        return
    headers = ["benchmark", "suite", "split", "items", "available", "loads from", "lm-eval task"]
    table = [
        [
            row["name"],
            ",".join(row["suites"]) or "-",
            f"{len(spec.subsets)} subtask splits" if spec.subsets_from == "split" else spec.split,
            row["items"],
            "yes" if row["available"] else "no",
            row["source"],
            f"{row['lm_eval_task']} ({row['num_fewshot']}-shot {row['metric']})"
            if row["lm_eval_task"]
            else "-",
        ]
        for spec, row in zip(specs, rows, strict=True)
    ]
    emit_rows(None, headers, table, fmt, keep=("benchmark",))


@group.command("show")
def show_command(
    name: str = typer.Argument(..., help="A benchmark name (see `mergeguard benchmarks list`)."),
    limit: int = typer.Option(3, "--limit", "-n", min=0, help="Items to show (the first N); 0: all."),
    benchmarks_dir: Path | None = DIR_OPTION,
    benchmark_spec: list[Path] | None = SPEC_OPTION,
    fmt: str = format_option(),
    as_json: bool = JSON_ALIAS,
    quiet: bool = QUIET,
) -> None:
    """Show a benchmark's first normalized items (question, choices, gold answer).

    Exit status: 0 shown, 2 an error (an unknown benchmark, data that cannot be loaded).

    Example: mergeguard benchmarks show gsm8k --limit 5 --format json
    """
    fmt = output_format(fmt, as_json)
    custom = {spec.name: spec for spec in _specs(benchmark_spec)}
    spec = custom[name] if name in custom else get_spec(name)
    with quiet_stderr(quiet):
        loaded = load_spec(spec, benchmarks_dir)
    shown = loaded.items[:limit] if limit else loaded.items
    if fmt == "json":
        payload = {
            "name": spec.name,
            "source": loaded.source,
            "content_hash": loaded.content_hash,
            "count": len(loaded.items),
            "items": [asdict(item) for item in shown],
        }
        typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))
    elif fmt in ("csv", "markdown"):
        headers = ["split", "subset", "index", "item_id", "question", "choices", "answer"]
        rows = [
            [i.split, i.subset, i.index, i.item_id, i.question, " | ".join(i.choices), i.answer]
            for i in shown
        ]
        emit_rows(None, headers, rows, fmt, keep=("question",))
    else:
        _print_items(spec.name, loaded, shown)


def _print_items(name: str, loaded: Any, shown: list[Any]) -> None:
    """The items for the terminal: where each comes from, the question, the choices (gold marked)."""
    from rich.markup import escape

    console = _console()
    console.print(f"[bold]{name}[/]: {len(loaded.items)} items from {escape(loaded.source)}")
    for item in shown:
        where = f"{item.split}{f'/{item.subset}' if item.subset else ''}#{item.index}"
        ident = f" id={item.item_id}" if item.item_id else ""
        console.print(f"\n[bold cyan]{escape(where)}[/]{escape(ident)}")
        console.print(escape(item.question), soft_wrap=True)
        for position, choice in enumerate(item.choices):
            mark = "[green]*[/]" if choice == item.answer else " "
            console.print(f" {mark} {chr(65 + position) if position < 26 else position}. {escape(choice)}")
        if item.answer and item.answer not in item.choices:
            console.print(f"[green]answer:[/] {escape(item.answer)}", soft_wrap=True)
