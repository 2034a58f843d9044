"""`mergeguard eval MODEL`: run lm-eval on a local model folder and store the scores."""

from __future__ import annotations

from pathlib import Path

import typer

from mergeguard.cli.app import app

DB_OPTION = typer.Option(None, "--db", help="Database file (else $MERGEGUARD_DB, else the user data folder).")


def split_tasks(text: str | None) -> list[str] | None:
    """`arc_challenge,gsm8k` (or repeated spaces) as a list; None when not given."""
    if not text:
        return None
    return [t.strip() for t in text.replace(" ", ",").split(",") if t.strip()]


@app.command("eval")
def eval_command(
    model: Path = typer.Argument(..., help="A local model folder."),
    tasks: str | None = typer.Option(
        None, "--tasks", help="Benchmarks, comma separated (arc_challenge,gsm8k)."
    ),
    suite: str | None = typer.Option(
        None, "--suite", help="Every benchmark of a leaderboard suite: v1 or v2."
    ),
    limit: float | None = typer.Option(
        None, "--limit", help="Examples per task (testing only; <1: a fraction)."
    ),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:0, mps (default: lm-eval's)."),
    batch_size: str = typer.Option("8", "--batch-size", help="lm-eval batch size, or auto."),
    num_fewshot: int | None = typer.Option(
        None, "--num-fewshot", help="Override the leaderboard's few-shot count."
    ),
    benchmarks_dir: Path | None = typer.Option(
        None,
        "--benchmarks-dir",
        help="Local benchmark files (<benchmark>/<split>.jsonl): evaluate offline. "
        "Env: MERGEGUARD_BENCHMARKS_DIR.",
    ),
    output_dir: Path | None = typer.Option(None, "--output-dir", help="Where lm-eval's results file goes."),
    benchmark_spec: list[Path] = typer.Option(
        [], "--benchmark-spec", help="A custom benchmark YAML (multiple choice) to evaluate too; repeatable."
    ),
    db: Path | None = DB_OPTION,
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="Let a model's own code (auto_map) run: only code you trust."
    ),
) -> None:
    """Evaluate a model with lm-eval and store its scores."""
    from rich.console import Console

    from mergeguard.db import open_db, run_eval

    store = open_db(db)
    limit_value: int | float | None = int(limit) if limit is not None and limit >= 1 else limit
    summary = run_eval(
        store,
        model,
        tasks=split_tasks(tasks),
        suite=suite,
        limit=limit_value,
        device=device,
        benchmarks_dir=benchmarks_dir,
        output_dir=output_dir,
        batch_size=int(batch_size) if batch_size.isdigit() else batch_size,
        num_fewshot=num_fewshot,
        custom_specs=benchmark_spec,
        trust_remote_code=trust_remote_code,
    )
    console = Console(highlight=False)
    for benchmark, value in summary.scores.items():
        console.print(f"{benchmark}: {value * 100:.2f}")
    console.print(
        f"stored {summary.evaluations} metrics for {summary.model} (results: {summary.results_file})"
    )
