"""Parameter values as people write them: scalars, gradients over layers, and `{filter, value}` lists.

A value is resolved for one tensor at one position `t` in its output slice (0 at the slice's first layer,
1 at its last), walking the scopes from the most specific (per-model) to the global one. This follows
mergekit's documented semantics so that its configs produce the same weights here.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mergeguard.errors import ConfigError

MISSING = object()
MAX_MAGNITUDE = 1e6
"""No parameter means anything beyond this: `weight: 1e308` overflows float32 into a NaN model."""


@dataclass(frozen=True)
class Interval:
    """The values a parameter may take, declared beside it: `Interval(0, 1, low_open=True)` is (0, 1]."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        low = "(-inf" if self.low is None else f"{'(' if self.low_open else '['}{self.low:g}"
        high = "inf)" if self.high is None else f"{self.high:g}{')' if self.high_open else ']'}"
        return f"{low}, {high}"


def shown(value: Any) -> str:
    """A value for an error message, cut short: a config's value can be megabytes long."""
    return reprlib.repr(value)


def cast(value: Any, kind: type, name: str, valid: Interval | None = None) -> Any:
    """Cast a YAML value to the parameter's kind: `"1e-8"` -> 1e-08, `normalize: 1.0` -> True.

    Numbers must be finite (a NaN or infinite weight makes an all-NaN model) and inside `valid`.
    """
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            low = str(value).strip().lower() if isinstance(value, (str, int, float)) else None
            if low in ("true", "yes", "on", "1", "1.0"):
                return True
            if low in ("false", "no", "off", "0", "0.0"):
                return False
            raise ValueError(value)
        if kind not in (int, float) or not isinstance(value, (int, float, str)):
            raise TypeError(value)  # YAML's !!binary, dates, sets and containers are not numbers
        number = float(value)
        if kind is int and not number.is_integer():
            raise ValueError(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(
            f"parameter `{name}` = {shown(value)} is not a {kind.__name__}",
            hint=f"write a {kind.__name__} value",
        ) from None
    if not math.isfinite(number):
        raise ConfigError(
            f"parameter `{name}` = {shown(value)} is not a finite number", hint="write a finite number"
        )
    if valid is not None and number not in valid:
        raise ConfigError(
            f"parameter `{name}` = {shown(value)} is out of range", hint=f"use a value in {valid}"
        )
    if abs(number) > MAX_MAGNITUDE:
        raise ConfigError(
            f"parameter `{name}` = {shown(value)} is out of range",
            hint=f"use a value between -{MAX_MAGNITUDE:g} and {MAX_MAGNITUDE:g}",
        )
    return int(number) if kind is int else number


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
                    raise ConfigError(
                        f"parameter `{name}` has a filter entry without `value`",
                        hint="write `{filter: <part of a tensor name>, value: <number>}`",
                    )
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
