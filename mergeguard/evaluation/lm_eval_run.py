"""One lm-eval run: `lm_eval.simple_evaluate` on a model folder, failures as one line each, the group
scores put back, and the results file written through lm-eval's own tracker."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergeguard.errors import MergeguardError
from mergeguard.evaluation.groups import GroupPlan, aggregate_group
from mergeguard.evaluation.options import LmEvalExtras

if TYPE_CHECKING:
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

TaskSpec = str | dict[str, Any]  # an lm-eval task name, or a task config
Results = dict[str, Any]  # lm-eval's results dict
RESULT_TABLES = ("results", "configs", "versions", "n-shot", "higher_is_better", "n-samples", "samples")


def default_device() -> str:
    """lm-eval's own default is cuda, which a CPU-only machine does not have."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextmanager
def _no_git_noise() -> Iterator[None]:
    """lm-eval asks `git describe` for a commit hash; outside a repository git prints `fatal: not a git
    repository` on our stderr. Ask quietly for the call's duration, then put lm-eval's function back."""
    import lm_eval.evaluator as evaluator

    def quiet_hash() -> str | None:
        done = subprocess.run(
            ["git", "describe", "--always"],
            capture_output=True,
            text=True,
            check=False,  # noqa: S607
        )
        return done.stdout.strip() or None if done.returncode == 0 else None

    saved = evaluator.get_git_commit_hash
    evaluator.get_git_commit_hash = quiet_hash
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = saved


def evaluate(
    specs: list[TaskSpec],
    *,
    folder: Path,
    model_args: dict[str, Any],
    limit: int | float | None,
    device: str,
    batch_size: int | str,
    manager: TaskManager,
    bootstrap_iters: int,
    tracker: EvaluationTracker,
    extras: LmEvalExtras,
) -> Results:
    """One `lm_eval.simple_evaluate` call, its many exception kinds as one MergeguardError line."""
    import lm_eval

    try:
        with _no_git_noise():
            results = lm_eval.simple_evaluate(
                model="hf",
                model_args=model_args,
                tasks=specs,
                limit=limit,
                device=device,
                batch_size=batch_size,
                task_manager=manager,
                bootstrap_iters=bootstrap_iters,
                log_samples=extras.log_samples,
                evaluation_tracker=tracker,
                num_fewshot=None,
                **extras.evaluate_kwargs(),
            )
    except MergeguardError:
        raise
    except Exception as error:  # lm-eval raises many kinds; the user needs the one line
        raise MergeguardError(
            f"lm-eval failed on {folder.name}: {type(error).__name__}: {error}",
            hint="check the model folder and the benchmark files",
        ) from error
    if results is None:
        raise MergeguardError("lm-eval returned no results", hint="run on a single process")
    return dict(results)


def run_all(
    run: Callable[[list[TaskSpec]], Results], specs: list[TaskSpec]
) -> tuple[Results, dict[str, str]]:
    """All tasks in one lm-eval run; when that fails and there are several, each alone, so one failing task
    does not take the others' results with it (see `_one_task_at_a_time`)."""
    try:
        return run(specs), {}
    except MergeguardError as error:
        if len(specs) < 2:
            raise
        return _one_task_at_a_time(run, specs, error)


def _task_name(spec: TaskSpec) -> str:
    return str(spec.get("task")) if isinstance(spec, dict) else str(spec)


def _one_task_at_a_time(
    run: Callable[[list[TaskSpec]], Results], specs: list[TaskSpec], first: MergeguardError
) -> tuple[Results, dict[str, str]]:
    """After a run of several tasks failed: each task alone, the good results merged into one dict, the
    failures named. When every task fails, the first error stands."""
    merged: Results = {}
    failed: dict[str, str] = {}
    for spec in specs:
        try:
            results = run([spec])
        except MergeguardError as error:
            failed[_task_name(spec)] = error.message
            continue
        if not merged:
            merged = results
            continue
        for key in RESULT_TABLES:
            if isinstance(results.get(key), dict):
                merged.setdefault(key, {}).update(results[key])
    if not merged:
        raise first
    return merged, failed


def results_table(results: Results, plans: list[GroupPlan]) -> str:
    """Fill in the groups that ran as separate tasks, then lm-eval's own results table (as `lm_eval`
    prints it, groups below)."""
    for plan in plans:
        aggregate_group(results, plan)
    from lm_eval.utils import make_table

    return make_table(results) + (make_table(results, "groups") if "groups" in results else "")


def save_results(tracker: EvaluationTracker, results: Results, out: Path, log_samples: bool) -> Path:
    """Write the results file (and with `log_samples` each task's samples) through lm-eval's tracker; the
    results file's path, or the newest one under `out` when lm-eval put it elsewhere."""
    tracker.save_results_aggregated(results=results, samples=results.get("samples") if log_samples else None)
    if log_samples:
        for task_name in results.get("configs", {}):
            samples = (results.get("samples") or {}).get(task_name)
            if samples is not None:
                tracker.save_results_samples(task_name=task_name, samples=samples)
    sanitized = tracker.general_config_tracker.model_name_sanitized
    written = out / str(sanitized) / f"results_{tracker.date_id}.json"
    if not written.is_file():  # lm-eval moved its files: take the newest one it wrote
        written = sorted(out.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)[-1]
    return written
