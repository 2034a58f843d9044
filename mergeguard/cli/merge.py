"""`mergeguard merge CONFIG OUT_DIR`: merge a mergekit YAML config (mergekit-yaml's flags are accepted)."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from mergeguard.cli import audit as audit_cli
from mergeguard.cli import probe as probe_cli
from mergeguard.cli.app import (
    JSON_ALIAS,
    app,
    error_console,
    format_option,
    output_format,
    warn_ignored_flags,
)
from mergeguard.cli.check import check_merge
from mergeguard.errors import UsageError

TERMINATED_EXIT = 143
"""Exit status after SIGTERM (128 + 15, what a shell reports for a process it ended); Ctrl-C gives 130."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt, so that the same cleanup runs:
    workers stopped, the temporary folder removed, no OUT_DIR."""


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into `Terminated` while the command runs (a second SIGTERM ends the process at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers
        return

    def stop(number: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated

    saved = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, saved)


def _stops_on_sigterm(command: Callable[..., None]) -> Callable[..., None]:
    """Run `command` with SIGTERM handled like Ctrl-C; it exits with `TERMINATED_EXIT`."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            with _sigterm_as_interrupt():
                command(*args, **kwargs)
        except Terminated:
            error_console().print(
                "[bold red]error:[/] stopped by SIGTERM; run the command again", markup=True
            )
            raise typer.Exit(TERMINATED_EXIT) from None

    return run


@app.command("merge")
@_stops_on_sigterm
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
    allow_unknown_keys: bool = typer.Option(
        False,
        "--allow-unknown-keys",
        help="Ignore unknown config keys with a warning (recorded in the card).",
    ),
    unsafe_truncate_embeddings: bool = typer.Option(
        False,
        "--unsafe-truncate-embeddings/--no-unsafe-truncate-embeddings",
        help="UNSAFE: cut embeddings to the smallest vocabulary (same token ids assumed).",
    ),
    mergekit_rounding: bool = typer.Option(
        False,
        "--mergekit-rounding",
        help="Round half-precision intermediates as mergekit does (bit-identical outputs; less accurate).",
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace OUT_DIR if it is an earlier mergeguard merge (never anything else)."
    ),
    quiet: bool = typer.Option(
        False, "--quiet/--no-quiet", "-q", "--no-progress", help="No progress bar (--no-progress: alias)."
    ),
    fmt: str = format_option(choices=("table", "json")),
    as_json: bool = JSON_ALIAS,
    trust_remote_code: bool = typer.Option(
        False,
        "--trust-remote-code/--no-trust-remote-code",
        help="Let a model's own code run (only --check loads a model; merging never runs model code).",
    ),
    verbose: int = typer.Option(0, "-v", count=True, help="mergekit's verbosity (accepted; see --format)."),
    num_threads: int | None = typer.Option(
        None, "-j", "--num-threads", help="mergekit's CPU threads (accepted; mergeguard sizes its workers)."
    ),
    transformers_cache: str | None = typer.Option(
        None, "--transformers-cache", help="Where hub models are downloaded (sets HF_HUB_CACHE)."
    ),
    lora_merge_cache: str | None = typer.Option(
        None, "--lora-merge-cache", help="mergekit's LoRA cache folder (accepted; LoRAs merge in memory)."
    ),
    lora_merge_dtype: str | None = typer.Option(
        None, "--lora-merge-dtype", help="mergekit's LoRA dtype (accepted; the config's dtype applies)."
    ),
    safe_serialization: bool = typer.Option(
        True, "--safe-serialization/--no-safe-serialization", help="Accepted: always safetensors."
    ),
    clone_tensors: bool = typer.Option(
        False, "--clone-tensors/--no-clone-tensors", help="Accepted: tensors are always copied."
    ),
    async_write: bool = typer.Option(
        False, "--async-write/--no-async-write", help="Accepted: shards stream as they fill."
    ),
    write_threads: int = typer.Option(1, "--write-threads", help="Accepted: one writer streams shards."),
    read_to_gpu: bool = typer.Option(
        False, "--read-to-gpu/--no-read-to-gpu", help="Accepted: tensors go to --device when computed."
    ),
    multi_gpu: bool = typer.Option(False, "--multi-gpu/--no-multi-gpu", help="Accepted: one device."),
    gpu_rich: bool = typer.Option(False, "--gpu-rich", help="Alias for --cuda (mergekit's)."),
    allow_unrelated: bool = typer.Option(
        False, "--allow-unrelated", help="Merge inputs that fail the family check."
    ),
    check: bool = typer.Option(False, "--check", help="Sanity-check the merged model (exit 3/4 if bad)."),
    allow_contaminated: bool = typer.Option(
        False, "--allow-contaminated", help="Merge contaminated inputs anyway (the merge is marked so)."
    ),
    dataset: list[str] = typer.Option(
        [], "--dataset", "-d", help="MODEL=REF: a model's training data (adds to or overrides its card)."
    ),
    text_field: str | None = audit_cli.TEXT_FIELD,
    benchmarks_dir: Path | None = audit_cli.BENCHMARKS_DIR,
    benchmark: list[str] = audit_cli.BENCHMARK,
    benchmark_spec: list[Path] = audit_cli.BENCHMARK_SPEC,
    threshold_rate: float = audit_cli.THRESHOLD_RATE,
    allow_verbatim: bool = audit_cli.ALLOW_VERBATIM,
    cache_dir: Path | None = audit_cli.CACHE_DIR,
    skip_bad_rows: bool = audit_cli.SKIP_BAD_ROWS,
    semantic: bool = audit_cli.SEMANTIC,
    embedding_model: str | None = audit_cli.EMBEDDING_MODEL,
    judge: str | None = audit_cli.JUDGE,
    semantic_min_chars: int = audit_cli.SEMANTIC_MIN_CHARS,
    probe: str | None = probe_cli.PROBE,
    probe_limit: int | None = probe_cli.PROBE_LIMIT,
    allow_suspect: bool = probe_cli.ALLOW_SUSPECT,
    db: Path | None = typer.Option(None, "--db", help="Database file (else $MERGEGUARD_DB)."),
) -> None:
    """Merge models from a mergekit YAML config into OUT_DIR, after auditing every input (and the base).

    Refused (exit 1, nothing written, recorded in `history`) when an input is contaminated, unless
    --allow-contaminated; refused (exit 2) when an input's declared data cannot be read completely, unless
    --skip-bad-rows. Any other error exits 2. mergekit-yaml's flags are accepted (a warning names those
    that change nothing here).

    Example: mergeguard merge ties.yml ./merged --cuda --copy-tokenizer --check
    """
    fmt = output_format(fmt, as_json, ("table", "json"))
    quiet = quiet or fmt == "json"
    device = "cuda" if cuda or gpu_rich else device  # the merge's device runs the semantic models too
    _mergekit_environment(
        transformers_cache,
        {
            "-v": verbose > 0,
            "-j/--num-threads": num_threads is not None,
            "--lora-merge-cache": lora_merge_cache is not None,
            "--lora-merge-dtype": lora_merge_dtype is not None,
            "--no-safe-serialization": not safe_serialization,
            "--clone-tensors": clone_tensors,
            "--async-write": async_write,
            "--write-threads": write_threads != 1,
            "--read-to-gpu": read_to_gpu,
            "--multi-gpu": multi_gpu,
        },
    )
    from mergeguard.guardrails import GuardOptions
    from mergeguard.merge import MergeOptions, load_config

    merge_config = load_config(config, strict=strict, allow_unknown_keys=allow_unknown_keys)
    for warning in merge_config.warnings:
        _warn(warning)
    plain, audit_options = audit_cli.audit_options(
        dataset,
        text_field=text_field,
        benchmarks_dir=benchmarks_dir,
        benchmark=benchmark,
        benchmark_spec=benchmark_spec,
        threshold_rate=threshold_rate,
        allow_verbatim=allow_verbatim,
        cache_dir=cache_dir,
        progress=not quiet,
        skip_bad_rows=skip_bad_rows,
        semantic=semantic,
        embedding_model=embedding_model,
        judge=judge,
        device=device,
        semantic_min_chars=semantic_min_chars,
    )
    if plain:
        raise UsageError(f"--dataset {plain[0]} needs a model", hint="write --dataset MODEL=REF")
    guard = GuardOptions(
        audit=audit_options,
        no_audit=no_audit,
        allow_contaminated=allow_contaminated,
        allow_unrelated=allow_unrelated,
        db_path=db,
        probe=probe_cli.guard_probe_options(probe, audit_options, device, probe_limit),
        probe_scope=probe or "missing",
        allow_suspect=allow_suspect,
    )
    options = MergeOptions(
        device=device,
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
        allow_unknown_keys=allow_unknown_keys,
        unsafe_truncate_embeddings=unsafe_truncate_embeddings,
        mergekit_rounding=mergekit_rounding,
    )
    guarded = _merge_or_show_refusal(config, out_dir, options, guard, fmt)
    _show_outcome(guarded, fmt, quiet)
    if check:
        _check_and_exit(guarded.result, device, quiet, trust_remote_code, db)


def _mergekit_environment(transformers_cache: str | None, ignored: dict[str, bool]) -> None:
    """What mergekit-yaml's flags still mean here: the hub cache folder, and a warning naming the flags
    without effect; numpy's BLAS kept to one thread for the merge's workers."""
    if transformers_cache:
        os.environ["HF_HUB_CACHE"] = str(Path(transformers_cache).expanduser().resolve())
    warn_ignored_flags(ignored, "mergekit-yaml flags accepted but without effect in mergeguard")
    if "numpy" not in sys.modules:  # numpy's BLAS threads would spin on the cores that the merge's
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # workers need (~0.3 s of CPU a merge)


def _merge_or_show_refusal(config: Path, out_dir: Path, options: Any, guard: Any, fmt: str) -> Any:
    """The guarded merge; when the guard refuses it, the audit that decided is shown before the error."""
    from mergeguard.guardrails import ContaminatedInputsError, UnreadableInputsError

    try:
        return _with_progress(config, out_dir, options, guard)
    except (ContaminatedInputsError, UnreadableInputsError) as error:
        if fmt == "json":
            typer.echo(json.dumps({"refused": str(error), "audit": error.audit.report}, default=str))
        else:
            _show_audit(error.audit.report)
        raise


def _show_outcome(guarded: Any, fmt: str, quiet: bool) -> None:
    """Warnings and the family check on stderr; the JSON summary, or the verdict and a one-line summary."""
    result = guarded.result
    for warning in guarded.warnings:
        _warn(warning)
    _show_family(guarded.family)
    if fmt == "json":
        typer.echo(json.dumps(_summary(guarded), default=str))
    elif not quiet:
        if guarded.audit is not None:
            how = "reused a stored audit" if guarded.audit.reused else "audited the inputs"
            typer.echo(f"{how}: the merge is {guarded.verdict}")
        typer.echo(
            f"merged {len(result.models)} models with {result.method} into {result.out_dir}: "
            f"{result.tensors} tensors, {result.bytes / 1e6:.1f} MB in {result.seconds:.1f} s"
        )


def _check_and_exit(result: Any, device: str, quiet: bool, trust_remote_code: bool, db: Path | None) -> None:
    """`--check`: the sanity check of the merged model, recorded; its verdict is the exit status."""
    from mergeguard.db import open_db, record_check

    report = check_merge(
        result.out_dir,
        list(result.models.values()),
        device,
        quiet,
        trust_remote_code=trust_remote_code,
        base=result.models.get(result.base_model) if result.base_model else None,
    )
    record_check(open_db(db), result.out_dir, report.verdict, report.summary())
    raise typer.Exit(report.exit_code)


def _summary(guarded: Any) -> dict[str, Any]:
    """`merge --format json`: what was merged, where, how long, and the verdict it carries."""
    result = guarded.result
    return {
        "out_dir": str(result.out_dir),
        "method": result.method,
        "models": [str(path) for path in result.models.values()],
        "tensors": result.tensors,
        "bytes": result.bytes,
        "seconds": round(result.seconds, 3),
        "verdict": guarded.verdict,
        "audit_reused": bool(guarded.audit and guarded.audit.reused),
        "merge_id": guarded.merge_id,
        "warnings": list(guarded.warnings),
    }


def _show_audit(report: dict[str, Any]) -> None:
    """The audit table and its evidence, on stdout, when a merge is refused."""
    from rich.console import Console

    from mergeguard.auditor.report import AuditReport
    from mergeguard.cli.audit import print_report

    print_report(AuditReport.from_json(report), Console(highlight=False))


def _warn(message: str) -> None:
    """A warning line on stderr (rich is imported only when there is one: ~35 ms of every merge's start)."""
    error_console().print(f"[yellow]warning:[/] {message}", markup=True, emoji=False, highlight=False)


def _show_family(report: Any) -> None:
    for pair in report.unrelated_pairs() if report is not None else []:
        _warn(
            f"{pair.a} and {pair.b} look unrelated (weight similarity {pair.similarity:.3f}); "
            "merging anyway (--allow-unrelated)"
        )


def _with_progress(config: Path, out_dir: Path, options: Any, guard: Any) -> Any:
    """The guarded merge, with a progress bar of tensors and bytes unless --quiet."""
    from mergeguard.guardrails import guarded_merge

    if options.quiet:
        return guarded_merge(config, out_dir, options, guard)
    from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=error_console(),
        transient=True,
    )
    task = bar.add_task("merging", total=None)

    def update(step: Any) -> None:
        if not bar.live.is_started:  # drawn from the first finished tensor: until then this process
            bar.start()  # has one thread, so the merge's worker processes can be forked (fast)
        bar.update(
            task,
            total=step.bytes_total,
            completed=step.bytes_done,
            description=f"{step.tensors_done}/{step.tensors_total} tensors",
        )

    options.progress = update
    try:
        return guarded_merge(config, out_dir, options, guard)
    finally:
        if bar.live.is_started:
            bar.stop()
