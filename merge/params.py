"""Parameter values as people write them: scalars, gradients over layers, and `{filter, value}` lists.

A value is resolved for one tensor at one position `t` in its output slice (0 at the slice's first layer,
1 at its last), walking the scopes from the most specific (per-model) to the global one. This follows
mergekit's documented semantics so that its configs produce the same weights here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from mergeguard.errors import ConfigError

MISSING = object()


def cast(value: Any, kind: type, name: str) -> Any:
    """Cast a YAML value to the parameter's kind: `"1e-8"` -> 1e-08, `normalize: 1.0` -> True."""
    try:
        if kind is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("true", "yes", "on", "1", "1.0"):
                    return True
                if low in ("false", "no", "off", "0", "0.0"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind is int:
            number = float(value)
            if not number.is_integer():
                raise ValueError(value)
            return int(number)
        if kind is float:
            if isinstance(value, bool):
                return float(value)
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"parameter `{name}` = {value!r} is not a {kind.__name__}",
            hint=f"write a {kind.__name__} value",
        ) from None
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def evaluate(setting: Any, *, tensor_name: str, t: float, kind: type, name: str) -> Any:
    """One setting at position `t` for `tensor_name`, or MISSING when no filter entry matches.

    A list of plain values is a gradient: numeric ones interpolate piecewise-linearly over `t`, others
    (booleans) pick the entry at `int(t * (n - 1))`. A list of `{filter, value}` mappings picks the first
    entry whose filter is a substring of the tensor name; an entry without a filter (or `*`) matches all.
    """
    if isinstance(setting, Mapping):
        setting = [setting]
    if isinstance(setting, list):
        if not setting:
            return MISSING
        if all(not isinstance(e, (Mapping, list)) for e in setting):
            values = [cast(e, kind, name) for e in setting]
            if not all(_is_number(v) for v in values):
                return values[int(t * (len(values) - 1))]
            scaled = t * (len(values) - 1)
            low = int(math.floor(scaled))
            high = min(len(values) - 1, low + 1)
            frac = scaled - low
            return cast((1 - frac) * values[low] + frac * values[high], kind, name)
        for entry in setting:
            if not isinstance(entry, Mapping):
                raise ConfigError(
                    f"parameter `{name}` mixes plain values and `{{filter, value}}` entries",
                    hint="write either a gradient list or a list of {filter, value} mappings",
                )
            pattern = entry.get("filter")
            if pattern is None or pattern == "*" or str(pattern) in tensor_name:
                if "value" not in entry:
                    raise ConfigError(f"parameter `{name}` has a filter entry without `value`")
                return evaluate(entry["value"], tensor_name=tensor_name, t=t, kind=kind, name=name)
        return MISSING
    if setting is None:
        return MISSING
    return cast(setting, kind, name)


def resolve(
    name: str,
    kind: type,
    scopes: Iterable[Mapping[str, Any] | None],
    *,
    tensor_name: str,
    t: float,
) -> Any:
    """The value of `name` from the first scope that sets it (and whose filters match), else MISSING."""
    for scope in scopes:
        if scope and name in scope:
            value = evaluate(scope[name], tensor_name=tensor_name, t=t, kind=kind, name=name)
            if value is not MISSING:
                return value
    return MISSING
