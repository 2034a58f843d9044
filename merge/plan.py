"""The tensor plan: one entry per output tensor, with its input tensors and every parameter resolved.

Building the plan reads only config.json files and safetensors headers, so every config mistake that needs
the models (layer ranges, architectures, shapes, missing required parameters on some tensor) is reported
before any weights are read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergeguard.errors import ConfigError
from mergeguard.merge.arch import Architecture
from mergeguard.merge.config import InputModel, MergeConfig, OutputSlice
from mergeguard.merge.io import ModelReader, check_input_dtypes
from mergeguard.merge.methods.base import REQUIRED
from mergeguard.merge.params import MISSING, resolve
from mergeguard.merge.tokenizer import Vocabulary, vocab_size

VOCAB_NAME = re.compile(
    r"(embed_tokens|wte|word_embeddings|tok_embeddings|lm_head|embed_out|^output)\.weight$"
)
"""Tensors indexed by token id (axis 0): re-indexed by a tokenizer merge, cut by truncation."""


@dataclass
class SourceModel:
    """One distinct input model: the reference as written, its folder, reader, config and architecture."""

    ref: str
    path: Path
    reader: ModelReader
    config: dict[str, Any]
    arch: Architecture


@dataclass
class TensorTask:
    """How to make one output tensor."""

    name: str
    inputs: list[tuple[str, str]]  # (model ref, input tensor name), one per listed model, config order
    base: tuple[str, str] | None
    base_index: int | None
    params: list[dict[str, Any]]
    options: dict[str, Any]
    t: float
    shape: tuple[int, ...]
    layer: int | None = None
    vocab: str | None = None  # "align": re-indexed to the output vocabulary; "truncate": first rows only

    def sources(self) -> list[tuple[str, str]]:
        """Every distinct input tensor this task reads, the base included (listed or not)."""
        return list(dict.fromkeys([*self.inputs, *([self.base] if self.base else [])]))


@dataclass
class MergePlan:
    """Every output tensor in write order, plus what the output config needs."""

    tasks: list[TensorTask] = field(default_factory=list)
    num_layers: int = 0
    out_model: str = ""
    layer_origin: list[int] = field(default_factory=list)
    slice_weights: dict[str, dict[str, Any]] = field(default_factory=dict)
    vocabulary: Vocabulary | None = None  # the output vocabulary, when the config sets a tokenizer

    def vocab_inputs(self, task: TensorTask, arrays: dict[str, Any]) -> dict[str, Any]:
        """A vocabulary tensor's inputs (float numpy arrays by model) as the method must see them."""
        if task.vocab == "align" and self.vocabulary is not None:
            return self.vocabulary.align(task.name, arrays)
        if task.vocab == "truncate":
            return {ref: array[: task.shape[0]] for ref, array in arrays.items()}
        return arrays


def _slices(config: MergeConfig, models: dict[str, SourceModel]) -> list[OutputSlice]:
    """The slices to merge; the `models:` form becomes one slice spanning every layer."""
    if config.slices is not None:
        for i, sl in enumerate(config.slices):
            for src in sl.sources:
                total = models[src.model].arch.num_layers
                assert src.layer_range is not None
                if src.layer_range[1] > total:
                    raise ConfigError(
                        f"`layer_range: {list(src.layer_range)}` in slices[{i}] is out of"
                        f" bounds: {src.model} has {total} layers",
                        hint=f"use an end of at most {total}",
                    )
        return config.slices
    counts = {m.model: models[m.model].arch.num_layers for m in config.models or []}
    if config.base_model:
        counts[config.base_model] = models[config.base_model].arch.num_layers
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{k}: {v}" for k, v in counts.items())
        raise ConfigError(
            f"models have different layer counts ({listing})", hint="use `slices:` with matching layer ranges"
        )
    layers = next(iter(counts.values()))
    sources = [InputModel(m.model, m.parameters, (0, layers)) for m in config.models or []]
    return [OutputSlice(sources=sources)]


def _resolve_task(
    config: MergeConfig,
    method: Any,
    sl: OutputSlice,
    base: str | None,
    task: TensorTask,
    own_parameters: dict[str, dict[str, Any]],
) -> None:
    """Fill `task.params` and `task.options` (precedence: per-model > slice > module > global)."""
    shared = [sl.parameters, config.module_parameters, config.parameters]
    options: dict[str, Any] = {}
    for param in method.params:
        if param.per_model:
            continue
        value = resolve(param.name, param.kind, shared, tensor_name=task.name, t=task.t)
        if value is MISSING:
            if param.default is REQUIRED:
                raise ConfigError(
                    f"merge_method `{method.name}` has no `{param.name}` for tensor {task.name}",
                    hint="add a fallback entry without `filter` to the parameter's list",
                )
            value = param.default
        options[param.name] = value
    task.options = options
    params: list[dict[str, Any]] = []
    for ref, in_name in task.inputs:
        own = [own_parameters[ref]] if ref in own_parameters else []  # an unlisted base has none
        values: dict[str, Any] = {}
        for param in method.params:
            if not param.per_model or (ref == base and getattr(param, "non_base", False)):
                continue  # mergekit does not give the base its non-base parameters (density, weight of ties)
            value = resolve(param.name, param.kind, [*own, *shared], tensor_name=in_name, t=task.t)
            if value is MISSING:
                if param.default is REQUIRED:
                    raise ConfigError(
                        f"model {ref} has no `{param.name}` for tensor {in_name}",
                        hint="add a fallback entry without `filter` to the parameter's list",
                    )
                value = param.default
            values[param.name] = value
        params.append(values)
    if method.check is not None:
        method.check(params)
    task.params = params


def _check_compatible(models: dict[str, SourceModel], out: SourceModel, allow_crimes: bool) -> None:
    for model in models.values():
        a, b = model.arch, out.arch
        same = (
            a.name == b.name
            and set(a.layer_suffixes) == set(b.layer_suffixes)
            and set(a.pre) == set(b.pre)
            and set(a.post) == set(b.post)
        )
        if not same and not allow_crimes:
            raise ConfigError(
                f"{model.ref} ({a.name}) and {out.ref} ({b.name}) have different architectures",
                hint="merge models of one architecture, or pass --allow-crimes",
            )


def _vocab_mode(
    name: str,
    shapes: dict[str, tuple[int, ...]],
    models: dict[str, SourceModel],
    vocabulary: Vocabulary | None,
    truncate: bool,
) -> tuple[str | None, tuple[int, ...] | None]:
    """("align" | "truncate" | None, the output shape) for a tensor outside the layers."""
    if not VOCAB_NAME.search(name) or vocabulary is None and not truncate:
        return None, None
    if any(len(s) < 1 or (vocab_size(models[r]) or s[0]) != s[0] for r, s in shapes.items()):
        return None, None  # not indexed by token id (its rows are not the declared vocab_size)
    rest = {s[1:] for s in shapes.values()}
    if len(rest) > 1:
        return None, None  # reported as different shapes
    if vocabulary is not None:
        return "align", (vocabulary.size, *rest.pop())
    if len({s[0] for s in shapes.values()}) == 1:
        return None, None
    return "truncate", (min(s[0] for s in shapes.values()), *rest.pop())


def build_plan(
    config: MergeConfig,
    method: Any,
    models: dict[str, SourceModel],
    *,
    allow_crimes: bool = False,
    vocabulary: Vocabulary | None = None,
    truncate_embeddings: bool = False,
) -> MergePlan:
    """Every output tensor, with inputs, shapes checked and parameters resolved.

    With `vocabulary` (the config sets a tokenizer), token-indexed tensors are planned at the output
    vocabulary's size; with `truncate_embeddings`, ones of differing sizes at the smallest."""
    slices = _slices(config, models)
    out_ref = config.base_model or slices[0].sources[0].model
    out = models[out_ref]
    _check_compatible(models, out, allow_crimes)
    plan = MergePlan(out_model=out_ref, vocabulary=vocabulary)
    # each source's `parameters:` by model (listed once per slice, see config): a lookup, not a scan per input
    own_parameters = {id(sl): {src.model: src.parameters for src in sl.sources} for sl in slices}

    def add(sl: OutputSlice, name: str, inputs: list[tuple[str, str]], t: float, layer: int | None) -> None:
        base = sl.base_model or config.base_model
        base_index, base_pair = _base_of(config, method, base, inputs)
        pairs = [*inputs, *([base_pair] if base_pair else [])]
        mode, shape = _checked_shape(name, pairs, models, vocabulary, truncate_embeddings)
        task = TensorTask(
            name=name,
            inputs=inputs,
            base=base_pair,
            base_index=base_index,
            params=[],
            options={},
            t=t,
            shape=shape,
            layer=layer,
            vocab=mode,
        )
        _resolve_task(config, method, sl, base, task, own_parameters[id(sl)])
        plan.tasks.append(task)

    entries, plan.layer_origin = _tensor_entries(slices, models, out)
    for entry in entries:
        add(*entry)
    plan.num_layers = len(plan.layer_origin)
    plan.slice_weights = _slice_weights(config, slices)
    return plan


_Entry = tuple[OutputSlice, str, list[tuple[str, str]], float, int | None]


def _tensor_entries(
    slices: list[OutputSlice], models: dict[str, SourceModel], out: SourceModel
) -> tuple[list[_Entry], list[int]]:
    """Every output tensor in file order as (slice, output name, inputs, t, output layer), and each output
    layer's source layer: the slices' layers are renumbered from 0, and a layer weight the first source
    lacks (an optional bias) is not planned."""
    entries: list[_Entry] = []
    layer_origin: list[int] = []
    first, last = slices[0], slices[-1]
    for name in out.arch.pre:
        entries.append((first, name, [(s.model, name) for s in first.sources], 0.0, None))
    index = 0
    for sl in slices:
        start = [s.layer_range[0] for s in sl.sources]  # type: ignore[index]
        length = sl.sources[0].layer_range[1] - start[0]  # type: ignore[index]
        for offset in range(length):
            t = offset / (length - 1) if length > 1 else 1.0
            for suffix in out.arch.layer_suffixes:
                inputs = [
                    (s.model, models[s.model].arch.layer_name(start[j] + offset, suffix))
                    for j, s in enumerate(sl.sources)
                ]
                if inputs[0][1] not in models[inputs[0][0]].reader:
                    continue  # an optional weight (e.g. a bias) this model does not have
                entries.append((sl, out.arch.layer_name(index, suffix), inputs, t, index))
            index += 1
            layer_origin.append(start[0] + offset)
    for name in out.arch.post:
        entries.append((last, name, [(s.model, name) for s in last.sources], 0.0, None))
    return entries, layer_origin


def _slice_weights(config: MergeConfig, slices: list[OutputSlice]) -> dict[str, dict[str, Any]]:
    """Each input's first-found weight, t, scale and density (per-model > slice > module > global), for
    the lineage edges the merge records."""
    slice_weights: dict[str, dict[str, Any]] = {}
    for sl in slices:
        for src in sl.sources:
            weights = slice_weights.setdefault(src.model, {})
            for key in ("weight", "t", "scale", "density"):
                for scope in (src.parameters, sl.parameters, config.module_parameters, config.parameters):
                    if key in scope and key not in weights:
                        weights[key] = scope[key]
    return slice_weights


def _base_of(
    config: MergeConfig, method: Any, base: str | None, inputs: list[tuple[str, str]]
) -> tuple[int | None, tuple[str, str] | None]:
    """(the base's index among the inputs, the base tensor read): an unlisted base of a `models:` merge
    is read under the same name; a slice's base must be one of its sources when the method needs it."""
    refs = [r for r, _ in inputs]
    base_index = refs.index(base) if base in refs else None
    if base is None:
        return base_index, None
    if base_index is not None:
        return base_index, inputs[base_index]
    if config.models is not None:
        return base_index, (base, inputs[0][1])
    if method.requires_base:
        raise ConfigError(
            f"base_model {base} is not among the sources of a slice",
            hint="list the base model as one of every slice's sources",
        )
    return base_index, None


def _checked_shape(
    name: str,
    pairs: list[tuple[str, str]],
    models: dict[str, SourceModel],
    vocabulary: Vocabulary | None,
    truncate: bool,
) -> tuple[str | None, tuple[int, ...]]:
    """(the vocabulary mode, the output shape) of a tensor read from `pairs` (inputs and base): every input
    has it, in compatible dtypes, and one shape unless a token-indexed tensor is aligned or truncated."""
    shapes = {}
    for ref, in_name in pairs:
        reader = models[ref].reader
        if in_name not in reader:
            raise ConfigError(
                f"{ref} has no tensor {in_name}",
                hint="the models differ in architecture; pass --allow-crimes only if they match",
            )
        shapes[ref] = reader.shape(in_name)
    check_input_dtypes(name, {r: models[r].reader.dtype(n) for r, n in pairs})
    mode, shape = _vocab_mode(name, shapes, models, vocabulary, truncate)
    if mode is None and len(set(shapes.values())) > 1:
        listing = ", ".join(f"{r}: {list(s)}" for r, s in shapes.items())
        hint = "the models must share an architecture"
        if VOCAB_NAME.search(name) and (vocabulary is not None or truncate):
            hint = "its rows must equal config.json's `vocab_size` in every model: fix the odd config.json"
        elif VOCAB_NAME.search(name):
            hint = "the vocabularies differ: set `tokenizer_source: base` (or `union`) to align them"
        raise ConfigError(f"tensor {name} has different shapes ({listing})", hint=hint)
    return mode, shape or next(iter(shapes.values()))
