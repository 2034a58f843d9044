"""`mergeguard eval MODEL`: run lm-eval on a local model folder and store the scores.

lm-eval's own spellings are accepted (`--num_fewshot`, `--batch_size`, `--model_args`, `--output_path`,
...), so an `lm_eval run` command line works after swapping the program name and giving the model folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from mergeguard.cli.common import (
    DB,
    FORMATS,
    JSON_ALIAS,
    QUIET,
    OptionTable,
    app,
    command_with,
    emit,
    emit_rows,
    format_option,
    given,
    options_of,
    output_format,
    quiet_stderr,
    split_names,
    table_options,
    warn_ignored_flags,
)
from mergeguard.db import open_db
from mergeguard.errors import MergeguardError, UsageError
from mergeguard.evaluation import LmEvalExtras, parse_key_values, parse_seed, run_eval

DB_OPTION = DB  # the name other command modules import


def split_tasks(text: str | None) -> list[str] | None:
    """`arc_challenge,gsm8k` (or repeated spaces) as a list; None when not given."""
    return split_names([text]) if text else None


def _chat_template(value: str | None) -> str | bool:
    """`--apply_chat_template` as lm-eval takes it: a template's name, or whether to use the default one."""
    return value if value not in (None, "", "true") else bool(value is not None)


def _model_and_args(model: Path | None, lm_model: str, model_args: str | None) -> tuple[Path, dict]:
    """The model folder (the argument, or lm-eval's `--model_args pretrained=`) and the other model args."""
    if lm_model not in ("hf", "huggingface"):
        raise UsageError(f"--model {lm_model} is not run by mergeguard", hint="use --model hf (the default)")
    extra_args = parse_key_values(model_args, "--model_args") if model_args else {}
    pretrained = extra_args.pop("pretrained", None)
    if model is None and pretrained is None:
        raise UsageError(
            "no model to evaluate", hint="give a model folder, or --model_args pretrained=FOLDER"
        )
    return (model if model is not None else Path(str(pretrained))), extra_args


def _raise_if_failed(summary: Any) -> None:
    """A failed task is an error (exit 2) that names it; the other tasks' scores are already stored."""
    if summary.failed:
        task, why = next(iter(summary.failed.items()))
        more = f" (and {len(summary.failed) - 1} more tasks)" if len(summary.failed) > 1 else ""
        raise MergeguardError(
            f"task {task} failed{more}: {why}",
            hint="the other tasks' scores are stored; fix that task and evaluate it again",
        )


TASKS = typer.Option(
    [], "--tasks", "-t", "--benchmark", help="Benchmarks: repeat or comma separate (arc_challenge,gsm8k)."
)
SUITE = typer.Option(None, "--suite", help="Every benchmark of a leaderboard suite: v1 or v2.")
LIMIT = typer.Option(
    None,
    "--limit",
    "-L",
    help="Examples per task, as lm-eval's --limit (<1: a fraction); marked on the board.",
)
DEVICE = typer.Option(None, "--device", help="cpu, cuda, cuda:0, mps (default: cuda if any).")
BATCH_SIZE = typer.Option("8", "--batch-size", "--batch_size", "-b", help="Batch size, or auto.")
NUM_FEWSHOT = typer.Option(
    None, "--num-fewshot", "--num_fewshot", "-f", help="Override the leaderboard's few-shot count."
)
LM_MODEL = typer.Option("hf", "--model", "-M", help="lm-eval's model type: only hf runs here.")
MODEL_ARGS = typer.Option(
    None, "--model_args", "--model-args", "-a", help="lm-eval's key=value,... (pretrained=, dtype=, ...)."
)
BENCHMARKS_DIR = typer.Option(
    None,
    "--benchmarks-dir",
    help="Local benchmark files (<benchmark>/<split>.jsonl): evaluate offline. "
    "Env: MERGEGUARD_BENCHMARKS_DIR.",
)
OUTPUT_DIR = typer.Option(
    None,
    "--output-dir",
    "--output_path",
    "-o",
    help="Where lm-eval's results file goes (default: evals/ beside a project's --db, else the cache).",
)
BENCHMARK_SPEC = typer.Option(
    [], "--benchmark-spec", help="A custom benchmark YAML (multiple choice) to evaluate too; repeatable."
)
TRUST_REMOTE_CODE = typer.Option(
    False, "--trust-remote-code", "--trust_remote_code", help="Let a model's own code (auto_map) run."
)
LM_EVAL_FLAGS: OptionTable = {  # lm-eval's run options (LmEvalExtras), under its spellings
    "max_batch_size": (
        int | None,
        typer.Option(None, "--max_batch_size", "--max-batch-size", help="Cap for auto."),
    ),
    "apply_chat_template": (
        str | None,
        typer.Option(
            None,
            "--apply_chat_template",
            "--apply-chat-template",
            help="Use the chat template (or name one).",
        ),
    ),
    "system_instruction": (str | None, typer.Option(None, "--system_instruction", help="lm-eval's.")),
    "fewshot_as_multiturn": (
        bool | None,
        typer.Option(
            None, "--fewshot_as_multiturn/--no-fewshot_as_multiturn", help="lm-eval's (with a chat template)."
        ),
    ),
    "gen_kwargs": (str | None, typer.Option(None, "--gen_kwargs", "--gen-kwargs", help="lm-eval's k=v,...")),
    "log_samples": (
        bool,
        typer.Option(False, "--log_samples", "--log-samples", "-s", help="Save samples too."),
    ),
    "seed": (str | None, typer.Option(None, "--seed", help="lm-eval's: N, or python,numpy,torch,fewshot.")),
    "include_path": (
        str | None,
        typer.Option(None, "--include_path", help="Extra lm-eval task YAML folder."),
    ),
    "use_cache": (
        str | None,
        typer.Option(None, "--use_cache", "-c", help="lm-eval's sqlite cache of answers."),
    ),
    "cache_requests": (str | None, typer.Option(None, "--cache_requests", help="true, refresh or delete.")),
    "check_integrity": (bool, typer.Option(False, "--check_integrity", help="lm-eval's task tests.")),
    "write_out": (bool, typer.Option(False, "--write_out", "-w", help="Print the first prompts.")),
    "predict_only": (bool, typer.Option(False, "--predict_only", "-x", help="lm-eval's: no metrics.")),
    "verbosity": (str | None, typer.Option(None, "--verbosity", help="lm-eval's log level.")),
    "metadata": (str | None, typer.Option(None, "--metadata", help="lm-eval's k=v,... task metadata.")),
    "confirm_run_unsafe_code": (bool, typer.Option(False, "--confirm_run_unsafe_code", help="lm-eval's.")),
}
# lm-eval's flags that change nothing here: name -> (how the warning names it, type, option)
LM_EVAL_IGNORED: dict[str, tuple[str, Any, Any]] = {
    "show_config": (
        "--show_config",
        bool,
        typer.Option(False, "--show_config", help="Accepted (no effect)."),
    ),
    "wandb_args": (
        "--wandb_args",
        str | None,
        typer.Option(None, "--wandb_args", help="Accepted (no effect: offline)."),
    ),
    "wandb_config_args": (
        "--wandb_config_args",
        str | None,
        typer.Option(None, "--wandb_config_args", help="Accepted (no effect)."),
    ),
    "trackio_args": (
        "--trackio_args",
        str | None,
        typer.Option(None, "--trackio_args", help="Accepted (no effect)."),
    ),
    "hf_hub_log_args": (
        "--hf_hub_log_args",
        str | None,
        typer.Option(None, "--hf_hub_log_args", help="Accepted (no effect)."),
    ),
    "config_file": (
        "--config",
        str | None,
        typer.Option(None, "--config", "-C", help="Accepted (no effect)."),
    ),
    "samples": ("--samples", str | None, typer.Option(None, "--samples", "-E", help="Accepted (no effect).")),
}
EVAL_COMMAND = command_with(
    table_options("lm_eval", LM_EVAL_FLAGS),
    table_options(
        "lm_eval_ignored", {name: (kind, option) for name, (_, kind, option) in LM_EVAL_IGNORED.items()}
    ),
)


@app.command("eval", cls=EVAL_COMMAND)
def eval_command(
    ctx: typer.Context,
    model: Path | None = typer.Argument(None, help="A local model folder (or --model_args pretrained=...)."),
    tasks: list[str] = TASKS,
    suite: str | None = SUITE,
    limit: float | None = LIMIT,
    device: str | None = DEVICE,
    batch_size: str = BATCH_SIZE,
    num_fewshot: int | None = NUM_FEWSHOT,
    lm_model: str = LM_MODEL,
    model_args: str | None = MODEL_ARGS,
    benchmarks_dir: Path | None = BENCHMARKS_DIR,
    output_dir: Path | None = OUTPUT_DIR,
    benchmark_spec: list[Path] = BENCHMARK_SPEC,
    fmt: str = format_option(),
    as_json: bool = JSON_ALIAS,
    quiet: bool = QUIET,
    db: Path | None = DB,
    trust_remote_code: bool = TRUST_REMOTE_CODE,
) -> None:
    """Evaluate a model with lm-eval, print lm-eval's results table and store the scores. The model is
    recorded with its card's `base_model:` as its parent; a task that fails leaves the others' scores
    stored (exit 2 names it).

    Exit status: 0 stored, 2 an error (bad input, missing files, a task that failed).

    Example: mergeguard eval ./merged --tasks arc_challenge,gsm8k --num_fewshot 0 --batch_size 16
    """
    fmt = output_format(fmt, as_json, FORMATS)
    folder, extra_args = _model_and_args(model, lm_model, model_args)
    labels = {name: label for name, (label, _, _) in LM_EVAL_IGNORED.items()}
    warn_ignored_flags(given(ctx, "lm_eval_ignored", labels), "lm-eval flags accepted, without effect here")
    extras = _extras(options_of(ctx, "lm_eval"), extra_args)
    store = open_db(db)
    with quiet_stderr(quiet):
        summary = run_eval(
            store,
            folder,
            tasks=split_names(tasks) or None,
            suite=suite,
            limit=int(limit) if limit is not None and limit >= 1 else limit,
            device=device,
            benchmarks_dir=benchmarks_dir,
            output_dir=output_dir,
            batch_size=int(batch_size) if batch_size.isdigit() else batch_size,
            num_fewshot=num_fewshot,
            custom_specs=benchmark_spec,
            trust_remote_code=trust_remote_code,
            extras=extras,
        )
    _print_summary(summary, fmt, quiet)
    _raise_if_failed(summary)


def _extras(flags: dict[str, Any], model_args: dict[str, Any]) -> LmEvalExtras:
    """LmEvalExtras from lm-eval's flags, those that need reading first read (chat template, seeds,
    metadata)."""
    flags = dict(flags)
    seed, metadata, template = flags.pop("seed"), flags.pop("metadata"), flags.pop("apply_chat_template")
    return LmEvalExtras(
        **flags,
        model_args=model_args,
        apply_chat_template=_chat_template(template),
        seeds=parse_seed(seed) if seed else None,
        metadata=parse_key_values(metadata, "--metadata") if metadata else {},
    )


def _print_summary(summary: Any, fmt: str, quiet: bool) -> None:
    """lm-eval's own results table (as `lm_eval` prints it) and where the scores went; or the scores
    as JSON, CSV or Markdown rows."""
    rows = [[benchmark, round(value * 100, 4)] for benchmark, value in summary.scores.items()]
    if fmt != "table":
        emit_rows(None, ["benchmark", "score"], rows, fmt)
        return
    if summary.table:
        emit(summary.table if summary.table.endswith("\n") else summary.table + "\n")
    if not quiet or not summary.table:
        emit(f"stored {summary.evaluations} metrics for {summary.model} (results: {summary.results_file})\n")
