"""Finding and reading lm-eval's own task YAML files, through the YAML format lm-eval documents rather than
its private loader (`lm_eval.tasks._yaml_loader`, whose name and signature change between releases).

The format: plain YAML plus `include: other.yaml` (the included file's keys, the including file's keys on
top) and `!function module.name`, a function in a Python file beside the YAML.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from mergeguard.errors import BenchmarkError


def lm_eval_tasks_root() -> Path:
    """The installed lm-eval's folder of task YAML files."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


@cache
def lm_eval_task_yaml(task: str) -> Path:
    """The YAML file in the installed lm-eval that defines `task` (a plain task, not a group)."""
    pattern = re.compile(rf"^task:\s*['\"]?{re.escape(task)}['\"]?\s*$", re.MULTILINE)
    for path in sorted(lm_eval_tasks_root().rglob("*.yaml")):
        try:
            if pattern.search(path.read_text(encoding="utf-8", errors="ignore")):
                return path
        except OSError:
            continue
    raise BenchmarkError(
        f"lm-eval has no single task named {task!r} that mergeguard can run offline",
        hint="evaluate it with lm-eval yourself and `mergeguard import` the results",
    )


def group_task_files(group: str) -> list[Path]:
    """The YAML files of `group`'s leaf tasks: the group's folder's tasks named `<group>_*`."""
    head = re.compile(rf"^group:\s*['\"]?{re.escape(group)}['\"]?\s*$", re.MULTILINE)
    leaf = re.compile(rf"^['\"]?task['\"]?:\s*['\"]?{re.escape(group)}_\w+['\"]?\s*$", re.MULTILINE)
    for path in sorted(lm_eval_tasks_root().rglob("*.yaml")):
        if head.search(path.read_text(encoding="utf-8", errors="ignore")):
            return sorted(p for p in path.parent.glob("*.yaml") if leaf.search(p.read_text(encoding="utf-8")))
    return []


def _module_beside(folder: Path, module: str) -> ModuleType:
    """The Python module `module` (dotted, relative to `folder`), else an installed one of that name. A file
    inside lm-eval's tasks gets the module name lm-eval gives it, so its functions pickle the same way."""
    file = (folder / f"{module.replace('.', '/')}.py").resolve()
    if not file.is_file():
        return importlib.import_module(module)
    root = lm_eval_tasks_root().resolve()
    inside = file.is_relative_to(root)
    name = ".".join(("lm_eval", "tasks", *file.relative_to(root).with_suffix("").parts)) if inside else ""
    name = name or str(file.with_suffix(""))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {file}", name=module)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    sys.modules[name] = loaded
    return loaded


def _function_loader(folder: Path) -> type[yaml.SafeLoader]:
    """A safe YAML loader that turns `!function utils.name` into that function, found beside the file."""

    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Callable[..., Any]:
        module, _, name = str(loader.construct_scalar(node)).rpartition(".")  # type: ignore[arg-type]
        return getattr(_module_beside(folder, module), name)

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", construct)
    return Loader


def load_task_yaml(path: str | Path, _seen: frozenset[Path] = frozenset()) -> dict[str, Any]:
    """One lm-eval task YAML as a dict, its `include:` files merged under it and its `!function` tags
    resolved to the functions they name."""
    path = Path(path).expanduser().resolve()
    if path in _seen:
        raise BenchmarkError(f"lm-eval's {path} includes itself")
    with path.open("rb") as handle:
        config = yaml.load(handle, Loader=_function_loader(path.parent))  # noqa: S506 (a SafeLoader)
    if not isinstance(config, dict):
        raise BenchmarkError(f"lm-eval's {path} is not a task config (not a YAML mapping)")
    includes = config.pop("include", None)
    if includes is None:
        return config
    merged: dict[str, Any] = {}
    for include in includes if isinstance(includes, list) else [includes]:
        included = load_task_yaml(path.parent / include, _seen | {path})  # an absolute include stays absolute
        included.pop("task_list", None)  # a task list belongs to the file that declares it
        merged.update(included)
    merged.update(config)
    return merged
