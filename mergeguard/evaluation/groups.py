"""lm-eval groups (MMLU's subjects, BBH's subtasks) run as their subtasks, and the group score put back
together afterwards the way lm-eval reports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GroupPlan:
    """An lm-eval group run as its subtasks; the group's score is their size-weighted mean, as lm-eval's
    `aggregate_metric_list: weight_by_size` computes it."""

    name: str
    metric: str
    subtasks: tuple[str, ...]


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
