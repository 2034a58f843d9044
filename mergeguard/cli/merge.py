"""`mergeguard merge CONFIG OUT_DIR`: merge a mergekit YAML config (mergekit-yaml's flags are accepted)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from mergeguard.cli.app import app, error_console
from mergeguard.cli.check import check_merge, family_gate


@app.command("merge")
def merge_command(
    config: Path = typer.Argument(..., help="A mergekit YAML config."),
    out_dir: Path = typer.Argument(..., help="Folder to write the merged model into (must not exist)."),
    no_audit: bool = typer.Option(False, "--no-audit", help="Skip the contamination audit of the inputs."),
    device: str = typer.Option("cpu", "--device", help="Where to compute: cpu or cuda."),
    cuda: bool = typer.Option(False, "--cuda/--no-cuda", help="Alias for --device cuda (mergekit's flag)."),
    copy_tokenizer: bool = typer.Option(
        True, "--copy-tokenizer/--no-copy-tokenizer", help="Copy tokenizer files."
    ),
    lazy_unpickle: bool = typer.Option(
        False, "--lazy-unpickle/--no-lazy-unpickle", help="Accepted (always lazy)."
    ),
    low_cpu_memory: bool = typer.Option(
        False, "--low-cpu-memory/--no-low-cpu-memory", help="Accepted (no-op)."
    ),
    write_model_card: bool = typer.Option(
        True, "--write-model-card/--no-write-model-card", help="Write README.md."
    ),
    allow_crimes: bool = typer.Option(
        False, "--allow-crimes/--no-allow-crimes", help="Allow mixed architectures."
    ),
    out_shard_size: str = typer.Option(
        "5B", "--out-shard-size", help="Shard size: 5B (billion bytes), 2GB, 500M."
    ),
    random_seed: int | None = typer.Option(None, "--random-seed", help="Seed for dare/della (per tensor)."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Read pickled .bin weights (trusted only)."
    ),
    strict: bool = typer.Option(False, "--strict", help="Turn config warnings into errors."),
    force: bool = typer.Option(False, "--force", help="Replace OUT_DIR if it exists."),
    quiet: bool = typer.Option(False, "--quiet/--no-quiet", "-q", help="No progress bar."),
    allow_unrelated: bool = typer.Option(
        False, "--allow-unrelated", help="Merge inputs that fail the family check."
    ),
    check: bool = typer.Option(False, "--check", help="Sanity-check the merged model (exit 3/4 if bad)."),
) -> None:
    """Merge models from a mergekit YAML config into OUT_DIR (written atomically)."""
    from mergeguard.merge import MergeOptions, load_config, run_merge

    console = error_console()
    merge_config = load_config(config, strict=strict)
    for warning in merge_config.warnings:
        console.print(f"[yellow]warning:[/] {warning}", markup=True, emoji=False, highlight=False)
    family_gate(merge_config, allow_unrelated, console)
    options = MergeOptions(
        device="cuda" if cuda else device,
        random_seed=random_seed,
        out_shard_size=out_shard_size,
        copy_tokenizer=copy_tokenizer,
        allow_crimes=allow_crimes,
        allow_pickle=allow_pickle,
        strict=strict,
        force=force,
        quiet=quiet,
        lazy_unpickle=lazy_unpickle,
        low_cpu_memory=low_cpu_memory,
        write_model_card=write_model_card,
    )
    if quiet:
        result = run_merge(merge_config, out_dir, options)
    else:
        result = _with_progress(merge_config, out_dir, options, console)
    if not quiet:
        typer.echo(
            f"merged {len(result.models)} models with {result.method} into {result.out_dir}: "
            f"{result.tensors} tensors, {result.bytes / 1e6:.1f} MB in {result.seconds:.1f} s"
        )
    if check:
        raise typer.Exit(
            check_merge(result.out_dir, list(result.models.values()), options.device, quiet).exit_code
        )


def _with_progress(merge_config: Any, out_dir: Path, options: Any, console: Any) -> Any:
    from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from mergeguard.merge import run_merge

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("merging", total=None)

        def update(step: Any) -> None:
            bar.update(
                task,
                total=step.bytes_total,
                completed=step.bytes_done,
                description=f"{step.tensors_done}/{step.tensors_total} tensors",
            )

        options.progress = update
        return run_merge(merge_config, out_dir, options)
