"""What a model is made of, inferred from its tensor names and config.json (no per-architecture tables).

Layer tensors are the ones whose name has a `<layers|h|blocks|layer>.<N>.` segment; the others are either
"pre" weights (embeddings, merged at the first slice's position) or "post" weights (final norm, lm_head,
merged with the last slice's sources), which is how mergekit assigns them to slices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

LAYER = re.compile(r"^(?P<prefix>(?:.*\.)?(?:layers|h|blocks|layer|block))\.(?P<index>\d+)\.(?P<rest>.+)$")
EMBEDDING = re.compile(r"(embed|wte|wpe|tok_emb|word_embeddings|position_embeddings)")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


@dataclass
class Architecture:
    """The shape of one model's tensor names."""

    name: str
    layer_prefix: str | None
    num_layers: int
    layer_suffixes: list[str] = field(default_factory=list)
    pre: list[str] = field(default_factory=list)
    post: list[str] = field(default_factory=list)
    tied: bool = False

    def layer_name(self, index: int, suffix: str) -> str:
        return f"{self.layer_prefix}.{index}.{suffix}"


def split_layer(name: str) -> tuple[str, int, str] | None:
    """(prefix, index, rest) for a layer tensor name, else None."""
    match = LAYER.match(name)
    if not match:
        return None
    return match["prefix"], int(match["index"]), match["rest"]


def layer_count(config: dict[str, Any]) -> int | None:
    """The layer count config.json declares (text_config included), if any."""
    for scope in (config, config.get("text_config") or {}):
        for key in LAYER_COUNT_KEYS:
            if isinstance(scope.get(key), int):
                return scope[key]
    return None


def infer_architecture(names: list[str], config: dict[str, Any]) -> Architecture:
    """Group tensor names into pre weights, per-layer suffixes (in file order) and post weights."""
    prefixes: dict[str, int] = {}
    suffixes: list[str] = []
    seen: set[str] = set()
    max_index = -1
    others: list[str] = []
    for name in names:
        parts = split_layer(name)
        if parts is None:
            others.append(name)
            continue
        prefix, index, rest = parts
        prefixes[prefix] = prefixes.get(prefix, 0) + 1
        max_index = max(max_index, index)
        if rest not in seen:
            seen.add(rest)
            suffixes.append(rest)
    prefix = max(prefixes, key=lambda p: prefixes[p]) if prefixes else None
    if (
        prefix is not None and len(prefixes) > 1
    ):  # e.g. a vision tower: treat the minor stacks as plain tensors
        for name in names:
            parts = split_layer(name)
            if parts and parts[0] != prefix:
                others.append(name)
        suffixes = []
        seen = set()
        for name in names:
            parts = split_layer(name)
            if parts and parts[0] == prefix and parts[2] not in seen:
                seen.add(parts[2])
                suffixes.append(parts[2])
    declared = layer_count(config)
    num_layers = declared if declared is not None else max_index + 1
    pre = [n for n in others if EMBEDDING.search(n)]
    post = [n for n in others if not EMBEDDING.search(n)]
    has_head = any(n.endswith("lm_head.weight") for n in names)
    tied = bool(config.get("tie_word_embeddings", not has_head)) and not has_head
    archs = config.get("architectures") or [config.get("model_type") or "unknown"]
    return Architecture(
        name=str(archs[0]),
        layer_prefix=prefix,
        num_layers=num_layers,
        layer_suffixes=suffixes,
        pre=pre,
        post=post,
        tied=tied,
    )
