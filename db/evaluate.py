"""Running lm-eval on a local model folder and storing its scores.

Offline (a benchmarks folder given): each benchmark's lm-eval task config is lm-eval's own YAML (the prompts,
metrics and filters the leaderboard used), with its dataset pointed at the local `<benchmark>/<split>.jsonl`
files through the `json` loader and the registry's few-shot count. Nothing is fetched from the hub. The run
writes a normal lm-eval results file, which is then imported like any other.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from mergeguard.benchmarks.registry import REGISTRY, suite_names
from mergeguard.db.lm_eval_import import parse_results_file
from mergeguard.db.queries import resolve_benchmarks
from mergeguard.db.records import record_evaluations
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
    """What an evaluation stored: the model, the results file, and each benchmark's primary score (0..1)."""

    model: str
    results_file: str
    scores: dict[str, float] = field(default_factory=dict)
    evaluations: int = 0


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
) -> EvalSummary:
    """Evaluate a local model folder with lm-eval's HF backend and store the scores.

    With `benchmarks_dir` (or $MERGEGUARD_BENCHMARKS_DIR) every task reads local files; without it lm-eval
    loads its datasets from the hub. The results file lands in `output_dir` (default: the cache's evals/).
    A model that needs its own code (auto_map) is refused unless `trust_remote_code`.
    """
    from mergeguard.paths import benchmarks_dir as default_benchmarks_dir
    from mergeguard.paths import cache_dir

    folder = Path(model_dir).expanduser().resolve()
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise ModelNotFoundError(
            f"{model_dir} is not a local model folder (no config.json)", hint="give the folder a merge wrote"
        )
    require_no_custom_code(folder, trust_remote_code)  # lm-eval's own default would prompt or refuse later
    from mergeguard.benchmarks import load_custom_spec

    custom = {spec.name: spec for path in custom_specs for spec in load_custom_spec(Path(path))}
    wanted_custom = [t.strip() for t in tasks or [] if t.strip() in custom] if tasks else list(custom)
    names = _benchmarks(tasks, suite, tuple(custom)) if (tasks or suite or not custom) else []
    local = default_benchmarks_dir(benchmarks_dir)
    import lm_eval
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    plans: list[GroupPlan] = []
    if local is not None or not names:
        specs: list[Any] = []
        for name in names:
            configs, plan = task_configs(name, local, num_fewshot=num_fewshot)
            specs += configs
            plans += [plan] if plan else []
        manager = TaskManager(include_defaults=False)
    else:
        specs = [REGISTRY[name].lm_eval_task for name in names]
        manager = TaskManager()
    out = Path(output_dir) if output_dir else cache_dir() / "evals"
    if wanted_custom:
        specs += [custom_task_config(custom[name], out / "custom") for name in wanted_custom]
    tracker = EvaluationTracker(output_path=str(out))
    if device is None:  # lm-eval's own default is cuda, which a CPU-only machine does not have
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model_args = {"pretrained": str(folder), "dtype": "auto", "trust_remote_code": trust_remote_code}
    try:
        results = lm_eval.simple_evaluate(
            model="hf",
            model_args=model_args,
            tasks=specs,
            limit=limit,
            device=device,
            batch_size=batch_size,
            task_manager=manager,
            bootstrap_iters=bootstrap_iters,
            log_samples=False,
            evaluation_tracker=tracker,
            num_fewshot=None,
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
    for plan in plans:
        aggregate_group(results, plan)
    tracker.save_results_aggregated(results=results, samples=None)
    sanitized = tracker.general_config_tracker.model_name_sanitized
    written = out / str(sanitized) / f"results_{tracker.date_id}.json"
    if not written.is_file():  # lm-eval moved its files: take the newest one it wrote
        written = sorted(out.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)[-1]
    parsed = parse_results_file(written, model=str(folder))
    parsed.source = "eval"
    record_evaluations(db, parsed)
    scores = {
        r.benchmark: r.value for r in parsed.rows if r.is_primary and r.benchmark and r.value is not None
    }
    return EvalSummary(
        model=str(folder), results_file=str(written), scores=scores, evaluations=len(parsed.rows)
    )
