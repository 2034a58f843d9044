"""`run_eval`: evaluate a local model folder with lm-eval and store its scores in the database.

Offline (a benchmarks folder given) every registry benchmark runs lm-eval's own task config pointed at the
local files (see `tasks`); custom benchmarks run as generated multiple-choice tasks. The run writes a normal
lm-eval results file, which is then recorded like any imported one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergeguard.benchmarks.custom import load_custom_spec
from mergeguard.benchmarks.registry import REGISTRY, suite_names
from mergeguard.db.records import ResultsFile, record_evaluations, register_model
from mergeguard.db.scores import resolve_benchmarks
from mergeguard.errors import ModelNotFoundError, UsageError
from mergeguard.evaluation.custom_task import custom_task_config
from mergeguard.evaluation.groups import GroupPlan
from mergeguard.evaluation.lm_eval_run import (
    TaskSpec,
    default_device,
    evaluate,
    results_table,
    run_all,
    save_results,
)
from mergeguard.evaluation.options import LmEvalExtras
from mergeguard.evaluation.results_file import parse_results_file
from mergeguard.evaluation.tasks import task_configs
from mergeguard.paths import benchmarks_dir as default_benchmarks_dir
from mergeguard.paths import cache_dir, user_db_path
from mergeguard.refs import require_no_custom_code

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager
    from sqlite_utils import Database


@dataclass
class EvalSummary:
    """What an evaluation stored: the model, the results file, each benchmark's primary score (0..1),
    lm-eval's own results table (as `lm_eval` prints it), and the tasks that failed (their error line)."""

    model: str
    results_file: str
    scores: dict[str, float] = field(default_factory=dict)
    evaluations: int = 0
    table: str = ""
    failed: dict[str, str] = field(default_factory=dict)


def default_output_dir(db: Database) -> Path:
    """Where results files go: beside the database (`<db folder>/evals`) when it lives in a project folder,
    the user cache's evals/ when it is the user-wide default database (or in memory)."""
    row = db.execute("PRAGMA database_list").fetchone()
    file = Path(row[2]).resolve() if row and row[2] else None
    if file is None or file == user_db_path().resolve():
        return cache_dir() / "evals"
    return file.parent / "evals"


def _benchmarks(tasks: Sequence[str] | None, suite: str | None, custom: Sequence[str] = ()) -> list[str]:
    if tasks and suite:
        raise UsageError("give --tasks or --suite, not both")
    if tasks:
        known = [t for t in tasks if t.strip() not in custom]
        return resolve_benchmarks(known) if known else []
    if suite:
        return suite_names(suite)
    raise UsageError("nothing to evaluate", hint="give --tasks arc_challenge,gsm8k,... or --suite v1|v2")


def run_eval(
    db: Database,
    model_dir: str | Path,
    *,
    tasks: Sequence[str] | None = None,
    suite: str | None = None,
    limit: int | float | None = None,
    device: str | None = None,
    benchmarks_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    batch_size: int | str = 8,
    num_fewshot: int | None = None,
    bootstrap_iters: int = 1000,
    custom_specs: Sequence[str | Path] = (),
    trust_remote_code: bool = False,
    extras: LmEvalExtras | None = None,
) -> EvalSummary:
    """Evaluate a local model folder with lm-eval's HF backend and store the scores.

    With `benchmarks_dir` (or $MERGEGUARD_BENCHMARKS_DIR) every task reads local files; without it lm-eval
    loads its datasets from the hub. The results file lands in `output_dir` (default: beside the database
    when it lives in a project folder, else the cache's evals/). A task that fails does not take the
    others' results with it: they are stored and the failure is named in `failed`. The model is recorded
    with its card's `base_model:` as its parent. A model that needs its own code (auto_map) is refused
    unless `trust_remote_code`.
    """
    extras = extras or LmEvalExtras()
    folder = _model_folder(model_dir, trust_remote_code)
    out = Path(output_dir).expanduser() if output_dir else default_output_dir(db)
    specs, plans, manager = _plan_tasks(
        tasks, suite, custom_specs, benchmarks_dir, num_fewshot, extras.include_path, out
    )
    from lm_eval.loggers import EvaluationTracker

    tracker = EvaluationTracker(output_path=str(out))
    run = partial(
        evaluate,
        folder=folder,
        model_args=_model_args(folder, extras, trust_remote_code),
        limit=limit,
        device=default_device() if device is None else device,
        batch_size=batch_size,
        manager=manager,
        bootstrap_iters=bootstrap_iters,
        tracker=tracker,
        extras=extras,
    )
    results, failed = run_all(run, specs)
    table = results_table(results, plans)
    written = save_results(tracker, results, out, extras.log_samples)
    parsed = _store(db, folder, written)
    return _summary(folder, written, parsed, table, failed)


def _plan_tasks(
    tasks: Sequence[str] | None,
    suite: str | None,
    custom_specs: Sequence[str | Path],
    benchmarks_dir: str | Path | None,
    num_fewshot: int | None,
    include_path: str | None,
    out: Path,
) -> tuple[list[TaskSpec], list[GroupPlan], TaskManager]:
    """Every task of the run: the registry benchmarks asked for (see `_task_specs`), then the custom YAML
    benchmarks asked for (all of them when no --tasks), their task configs written under `out`/custom."""
    custom = {spec.name: spec for path in custom_specs for spec in load_custom_spec(Path(path))}
    wanted_custom = [t.strip() for t in tasks or [] if t.strip() in custom] if tasks else list(custom)
    names = _benchmarks(tasks, suite, tuple(custom)) if (tasks or suite or not custom) else []
    specs, plans, manager = _task_specs(names, benchmarks_dir, num_fewshot, include_path)
    if wanted_custom:
        specs += [custom_task_config(custom[name], out / "custom") for name in wanted_custom]
    return specs, plans, manager


def _model_args(folder: Path, extras: LmEvalExtras, trust_remote_code: bool) -> dict[str, Any]:
    """The HF backend's model_args: the folder in its own dtype, the user's --model_args on top, and
    trust_remote_code always ours (the folder was checked against it)."""
    return {
        "pretrained": str(folder),
        "dtype": "auto",
        **extras.model_args,
        "trust_remote_code": trust_remote_code,
    }


def _summary(
    folder: Path, written: Path, parsed: ResultsFile, table: str, failed: dict[str, str]
) -> EvalSummary:
    """What the caller is told: each benchmark's primary score among what was stored."""
    scores = {
        r.benchmark: r.value for r in parsed.rows if r.is_primary and r.benchmark and r.value is not None
    }
    return EvalSummary(
        model=str(folder),
        results_file=str(written),
        scores=scores,
        evaluations=len(parsed.rows),
        table=table,
        failed=failed,
    )


def _model_folder(model_dir: str | Path, trust_remote_code: bool) -> Path:
    """The model folder, resolved; refused before lm-eval loads anything when it is not a model folder or
    needs its own code that the user did not trust (lm-eval's own default would prompt or refuse later)."""
    folder = Path(model_dir).expanduser().resolve()
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise ModelNotFoundError(
            f"{model_dir} is not a local model folder (no config.json)", hint="give the folder a merge wrote"
        )
    require_no_custom_code(folder, trust_remote_code)
    return folder


def _task_specs(
    names: list[str], benchmarks_dir: str | Path | None, num_fewshot: int | None, include_path: str | None
) -> tuple[list[TaskSpec], list[GroupPlan], TaskManager]:
    """lm-eval task specs for registry benchmarks, the group plans to aggregate after the run, and the task
    manager: offline (a benchmarks folder) each task's YAML pointed at local files, else lm-eval's tasks."""
    local = default_benchmarks_dir(benchmarks_dir)
    from lm_eval.tasks import TaskManager

    include = {"include_path": include_path} if include_path else {}
    if local is None and names:
        return [REGISTRY[name].lm_eval_task for name in names], [], TaskManager(**include)
    specs: list[TaskSpec] = []
    plans: list[GroupPlan] = []
    for name in names:
        configs, plan = task_configs(name, local, num_fewshot=num_fewshot)
        specs += configs
        plans += [plan] if plan else []
    return specs, plans, TaskManager(include_defaults=False, **include)


def _store(db: Database, folder: Path, written: Path) -> ResultsFile:
    """Record the model (its card's base_model: the evaluated fine-tune has its parent) and import the
    results file like any other, marked as mergeguard's own run."""
    register_model(db, folder)
    parsed = parse_results_file(written, model=str(folder))
    parsed.source = "eval"
    record_evaluations(db, parsed)
    return parsed
