"""lm-eval task configs for registry benchmarks that read local files instead of the hub.

Each benchmark's config is lm-eval's own YAML (the prompts, metrics and filters the leaderboard used), with
its dataset pointed at the local `<benchmark>/<split>.jsonl` files through the `json` loader and the
registry's few-shot count. Nothing is fetched from the hub.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergeguard.benchmarks.loading import local_files
from mergeguard.benchmarks.registry import REGISTRY
from mergeguard.errors import BenchmarkError
from mergeguard.evaluation.groups import GroupPlan
from mergeguard.evaluation.task_yaml import group_task_files, lm_eval_task_yaml, load_task_yaml

if TYPE_CHECKING:
    from datasets import Dataset

SUBSET_FIELDS = {"mmlu": "subject"}  # benchmarks kept in one file whose rows name their lm-eval subtask
RUN_IT_YOURSELF = "evaluate it with lm-eval yourself and `mergeguard import` the results"


def _split_of(config: dict[str, Any]) -> str:
    for key in ("test_split", "validation_split"):
        if config.get(key):
            return str(config[key])
    raise BenchmarkError(f"lm-eval task {config.get('task')!r} has no test or validation split")


def _local(benchmark: str, benchmarks_dir: Path) -> list[str]:
    return [str(p) for p in local_files(benchmark, Path(benchmarks_dir))]


def task_config(benchmark: str, benchmarks_dir: Path, *, num_fewshot: int | None = None) -> dict[str, Any]:
    """lm-eval's task config for `benchmark`, reading the local files instead of the hub."""
    spec = REGISTRY[benchmark]
    try:
        config = load_task_yaml(lm_eval_task_yaml(spec.lm_eval_task))
    except ModuleNotFoundError as error:
        raise BenchmarkError(
            f"lm-eval's {spec.lm_eval_task} task needs the Python module {error.name!r}",
            hint=f"pip install {error.name}",
        ) from error
    if "group" in config or "task_list" in config:
        raise BenchmarkError(f"{benchmark} is an lm-eval group", hint="import lm-eval's own results for it")
    files = _local(benchmark, benchmarks_dir)
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


def _keep_subset(dataset: Dataset, field: str, value: str) -> Dataset:
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
    spec = REGISTRY[benchmark]
    try:
        return [task_config(benchmark, benchmarks_dir, num_fewshot=num_fewshot)], None
    except BenchmarkError as error:
        if "no single task" not in str(error):
            raise
    files = group_task_files(spec.lm_eval_task)
    if not files:
        raise BenchmarkError(
            f"lm-eval has no task or group {spec.lm_eval_task!r} that mergeguard can run offline",
            hint=RUN_IT_YOURSELF,
        )
    local = _local(benchmark, benchmarks_dir)
    if not local:
        raise BenchmarkError(f"no local files for {benchmark} under {benchmarks_dir}")
    if len(local) == 1 and benchmark not in SUBSET_FIELDS:
        raise BenchmarkError(
            f"mergeguard cannot split the local {benchmark} file into lm-eval's subtasks",
            hint=RUN_IT_YOURSELF,
        )
    fewshot = spec.num_fewshot if num_fewshot is None else num_fewshot
    configs = [c for c in (_subtask_config(p, local, benchmark, fewshot) for p in files) if c is not None]
    if not configs:
        raise BenchmarkError(
            f"none of lm-eval's {spec.lm_eval_task} subtasks match the local {benchmark} files",
            hint=RUN_IT_YOURSELF,
        )
    return configs, GroupPlan(spec.lm_eval_task, spec.metric, tuple(c["task"] for c in configs))


def _subtask_config(path: Path, local: list[str], benchmark: str, fewshot: int) -> dict[str, Any] | None:
    """One group subtask's config on the local files: its own file when the benchmark is stored one file
    per subtask (None when that file is missing), else the one file filtered to the subtask's rows."""
    config = load_task_yaml(path)
    subset = str(config.get("dataset_name") or "")
    if len(local) > 1:
        by_stem = {Path(p).name.split(".")[0]: p for p in local}
        if subset not in by_stem:
            return None  # a subtask lm-eval scores but the local copy lacks
        config.update(_local_split([by_stem[subset]], config, benchmark))
    else:
        config.update(_local_split(local, config, benchmark))
        field_name = SUBSET_FIELDS.get(benchmark)
        if field_name:
            config["process_docs"] = partial(_keep_subset, field=field_name, value=subset)
    config["num_fewshot"] = fewshot
    config.pop("tag", None)
    return config
