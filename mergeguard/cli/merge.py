"""`mergeguard merge CONFIG OUT_DIR`: merge a mergekit YAML config (mergekit-yaml's flags are accepted)."""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer

from mergeguard.auditor.report import AuditReport
from mergeguard.cli import audit as audit_cli
from mergeguard.cli import probe as probe_cli
from mergeguard.cli.check import check_merge
from mergeguard.cli.common import (
    DB,
    JSON_ALIAS,
    OptionTable,
    app,
    command_with,
    error_console,
    format_option,
    given,
    options_of,
    output_format,
    table_options,
    warn_ignored_flags,
)
from mergeguard.cli.progress_view import progress_view
from mergeguard.db import open_db, record_check
from mergeguard.errors import UsageError
from mergeguard.guardrails import (
    ContaminatedInputsError,
    GuardedMerge,
    GuardOptions,
    UnreadableInputsError,
    guarded_merge,
)
from mergeguard.merge.config import MergeConfig, load_config
from mergeguard.merge.options import MergeOptions, MergeResult
from mergeguard.merge.options import Progress as MergeProgress
from mergeguard.progress import ProgressCallback, ProgressEvent

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


# ---------------------------------------------------------------- options: tables where they pass through

MERGE_FLAGS: OptionTable = {  # MergeOptions fields, under the same names
    "copy_tokenizer": (
        bool,
        typer.Option(True, "--copy-tokenizer/--no-copy-tokenizer", help="Copy tokenizer files."),
    ),
    "lazy_unpickle": (
        bool,
        typer.Option(False, "--lazy-unpickle/--no-lazy-unpickle", help="Accepted (always lazy)."),
    ),
    "low_cpu_memory": (
        bool,
        typer.Option(False, "--low-cpu-memory/--no-low-cpu-memory", help="Accepted (no-op)."),
    ),
    "write_model_card": (
        bool,
        typer.Option(True, "--write-model-card/--no-write-model-card", help="Write README.md."),
    ),
    "allow_crimes": (
        bool,
        typer.Option(False, "--allow-crimes/--no-allow-crimes", help="Allow mixed architectures."),
    ),
    "out_shard_size": (
        str,
        typer.Option("5B", "--out-shard-size", help="Shard size: 5B (billion bytes), 2GB, 500M."),
    ),
    "random_seed": (
        int | None,
        typer.Option(None, "--random-seed", help="Seed for dare/della (per tensor)."),
    ),
    "allow_pickle": (
        bool,
        typer.Option(False, "--allow-pickle", help="Read pickled .bin weights (trusted only)."),
    ),
    "strict": (bool, typer.Option(False, "--strict", help="Turn config warnings into errors.")),
    "allow_unknown_keys": (
        bool,
        typer.Option(
            False,
            "--allow-unknown-keys",
            help="Ignore unknown config keys with a warning (recorded in the card).",
        ),
    ),
    "unsafe_truncate_embeddings": (
        bool,
        typer.Option(
            False,
            "--unsafe-truncate-embeddings/--no-unsafe-truncate-embeddings",
            help="UNSAFE: cut embeddings to the smallest vocabulary (same token ids assumed).",
        ),
    ),
    "mergekit_rounding": (
        bool,
        typer.Option(
            False,
            "--mergekit-rounding",
            help="Round half-precision intermediates as mergekit does "
            "(bit-identical outputs; less accurate).",
        ),
    ),
    "force": (
        bool,
        typer.Option(
            False,
            "--force",
            help="Replace OUT_DIR if it is an earlier mergeguard merge (never anything else).",
        ),
    ),
}
GUARD_FLAGS: OptionTable = {  # GuardOptions fields, under the same names
    "no_audit": (bool, typer.Option(False, "--no-audit", help="Skip the contamination audit of the inputs.")),
    "allow_unrelated": (
        bool,
        typer.Option(False, "--allow-unrelated", help="Merge inputs that fail the family check."),
    ),
    "allow_contaminated": (
        bool,
        typer.Option(
            False, "--allow-contaminated", help="Merge contaminated inputs anyway (the merge is marked so)."
        ),
    ),
    "allow_suspect": (bool, probe_cli.ALLOW_SUSPECT),
}
# mergekit-yaml's flags that change nothing here: name -> (how the warning names it, type, option)
MERGEKIT_IGNORED: dict[str, tuple[str, Any, Any]] = {
    "verbose": (
        "-v",
        int,
        typer.Option(0, "-v", count=True, help="mergekit's verbosity (accepted; see --format)."),
    ),
    "num_threads": (
        "-j/--num-threads",
        int | None,
        typer.Option(
            None,
            "-j",
            "--num-threads",
            help="mergekit's CPU threads (accepted; mergeguard sizes its workers).",
        ),
    ),
    "lora_merge_cache": (
        "--lora-merge-cache",
        str | None,
        typer.Option(
            None, "--lora-merge-cache", help="mergekit's LoRA cache folder (accepted; LoRAs merge in memory)."
        ),
    ),
    "lora_merge_dtype": (
        "--lora-merge-dtype",
        str | None,
        typer.Option(
            None, "--lora-merge-dtype", help="mergekit's LoRA dtype (accepted; the config's dtype applies)."
        ),
    ),
    "safe_serialization": (
        "--no-safe-serialization",
        bool,
        typer.Option(
            True, "--safe-serialization/--no-safe-serialization", help="Accepted: always safetensors."
        ),
    ),
    "clone_tensors": (
        "--clone-tensors",
        bool,
        typer.Option(
            False, "--clone-tensors/--no-clone-tensors", help="Accepted: tensors are always copied."
        ),
    ),
    "async_write": (
        "--async-write",
        bool,
        typer.Option(False, "--async-write/--no-async-write", help="Accepted: shards stream as they fill."),
    ),
    "write_threads": (
        "--write-threads",
        int,
        typer.Option(1, "--write-threads", help="Accepted: one writer streams shards."),
    ),
    "read_to_gpu": (
        "--read-to-gpu",
        bool,
        typer.Option(
            False, "--read-to-gpu/--no-read-to-gpu", help="Accepted: tensors go to --device when computed."
        ),
    ),
    "multi_gpu": (
        "--multi-gpu",
        bool,
        typer.Option(False, "--multi-gpu/--no-multi-gpu", help="Accepted: one device."),
    ),
}
MERGE_COMMAND = command_with(
    table_options("merge", MERGE_FLAGS),
    table_options("guard", GUARD_FLAGS),
    table_options("audit", audit_cli.AUDIT_FLAGS),
    table_options("mergekit", {name: (kind, option) for name, (_, kind, option) in MERGEKIT_IGNORED.items()}),
)
DEVICE = typer.Option("cpu", "--device", help="Where to compute: cpu or cuda.")
CUDA = typer.Option(False, "--cuda/--no-cuda", help="Alias for --device cuda (mergekit's flag).")
GPU_RICH = typer.Option(False, "--gpu-rich", help="Alias for --cuda (mergekit's).")
QUIET_MERGE = typer.Option(
    False, "--quiet/--no-quiet", "-q", "--no-progress", help="No progress bar (--no-progress: alias)."
)
TRUST_REMOTE_CODE = typer.Option(
    False,
    "--trust-remote-code/--no-trust-remote-code",
    help="Let a model's own code run (only --check loads a model; merging never runs model code).",
)
TRANSFORMERS_CACHE = typer.Option(
    None, "--transformers-cache", help="Where hub models are downloaded (sets HF_HUB_CACHE)."
)
CHECK = typer.Option(False, "--check", help="Sanity-check the merged model (exit 3/4 if bad).")
DATASET = typer.Option(
    [], "--dataset", "-d", help="MODEL=REF: a model's training data (adds to or overrides its card)."
)


@app.command("merge", cls=MERGE_COMMAND)
@_stops_on_sigterm
def merge_command(
    ctx: typer.Context,
    config: Path = typer.Argument(..., help="A mergekit YAML config."),
    out_dir: Path = typer.Argument(..., help="Folder to write the merged model into (must not exist)."),
    device: str = DEVICE,
    cuda: bool = CUDA,
    gpu_rich: bool = GPU_RICH,
    quiet: bool = QUIET_MERGE,
    fmt: str = format_option(choices=("table", "json")),
    as_json: bool = JSON_ALIAS,
    trust_remote_code: bool = TRUST_REMOTE_CODE,
    transformers_cache: str | None = TRANSFORMERS_CACHE,
    check: bool = CHECK,
    dataset: list[str] = DATASET,
    probe: str | None = probe_cli.PROBE,
    probe_limit: int | None = probe_cli.PROBE_LIMIT,
    probe_heldout: list[str] = probe_cli.PROBE_HELDOUT,
    db: Path | None = DB,
) -> None:
    """Merge models from a mergekit YAML config into OUT_DIR, after auditing every input (and the base).

    Exit status: 0 merged; 1 refused (nothing written, recorded in `history`): an input is contaminated
    (unless --allow-contaminated), suspect to the probe (unless --allow-suspect) or unrelated (unless
    --allow-unrelated); 2 any error, including an input's declared data not read completely (unless
    --skip-bad-rows); with --check, 3 degraded and 4 broken. mergekit-yaml's flags are accepted (a warning
    names those that change nothing here).

    Example: mergeguard merge ties.yml ./merged --cuda --copy-tokenizer --check
    """
    fmt = output_format(fmt, as_json, ("table", "json"))
    quiet = quiet or fmt == "json"
    device = "cuda" if cuda or gpu_rich else device  # the merge's device runs the semantic models too
    labels = {name: label for name, (label, _, _) in MERGEKIT_IGNORED.items()}
    _mergekit_environment(transformers_cache, given(ctx, "mergekit", labels))
    options = MergeOptions(**options_of(ctx, "merge"), device=device, quiet=quiet)
    merge_config = load_config(config, allow_unknown_keys=options.allow_unknown_keys)
    if not options.strict:  # under --strict the first warning is the error (the guard's preflight)
        for warning in merge_config.warnings:
            _warn(warning)
    guard = _guard_options(ctx, dataset, device, (probe, probe_limit, probe_heldout), db)
    guarded = _merge_or_show_refusal(merge_config, out_dir, options, guard, fmt)
    _show_outcome(guarded, fmt, quiet)
    if check:
        _check_and_exit(guarded.result, device, quiet, trust_remote_code, db)


def _guard_options(
    ctx: typer.Context,
    dataset: list[str],
    device: str,
    probe_flags: tuple[str | None, int | None, list[str]],
    db: Path | None,
) -> GuardOptions:
    """The guard's options from the command line: the audit's (shared with `audit`), the probe's (`--probe`,
    `--probe-limit`, `--probe-heldout`) and the overrides."""
    probe, probe_limit, probe_heldout = probe_flags
    plain, audit_options = audit_cli.audit_options(dataset, **options_of(ctx, "audit"), device=device)
    if plain:
        raise UsageError(f"--dataset {plain[0]} needs a model", hint="write --dataset MODEL=REF")
    return GuardOptions(
        **options_of(ctx, "guard"),
        audit=audit_options,
        db_path=db,
        probe=probe_cli.guard_probe_options(probe, audit_options, device, probe_limit, probe_heldout),
        probe_scope=probe or "missing",
    )


def _mergekit_environment(transformers_cache: str | None, ignored: dict[str, bool]) -> None:
    """What mergekit-yaml's flags still mean here: the hub cache folder, and a warning naming the flags
    without effect (numpy's BLAS is kept to one thread in `mergeguard.cli`, before numpy loads)."""
    if transformers_cache:
        os.environ["HF_HUB_CACHE"] = str(Path(transformers_cache).expanduser().resolve())
    warn_ignored_flags(ignored, "mergekit-yaml flags accepted but without effect in mergeguard")


def _merge_or_show_refusal(
    config: MergeConfig, out_dir: Path, options: MergeOptions, guard: GuardOptions, fmt: str
) -> GuardedMerge:
    """The guarded merge; when the guard refuses it, the audit that decided is shown before the error."""
    try:
        return _with_progress(config, out_dir, options, guard)
    except (ContaminatedInputsError, UnreadableInputsError) as error:
        report = error.audit.report
        if fmt == "json":
            typer.echo(json.dumps({"refused": str(error), "audit": report.to_json()}, default=str))
        else:
            _show_audit(report)
        raise


def _show_outcome(guarded: GuardedMerge, fmt: str, quiet: bool) -> None:
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


def _check_and_exit(
    result: MergeResult, device: str, quiet: bool, trust_remote_code: bool, db: Path | None
) -> None:
    """`--check`: the sanity check of the merged model, recorded; its verdict is the exit status."""
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


def _summary(guarded: GuardedMerge) -> dict[str, Any]:
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


def _show_audit(report: AuditReport) -> None:
    """The audit table and its evidence, on stdout, when a merge is refused."""
    from rich.console import Console  # rich: imported when drawing (mergeguard.lazy)

    audit_cli.print_report(report, Console(highlight=False))


def _warn(message: str) -> None:
    """A warning line on stderr."""
    error_console().print(f"[yellow]warning:[/] {message}", markup=True, emoji=False, highlight=False)


def _show_family(report: Any) -> None:
    for pair in report.unrelated_pairs() if report is not None else []:
        _warn(
            f"{pair.a} and {pair.b} look unrelated (weight similarity {pair.similarity:.3f}); "
            "merging anyway (--allow-unrelated)"
        )


def _with_progress(
    config: MergeConfig, out_dir: Path, options: MergeOptions, guard: GuardOptions
) -> GuardedMerge:
    """The guarded merge, with the audit's steps and the merge's tensors drawn as bars unless --quiet."""
    with progress_view(not options.quiet) as progress:
        if progress is None:
            return guarded_merge(config, out_dir, options, guard)
        audit = replace(guard.audit, progress=progress) if guard.audit is not None else None
        merging = replace(options, progress=_tensors(progress))
        return guarded_merge(config, out_dir, merging, replace(guard, audit=audit))


def _tensors(progress: ProgressCallback) -> Callable[[MergeProgress], None]:
    """The merge engine's report after each tensor, as the `merging` step of the progress view."""

    def update(done: MergeProgress) -> None:
        progress(ProgressEvent("merging", done.tensors_done, done.tensors_total))

    return update
