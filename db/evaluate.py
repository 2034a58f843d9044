"""Running lm-eval on a local model folder and storing its scores.

Offline (a benchmarks folder given): each benchmark's lm-eval task config is lm-eval's own YAML (the prompts,
metrics and filters the leaderboard used), with its dataset pointed at the local `<benchmark>/<split>.jsonl`
files through the `json` loader and the registry's few-shot count. Nothing is fetched from the hub. The run
writes a normal lm-eval results file, which is then imported like any other.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from mergeguard.benchmarks.registry import REGISTRY, suite_names
from mergeguard.db.lm_eval_import import parse_results_file
from mergeguard.db.queries import resolve_benchmarks
from mergeguard.db.records import ResultsFile, record_evaluations
from mergeguard.errors import BenchmarkError, MergeguardError, ModelNotFoundError, UsageError
from mergeguard.refs import require_no_custom_code


@cache
def lm_eval_task_yaml(task: str) -> Path:
    """The YAML file in the installed lm-eval that defines `task` (a plain task, not a group)."""
    import lm_eval.tasks

    root = Path(lm_eval.tasks.__file__).parent
    pattern = re.compile(rf"^task:\s*['\"]?{re.escape(task)}['\"]?\s*$", re.MULTILINE)
    for path in sorted(root.rglob("*.yaml")):
        try:
            if pattern.search(path.read_text(encoding="utf-8", errors="ignore")):
                return path
        except OSError:
            continue
    raise BenchmarkError(
        f"lm-eval has no single task named {task!r} that mergeguard can run offline",
        hint="evaluate it with lm-eval yourself and `mergeguard import` the results",
    )


def _split_of(config: dict[str, Any]) -> str:
    for key in ("test_split", "validation_split"):
        if config.get(key):
            return str(config[key])
    raise BenchmarkError(f"lm-eval task {config.get('task')!r} has no test or validation split")


def task_config(benchmark: str, benchmarks_dir: Path, *, num_fewshot: int | None = None) -> dict[str, Any]:
    """lm-eval's task config for `benchmark`, reading the local files instead of the hub."""
    from lm_eval.tasks._yaml_loader import load_yaml

    from mergeguard.benchmarks.loading import local_files

    spec = REGISTRY[benchmark]
    try:
        config = load_yaml(lm_eval_task_yaml(spec.lm_eval_task))
    except ModuleNotFoundError as error:
        raise BenchmarkError(
            f"lm-eval's {spec.lm_eval_task} task needs the Python module {error.name!r}",
            hint=f"pip install {error.name}",
        ) from error
    if "group" in config or "task_list" in config:
        raise BenchmarkError(f"{benchmark} is an lm-eval group", hint="import lm-eval's own results for it")
    files = [str(p) for p in local_files(benchmark, Path(benchmarks_dir))]
    if not files:
        raise BenchmarkError(
            f"no local files for {benchmark} under {benchmarks_dir}",
            hint=f"put them at {benchmarks_dir}/{benchmark}/<split>.jsonl",
        )
    config.update(_local_split(files, config, benchmark))
    config["num_fewshot"] = spec.num_fewshot if num_fewshot is None else num_fewshot
    config.pop("tag", None)
    config.pop("dataset_path_kwargs", None)
    return config


SUBSET_FIELDS = {"mmlu": "subject"}  # benchmarks kept in one file whose rows name their lm-eval subtask


@dataclass(frozen=True)
class GroupPlan:
    """An lm-eval group run as its subtasks; the group's score is their size-weighted mean, as lm-eval's
    `aggregate_metric_list: weight_by_size` computes it."""

    name: str
    metric: str
    subtasks: tuple[str, ...]


def _group_files(group: str) -> list[Path]:
    """The YAML files of `group`'s leaf tasks: the group's folder's tasks named `<group>_*`."""
    import lm_eval.tasks

    root = Path(lm_eval.tasks.__file__).parent
    head = re.compile(rf"^group:\s*['\"]?{re.escape(group)}['\"]?\s*$", re.MULTILINE)
    leaf = re.compile(rf"^['\"]?task['\"]?:\s*['\"]?{re.escape(group)}_\w+['\"]?\s*$", re.MULTILINE)
    for path in sorted(root.rglob("*.yaml")):
        if head.search(path.read_text(encoding="utf-8", errors="ignore")):
            return sorted(p for p in path.parent.glob("*.yaml") if leaf.search(p.read_text(encoding="utf-8")))
    return []


def _keep_subset(dataset: Any, field: str, value: str) -> Any:
    """`process_docs` for one subtask of a benchmark stored in one file (MMLU: one subject)."""
    return dataset.filter(lambda doc: doc[field] == value)


def _local_split(files: list[str], config: dict[str, Any], benchmark: str) -> dict[str, Any]:
    """Point one task config at local files: the scored split, and the few-shot split when it is local."""
    split = _split_of(config)
    data_files: dict[str, list[str]] = {split: files}
    fewshot = config.get("fewshot_split")
    sibling = Path(files[0]).with_name(f"{fewshot}.jsonl") if fewshot and fewshot != split else None
    if sibling is not None and sibling.is_file():
        data_files[str(fewshot)] = [str(sibling)]
    else:
        fewshot = split  # the hub's train split is not local; lm-eval never shows a doc its own answer
    return {
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": data_files},
        "training_split": None,
        "validation_split": split if not config.get("test_split") else None,
        "test_split": config.get("test_split") and split,
        "fewshot_split": fewshot,
    }


def task_configs(
    benchmark: str, benchmarks_dir: Path, *, num_fewshot: int | None = None
) -> tuple[list[dict[str, Any]], GroupPlan | None]:
    """lm-eval task configs for `benchmark` reading local files: one config, or one per subtask of an
    lm-eval group (MMLU's subjects, BBH's subtasks) with the plan to aggregate them."""
    from lm_eval.tasks._yaml_loader import load_yaml

    spec = REGISTRY[benchmark]
    try:
        return [task_config(benchmark, benchmarks_dir, num_fewshot=num_fewshot)], None
    except BenchmarkError as error:
        if "no single task" not in str(error):
            raise
    files = _group_files(spec.lm_eval_task)
    if not files:
        raise BenchmarkError(
            f"lm-eval has no task or group {spec.lm_eval_task!r} that mergeguard can run offline",
            hint="evaluate it with lm-eval yourself and `mergeguard import` the results",
        )
    from mergeguard.benchmarks.loading import local_files

    local = [str(p) for p in local_files(benchmark, Path(benchmarks_dir))]
    if not local:
        raise BenchmarkError(f"no local files for {benchmark} under {benchmarks_dir}")
    by_stem = {Path(p).name.split(".")[0]: p for p in local}
    if len(local) == 1 and benchmark not in SUBSET_FIELDS:
        raise BenchmarkError(
            f"mergeguard cannot split the local {benchmark} file into lm-eval's subtasks",
            hint="evaluate it with lm-eval yourself and `mergeguard import` the results",
        )
    configs = []
    for path in files:
        config = load_yaml(path)
        subset = str(config.get("dataset_name") or "")
        if len(local) > 1:
            if subset not in by_stem:
                continue  # a subtask lm-eval scores but the local copy lacks
            config.update(_local_split([by_stem[subset]], config, benchmark))
        else:
            config.update(_local_split(local, config, benchmark))
            field_name = SUBSET_FIELDS.get(benchmark)
            if field_name:
                config["process_docs"] = partial(_keep_subset, field=field_name, value=subset)
        config["num_fewshot"] = spec.num_fewshot if num_fewshot is None else num_fewshot
        config.pop("tag", None)
        configs.append(config)
    if not configs:
        raise BenchmarkError(
            f"none of lm-eval's {spec.lm_eval_task} subtasks match the local {benchmark} files",
            hint="evaluate it with lm-eval yourself and `mergeguard import` the results",
        )
    plan = GroupPlan(spec.lm_eval_task, spec.metric, tuple(c["task"] for c in configs))
    return configs, plan


def aggregate_group(results: dict[str, Any], plan: GroupPlan) -> None:
    """Add the group's size-weighted mean to lm-eval's results dict, the way lm-eval reports a group."""
    key = f"{plan.metric},none"
    total, weight = 0.0, 0
    for task in plan.subtasks:
        value = (results.get("results", {}).get(task) or {}).get(key)
        size = ((results.get("n-samples") or {}).get(task) or {}).get("effective") or 0
        if isinstance(value, (int, float)) and size:
            total += float(value) * size
            weight += size
    if weight:
        results.setdefault("results", {})[plan.name] = {
            "alias": plan.name,
            key: total / weight,
            f"{plan.metric}_stderr,none": "N/A",
        }
        results.setdefault("n-samples", {})[plan.name] = {"original": weight, "effective": weight}
        first = plan.subtasks[0]
        results.setdefault("n-shot", {})[plan.name] = (results.get("n-shot") or {}).get(first)


def custom_task_config(spec: Any, out_dir: Path) -> dict[str, Any]:
    """An lm-eval multiple-choice task for a custom benchmark (`--benchmark-spec`): its items, as the
    benchmark registry normalizes them, written to `out_dir` and scored by accuracy over the choices."""
    import json

    from mergeguard.benchmarks.loading import load_spec
    from mergeguard.db.scores import register_custom_task

    loaded = load_spec(spec, None, use_hub=False)
    rows = [
        {"question": item.question, "choices": list(item.choices), "gold": item.choices.index(item.answer)}
        for item in loaded.items
        if item.choices and item.answer in item.choices
    ]
    if not rows:
        raise BenchmarkError(
            f"custom benchmark {spec.name} has no multiple-choice items with a gold answer among the choices",
            hint="give `choices:` and `answer:` in its spec to evaluate it",
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / f"{spec.name}-{loaded.content_hash[:12]}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    register_custom_task(spec.name, ("acc",))
    return {
        "task": spec.name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": [str(data)]}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "num_fewshot": 0,
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }


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


@dataclass
class LmEvalExtras:
    """lm-eval's own run options, passed through as `lm_eval run` takes them (its spellings on `eval`)."""

    model_args: dict[str, Any] = field(default_factory=dict)
    max_batch_size: int | None = None
    apply_chat_template: bool | str = False
    system_instruction: str | None = None
    fewshot_as_multiturn: bool | None = None
    gen_kwargs: str | None = None
    log_samples: bool = False
    seeds: tuple[int, int, int, int] | None = None  # python, numpy, torch, fewshot
    include_path: str | None = None
    use_cache: str | None = None
    cache_requests: str | None = None  # true | refresh | delete
    check_integrity: bool = False
    write_out: bool = False
    predict_only: bool = False
    verbosity: str | None = None
    confirm_run_unsafe_code: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    def evaluate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `lm_eval.simple_evaluate` for these options."""
        out: dict[str, Any] = {
            "max_batch_size": self.max_batch_size,
            "apply_chat_template": self.apply_chat_template,
            "system_instruction": self.system_instruction,
            "gen_kwargs": self.gen_kwargs,
            "use_cache": self.use_cache,
            "cache_requests": self.cache_requests in ("true", "refresh"),
            "rewrite_requests_cache": self.cache_requests == "refresh",
            "delete_requests_cache": self.cache_requests == "delete",
            "check_integrity": self.check_integrity,
            "write_out": self.write_out,
            "predict_only": self.predict_only,
            "confirm_run_unsafe_code": self.confirm_run_unsafe_code,
        }
        if self.fewshot_as_multiturn is not None:
            out["fewshot_as_multiturn"] = self.fewshot_as_multiturn
        if self.verbosity:
            out["verbosity"] = self.verbosity
        if self.metadata:
            out["metadata"] = self.metadata
        if self.seeds is not None:
            python, numpy, torch, fewshot = self.seeds
            out.update(
                random_seed=python,
                numpy_random_seed=numpy,
                torch_random_seed=torch,
                fewshot_random_seed=fewshot,
            )
        return out


def parse_seed(text: str) -> tuple[int, int, int, int]:
    """lm-eval's `--seed`: one integer for all four generators, or `python,numpy,torch,fewshot`."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError as error:
        raise UsageError(f"--seed {text!r} is not a number", hint="give 1234 or 0,1234,1234,1234") from error
    if len(values) == 1:
        values *= 4
    if len(values) != 4:
        raise UsageError(f"--seed {text!r} needs 1 or 4 numbers", hint="give 1234 or 0,1234,1234,1234")
    return values[0], values[1], values[2], values[3]


def parse_key_values(text: str, flag: str) -> dict[str, Any]:
    """lm-eval's `key=value,key=value` (`--model_args`, `--metadata`), values as numbers when they are."""
    out: dict[str, Any] = {}
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        key, sep, value = piece.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} {piece!r} is not key=value", hint=f"write {flag} key=value,key=value")
        out[key.strip()] = _number_or_text(value.strip())
    return out


def _number_or_text(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return {"true": True, "false": False}.get(value.lower(), value)


def default_output_dir(db: Database) -> Path:
    """Where results files go: beside the database (`<db folder>/evals`) when it lives in a project folder,
    the user cache's evals/ when it is the user-wide default database (or in memory)."""
    from mergeguard.paths import _xdg, cache_dir

    row = db.execute("PRAGMA database_list").fetchone()
    file = Path(row[2]).resolve() if row and row[2] else None
    user_wide = (_xdg("XDG_DATA_HOME", ".local/share") / "mergeguard" / "mergeguard.db").resolve()
    if file is None or file == user_wide:
        return cache_dir() / "evals"
    return file.parent / "evals"


@contextmanager
def _no_git_noise() -> Iterator[None]:
    """lm-eval asks `git describe` for a commit hash; outside a repository git prints `fatal: not a git
    repository` on our stderr. Ask quietly for the call's duration, then put lm-eval's function back."""
    import subprocess

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
        _evaluate,
        folder=folder,
        model_args=_model_args(folder, extras, trust_remote_code),
        limit=limit,
        device=_default_device() if device is None else device,
        batch_size=batch_size,
        manager=manager,
        bootstrap_iters=bootstrap_iters,
        tracker=tracker,
        extras=extras,
    )
    results, failed = _run_all(run, specs)
    table = _aggregate_table(results, plans)
    written = _save_results(tracker, results, out, extras.log_samples)
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
) -> tuple[list[Any], list[GroupPlan], Any]:
    """Every task of the run: the registry benchmarks asked for (see `_task_specs`), then the custom YAML
    benchmarks asked for (all of them when no --tasks), their task configs written under `out`/custom."""
    from mergeguard.benchmarks import load_custom_spec

    custom = {spec.name: spec for path in custom_specs for spec in load_custom_spec(Path(path))}
    wanted_custom = [t.strip() for t in tasks or [] if t.strip() in custom] if tasks else list(custom)
    names = _benchmarks(tasks, suite, tuple(custom)) if (tasks or suite or not custom) else []
    specs, plans, manager = _task_specs(names, benchmarks_dir, num_fewshot, include_path)
    if wanted_custom:
        specs += [custom_task_config(custom[name], out / "custom") for name in wanted_custom]
    return specs, plans, manager


def _default_device() -> str:
    """lm-eval's own default is cuda, which a CPU-only machine does not have."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _model_args(folder: Path, extras: LmEvalExtras, trust_remote_code: bool) -> dict[str, Any]:
    """The HF backend's model_args: the folder in its own dtype, the user's --model_args on top, and
    trust_remote_code always ours (the folder was checked against it)."""
    return {
        "pretrained": str(folder),
        "dtype": "auto",
        **extras.model_args,
        "trust_remote_code": trust_remote_code,
    }


def _run_all(run: Any, specs: list[Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """All tasks in one lm-eval run; when that fails and there are several, each alone, so one failing task
    does not take the others' results with it (see `_one_task_at_a_time`)."""
    try:
        return run(specs), {}
    except MergeguardError as error:
        if len(specs) < 2:
            raise
        return _one_task_at_a_time(run, specs, error)


def _aggregate_table(results: dict[str, Any], plans: list[GroupPlan]) -> str:
    """Fill in the groups that ran as separate tasks, then lm-eval's own results table (as `lm_eval`
    prints it, groups below)."""
    for plan in plans:
        aggregate_group(results, plan)
    from lm_eval.utils import make_table

    return make_table(results) + (make_table(results, "groups") if "groups" in results else "")


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
) -> tuple[list[Any], list[GroupPlan], Any]:
    """lm-eval task specs for registry benchmarks, the group plans to aggregate after the run, and the task
    manager: offline (a benchmarks folder) each task's YAML pointed at local files, else lm-eval's tasks."""
    from mergeguard.paths import benchmarks_dir as default_benchmarks_dir

    local = default_benchmarks_dir(benchmarks_dir)
    from lm_eval.tasks import TaskManager

    include = {"include_path": include_path} if include_path else {}
    if local is None and names:
        return [REGISTRY[name].lm_eval_task for name in names], [], TaskManager(**include)
    specs: list[Any] = []
    plans: list[GroupPlan] = []
    for name in names:
        configs, plan = task_configs(name, local, num_fewshot=num_fewshot)
        specs += configs
        plans += [plan] if plan else []
    return specs, plans, TaskManager(include_defaults=False, **include)


def _save_results(tracker: Any, results: dict[str, Any], out: Path, log_samples: bool) -> Path:
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


def _store(db: Database, folder: Path, written: Path) -> ResultsFile:
    """Record the model (its card's base_model: the evaluated fine-tune has its parent) and import the
    results file like any other, marked as mergeguard's own run."""
    from mergeguard.db.records import register_model

    register_model(db, folder)
    parsed = parse_results_file(written, model=str(folder))
    parsed.source = "eval"
    record_evaluations(db, parsed)
    return parsed


def _task_name(spec: Any) -> str:
    return str(spec.get("task")) if isinstance(spec, dict) else str(spec)


def _one_task_at_a_time(
    run: Any, specs: list[Any], first: MergeguardError
) -> tuple[dict[str, Any], dict[str, str]]:
    """After a run of several tasks failed: each task alone, the good results merged into one dict, the
    failures named. When every task fails, the first error stands."""
    merged: dict[str, Any] = {}
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
        for key in ("results", "configs", "versions", "n-shot", "higher_is_better", "n-samples", "samples"):
            if isinstance(results.get(key), dict):
                merged.setdefault(key, {}).update(results[key])
    if not merged:
        raise first
    return merged, failed


def _evaluate(
    specs: list[Any],
    *,
    folder: Path,
    model_args: dict[str, Any],
    limit: int | float | None,
    device: str,
    batch_size: int | str,
    manager: Any,
    bootstrap_iters: int,
    tracker: Any,
    extras: LmEvalExtras,
) -> dict[str, Any]:
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
