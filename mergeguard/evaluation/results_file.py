"""Reading lm-eval `results_*.json` files, old and new layouts, into plain `ResultsFile` records.

Layouts seen in the wild: 0.3 (`config.model_args` a string, metrics as `acc` / `acc_stderr`), 0.4
(`metric,filter` keys, `n-shot`, `configs`, `config.model_args` a string or a dict, stderr `"N/A"` when
bootstrap was off). A file is identified by its SHA-256, so importing it twice stores it once.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mergeguard.db.records import EvaluationRow, ResultsFile, canonical_ref
from mergeguard.db.scores import benchmark_for_task, primary_metric
from mergeguard.errors import MergeguardError

SKIP_KEYS = {"alias", "name", "sample_len", "sample_count", "samples", " "}
LM_EVAL_KEYS = {"config", "versions", "n-shot", "configs", "higher_is_better", "n-samples"}


def _not_lm_eval(path: Path, why: str) -> MergeguardError:
    return MergeguardError(
        f"{path} is not an lm-eval results file ({why})",
        hint="give the results_*.json files lm-eval writes with --output_path",
    )


def parse_model_args(value: Any) -> dict[str, Any]:
    """`config.model_args` as a dict, from either layout ("pretrained=x,dtype=y" or {"pretrained": "x"})."""
    if isinstance(value, dict):
        return value
    if not value or not isinstance(value, str):
        return {}
    out: dict[str, Any] = {}
    for part in value.split(","):
        if "=" in part:
            key, _, val = part.partition("=")
            out[key.strip()] = val.strip()
    return out


def _number(value: Any) -> float | None:
    """A finite float, or None: "N/A", NaN and 1e999 (inf) are not scores a leaderboard can average."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)  # "0.5" in some hand-made files; "N/A" is not a number
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _model_ref(data: dict[str, Any], path: Path) -> str:
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    args = parse_model_args(config.get("model_args"))
    for key in ("pretrained", "model", "peft"):
        if args.get(key) and isinstance(args[key], str):
            return args[key]
    for value in (config.get("model_name"), data.get("model_name")):
        if value and isinstance(value, str):
            return value
    raise MergeguardError(
        f"{path} does not say which model it scored (no pretrained= in config.model_args)",
        hint="name the model with --model",
    )


def _date(value: Any) -> str | None:
    number = _number(value)
    if number is None:
        return None
    try:
        return datetime.fromtimestamp(number, timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):  # a date beyond what a clock can show
        return None


def _task_rows(task: str, metrics: dict[str, Any], fewshot: int | None, n: int | None) -> list[EvaluationRow]:
    rows: list[EvaluationRow] = []
    for key, raw in metrics.items():
        metric, _, filt = key.partition(",")
        filt = filt or "none"
        if key in SKIP_KEYS or metric.endswith("_stderr"):
            continue
        value = _number(raw)
        if value is None:
            continue
        stderr = metrics.get(f"{metric}_stderr,{filt}", metrics.get(f"{metric}_stderr"))
        rows.append(
            EvaluationRow(
                task=task,
                metric=metric,
                filter=filt,
                value=value,
                stderr=_number(stderr),
                num_fewshot=fewshot,
                n_samples=n,
                benchmark=benchmark_for_task(task),
            )
        )
    chosen = primary_metric(task, [(r.metric, r.filter) for r in rows])
    for row in rows:
        row.is_primary = chosen == (row.metric, row.filter)
    return rows


def parse_results_file(path: str | Path, *, model: str | None = None) -> ResultsFile:
    """Read one lm-eval results file into a `ResultsFile` (no database involved)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = json.loads(raw)
    except OSError as error:
        raise MergeguardError(f"cannot read {path} ({error.strerror})", hint="check the path") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _not_lm_eval(path, "not JSON") from error
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict) or not data["results"]:
        raise _not_lm_eval(path, "no 'results' object")
    if not LM_EVAL_KEYS & set(data):
        raise _not_lm_eval(path, "none of config, versions, n-shot, configs")
    tables = [data["results"]] + ([data["groups"]] if isinstance(data.get("groups"), dict) else [])
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    n_shot = data.get("n-shot") if isinstance(data.get("n-shot"), dict) else {}
    configs = data.get("configs") if isinstance(data.get("configs"), dict) else {}
    n_samples = data.get("n-samples") if isinstance(data.get("n-samples"), dict) else {}
    rows: list[EvaluationRow] = []
    seen: set[str] = set()
    for table in tables:
        for task, metrics in table.items():
            if task in seen:  # 0.4.0-0.4.2 list groups under both "results" and "groups"
                continue
            seen.add(task)
            if not isinstance(metrics, dict):
                raise _not_lm_eval(path, f"results[{task!r}] is not an object")
            fewshot = n_shot.get(
                task, (configs.get(task) or {}).get("num_fewshot", config.get("num_fewshot"))
            )
            effective = (n_samples.get(task) or {}).get("effective") if n_samples else None
            rows.extend(_task_rows(task, metrics, _int(fewshot), _int(effective)))
    if not rows:
        raise _not_lm_eval(path, "no numeric metrics")
    return ResultsFile(
        path=str(path.resolve()),
        sha256=hashlib.sha256(raw).hexdigest(),
        model_ref=canonical_ref(model) if model else canonical_ref(_model_ref(data, path)),
        rows=rows,
        harness_version=data.get("lm_eval_version") or None,
        evaluated_at=_date(data.get("date")),
        sample_limit=_number(config.get("limit")),
    )


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def results_files(paths: list[str | Path]) -> list[Path]:
    """Expand folders into the `results*.json` files under them; files are taken as given."""
    out: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found = sorted(entry.rglob("results*.json"))
            if not found:
                raise MergeguardError(
                    f"no results*.json files under {entry}", hint="point at lm-eval's --output_path folder"
                )
            out.extend(found)
        elif entry.is_file():
            out.append(entry)
        else:
            raise MergeguardError(f"{entry} does not exist", hint="check the path")
    return out
