"""Custom benchmarks from a small YAML file, so a team can guard its private eval set too.

```yaml
name: acme_eval             # or a list of such mappings under `benchmarks:`
files: [data/eval.jsonl]    # relative to the YAML file; .jsonl, .jsonl.gz, .json, .parquet, .csv
split: test                 # optional, default "test"
question: prompt            # the field(s) holding the question text (a list is joined by blank lines)
choices: options            # optional: a field holding a list of choice texts
answer: target              # optional: the gold answer text, or an index / letter into the choices
id: uid                     # optional: the row's own id field
subset: category            # optional
description: Our held-out eval set
```
Unknown keys are an error, not silently ignored.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mergeguard.benchmarks.items import Item, RowContext
from mergeguard.benchmarks.registry import REGISTRY, BenchmarkSpec
from mergeguard.errors import BenchmarkError

KEYS = {"name", "files", "split", "question", "choices", "answer", "id", "subset", "description"}
FIELD_KEYS = ("question", "choices", "answer", "id", "subset")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
MAX_SPEC_BYTES = 2**20  # a spec is a few hand-written lines; a bigger file is a mistake or an attack


def _text(entry: Mapping[str, Any], key: str, where: str, default: str = "") -> str:
    """An optional text value; a number, list or mapping is an error, never str()-ed into a name."""
    value = entry.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise BenchmarkError(
            f"{where}: `{key}` must be text, not {_kind(value)}", hint=f"write `{key}: some text`"
        )
    return value


def _kind(value: Any) -> str:
    """How a YAML value reads to its author: a number, a list, a mapping (never a whole nested value)."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if isinstance(value, bool):
        return f"the boolean {value}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {value[:40]!r}" if value.strip() else "an empty text"
    return f"a {type(value).__name__}"


def _files(entry: Mapping[str, Any], name: str, where: str) -> list[str]:
    """`files:` as a list of non-empty paths: one path, or a list of them."""
    files = entry.get("files")
    hint = "write `files: data/eval.jsonl` or `files: [a.jsonl, b.jsonl]`"
    if files is None:
        raise BenchmarkError(f"{where}: `{name}` needs `files:` (a path or a list of paths)", hint=hint)
    paths = [files] if isinstance(files, str) else files
    if not isinstance(paths, list) or not paths:
        raise BenchmarkError(
            f"{where}: `files` must be a path or a list of paths, not {_kind(files)}", hint=hint
        )
    for item in paths:
        if not isinstance(item, str) or not item.strip():
            raise BenchmarkError(f"{where}: `files` holds {_kind(item)}, not a path", hint=hint)
    return paths


def _spec_from_mapping(entry: Any, base: Path, where: str) -> BenchmarkSpec:
    if not isinstance(entry, Mapping):
        raise BenchmarkError(f"{where}: each benchmark must be a mapping", hint="see `name:`, `files:` keys")
    unknown = sorted(str(key) for key in set(entry) - KEYS)
    if unknown:
        raise BenchmarkError(f"{where}: unknown key(s) {', '.join(unknown)}", hint=f"allowed: {sorted(KEYS)}")
    name = _text(entry, "name", where)
    if not _NAME.match(name):
        raise BenchmarkError(f"{where}: missing or invalid `name`", hint="use letters, digits, _ . -")
    if name in REGISTRY:
        raise BenchmarkError(
            f"{where}: `{name}` is a built-in benchmark", hint="give the custom one its own name"
        )
    files = _files(entry, name, where)
    if not entry.get("question"):
        raise BenchmarkError(f"{where}: `{name}` needs `question:` (the field holding the question text)")
    fields: list[tuple[str, str]] = []
    for key in FIELD_KEYS:
        value = entry.get(key)
        if value is None:
            continue
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not all(isinstance(item, str) for item in names):
            raise BenchmarkError(f"{where}: `{key}` must be a field name (or a list of them for question)")
        if key != "question" and len(names) != 1:
            raise BenchmarkError(f"{where}: `{key}` must name one field")
        fields.extend((key, item) for item in names)
    return BenchmarkSpec(
        name=name,
        hf_id="",
        configs=(),
        split=_text(entry, "split", where, "test") or "test",
        suites=("custom",),
        lm_eval_task="",
        metric="",
        num_fewshot=0,
        random_baseline=0.0,
        id_field=entry.get("id"),
        description=_text(entry, "description", where) or f"custom benchmark from {where}",
        row_format="custom",
        data_files=tuple(str((base / item).resolve()) for item in files),
        fields=tuple(fields),
    )


def load_custom_spec(path: Path) -> tuple[BenchmarkSpec, ...]:
    """The benchmark(s) a custom YAML file declares; file paths in it are relative to the file."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise BenchmarkError(
                f"benchmark spec {path} is over {MAX_SPEC_BYTES // 2**20} MiB", hint="a spec is a few lines"
            )
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise BenchmarkError(f"cannot read benchmark spec {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise BenchmarkError(
            f"benchmark spec {path} is not UTF-8 text (byte {error.start})", hint="save it as UTF-8"
        ) from None
    except yaml.YAMLError as error:
        raise BenchmarkError(f"benchmark spec {path} is not valid YAML: {error}") from None
    except RecursionError:
        raise BenchmarkError(
            f"benchmark spec {path} is nested too deeply", hint="a spec is a few lines"
        ) from None
    if isinstance(document, Mapping) and "benchmarks" in document:
        entries = document["benchmarks"]
        if set(document) - {"benchmarks"}:
            raise BenchmarkError(f"{path}: only `benchmarks:` is allowed beside a list of benchmarks")
    else:
        entries = [document]
    if not isinstance(entries, list) or not entries:
        raise BenchmarkError(
            f"{path}: no benchmark declared", hint="write `name:`, `files:`, `question:` keys"
        )
    specs = tuple(
        _spec_from_mapping(entry, path.parent, f"{path} (#{number})") for number, entry in enumerate(entries)
    )
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise BenchmarkError(f"{path}: benchmark names repeat", hint="give each benchmark its own name")
    return specs


def _choices(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):  # a CSV cell holding a list literal
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return [value]
        return [str(item) for item in parsed] if isinstance(parsed, (list, tuple)) else [value]
    return [str(item) for item in value]


def _answer(value: Any, choices: list[str]) -> str:
    """Gold text: an int indexes the choices, a lone letter A-Z does too when choices exist."""
    if value is None:
        return ""
    if choices and isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(choices):
        return choices[value]
    text = str(value)
    if choices and text not in choices:
        if len(text) == 1 and "A" <= text.upper() <= "Z" and ord(text.upper()) - 65 < len(choices):
            return choices[ord(text.upper()) - 65]
        if text.isdigit() and int(text) < len(choices):
            return choices[int(text)]
    return text


def custom_item(spec: BenchmarkSpec, row: Mapping[str, Any], ctx: RowContext) -> Item:
    """One row of a custom benchmark, read through the field names its YAML declared."""
    mapping: dict[str, list[str]] = {}
    for key, name in spec.fields:
        mapping.setdefault(key, []).append(name)
    missing = [name for names in mapping.values() for name in names if name not in row]
    if missing:
        raise BenchmarkError(
            f"{spec.name}: row {ctx.index} lacks field(s) {', '.join(missing)}",
            hint=f"the row has: {', '.join(list(row)[:12])}",
        )
    question = "\n\n".join(str(row[name]) for name in mapping["question"] if row[name] not in (None, ""))
    choices = _choices(row[mapping["choices"][0]]) if "choices" in mapping else []
    answer = _answer(row[mapping["answer"][0]], choices) if "answer" in mapping else ""
    item_id = row[mapping["id"][0]] if "id" in mapping else None
    subset = row[mapping["subset"][0]] if "subset" in mapping else None
    return Item(
        benchmark=spec.name,
        split=ctx.split,
        index=ctx.index,
        item_id=None if item_id in (None, "") else str(item_id),
        question=question,
        choices=tuple(choices),
        answer=answer,
        subset=None if subset in (None, "") else str(subset),
    )
