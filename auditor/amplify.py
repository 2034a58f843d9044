"""Amplified weights: a model's change from its reference, scaled up, so a merge's dilution is undone.

A 50/50 linear merge of a contaminated fine-tune with a clean one halves the contaminated weight change, and
what the fine-tune memorised fades faster than linearly (perf/probe_accuracy.py's tiny models: the probe's
answer-link gain on planted items falls from about 3 nats to 0.5-0.9). `reference + factor * (model -
reference)` with factor 2 restores a two-parent merge's share of each parent's change at full strength, so
the probe tests the model as it is and amplified (see probe.py). It means something only when the
reference is the model's ancestor (its base): the probe amplifies against the reference it was given or
found in the lineage, and says when the weights do not line up.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from safetensors import safe_open

from mergeguard.errors import MergeguardError
from mergeguard.merge.io import tensor_index

AMPLIFY = 2.0  # a two-parent merge's dilution undone; 1 turns the amplified test off


def amplify_weights(model: Any, reference: Path, factor: float) -> str:
    """Set each parameter of `model` (in place) to `reference + factor * (model - reference)`, reading the
    reference's tensors one at a time from its safetensors files, so only one model is ever in memory.
    Returns "" when done, else why not (no safetensors, a tensor missing or of another shape), having
    changed nothing: every name and shape is checked from the file headers first."""
    import torch

    try:
        where = tensor_index(Path(reference))
    except MergeguardError as error:
        return f"the weights cannot be amplified: {error.message}"
    params = dict(model.named_parameters())
    prefix = str(getattr(model, "base_model_prefix", "") or "")
    keys = {name: _stored_name(name, where, prefix) for name in params}
    with contextlib.ExitStack() as stack:
        files: dict[Path, Any] = {}

        def tensor_file(key: str) -> Any:
            if where[key] not in files:
                files[where[key]] = stack.enter_context(safe_open(str(where[key]), "pt", device="cpu"))
            return files[where[key]]

        stored: list[tuple[Any, str]] = []  # (parameter, the reference's name for it), all checked
        for name, param in params.items():
            key = keys[name]
            if key is None:
                return f"the weights cannot be amplified: reference {reference} has no tensor {name}"
            shape, own = tuple(tensor_file(key).get_slice(key).get_shape()), tuple(param.shape)
            if shape != own:
                return f"the weights cannot be amplified: reference tensor {key} is {shape}, not {own}"
            stored.append((param, key))
        with torch.no_grad():
            for param, key in stored:
                base = tensor_file(key).get_tensor(key).to(param.device, torch.float32)
                param.copy_((base + factor * (param.float() - base)).to(param.dtype))
    return ""


def _stored_name(name: str, where: dict[str, Path], prefix: str) -> str | None:
    """The reference's name for a parameter: the same, or with the architecture's prefix (`model.`,
    `transformer.`) added or dropped, as checkpoints saved by other tools spell it."""
    candidates = [name]
    if prefix:
        candidates += [f"{prefix}.{name}", name.removeprefix(f"{prefix}.")]
    return next((key for key in candidates if key in where), None)
