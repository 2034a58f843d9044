"""An lm-eval task for a team's own benchmark (`--benchmark-spec`): its multiple-choice items written as a
JSON Lines file and scored by accuracy over the choices."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mergeguard.benchmarks.loading import load_spec
from mergeguard.benchmarks.registry import BenchmarkSpec
from mergeguard.db.scores import register_custom_task
from mergeguard.errors import BenchmarkError


def custom_task_config(spec: BenchmarkSpec, out_dir: Path) -> dict[str, Any]:
    """An lm-eval multiple-choice task for a custom benchmark (`--benchmark-spec`): its items, as the
    benchmark registry normalizes them, written to `out_dir` and scored by accuracy over the choices."""
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
