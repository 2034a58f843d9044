"""The contract between the merge engine and the merge methods.

A method is a pure function of `MergeInputs` (the tensors of one output tensor, their resolved parameters
and a generator) returning one tensor. Its parameters are declared beside it as `Param`s, so the engine can
validate a config against the declaration before any weights are read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mergeguard.merge.method_rules import missing_base, work_dtype_name
from mergeguard.merge.params import Interval

if TYPE_CHECKING:
    import torch

    from mergeguard.merge.kernels import NumpyKernel

FRACTION = Interval(0, 1, low_open=True)
"""(0, 1]: a density or a kept fraction (0 keeps nothing, and DARE's rescale would divide by it)."""

REQUIRED: Any = object()
"""Sentinel default: the config must give a value."""


@dataclass(frozen=True)
class Param:
    """One parameter a method reads, under mergekit's name and with mergekit's default."""

    name: str
    kind: type  # float, bool or int
    default: Any = REQUIRED
    per_model: bool = False  # True: under each model's `parameters:`; False: a method-level parameter
    help: str = ""
    non_base: bool = (
        False  # per-model parameter that the base model does not need (mergekit's NON_BASE scope)
    )
    valid: Interval | None = None  # the values it may take (numbers are always finite)

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass
class MergeInputs:
    """Everything a method sees for one output tensor."""

    tensors: list[torch.Tensor]  # one per model listed (config order, the base included when listed)
    params: list[dict[str, Any]]  # resolved per-model params for this tensor, aligned with `tensors`
    base: torch.Tensor | None  # base_model's tensor (listed or not); None without base_model
    base_index: int | None  # position of the base in `tensors` when listed, else None
    options: dict[str, Any]  # resolved method-level params
    name: str  # output tensor name
    generator: torch.Generator | None = None  # seeded by the engine from (--random-seed, name)

    def others(self) -> list[tuple[torch.Tensor, dict[str, Any]]]:
        """The non-base inputs with their parameters, in config order."""
        return [
            (t, p)
            for i, (t, p) in enumerate(zip(self.tensors, self.params, strict=True))
            if i != self.base_index
        ]

    def all_inputs(self) -> list[torch.Tensor]:
        """Every input as mergekit sees it: the listed models, then the base when it is not listed."""
        if self.base is not None and self.base_index is None:
            return [*self.tensors, self.base]
        return list(self.tensors)


@dataclass(frozen=True)
class MergeMethod:
    """A named merge function with its declared parameters and input requirements.

    `min_models`/`max_models` count inputs as mergekit does: the listed models plus an unlisted `base_model`.
    """

    name: str
    fn: Callable[[MergeInputs], torch.Tensor]
    params: tuple[Param, ...]
    requires_base: bool
    randomized: bool = False
    min_models: int = 1
    max_models: int | None = None
    description: str = ""
    check: Callable[[list[dict[str, Any]]], None] | None = None
    """Checks one tensor's resolved per-model parameters together (the plan calls it before any weights are
    read): for rules no single value's range can say, such as DELLA's density +/- epsilon inside (0, 1)."""
    kernel: NumpyKernel | None = None
    """The method's numpy twin (`merge/kernels/`): a CPU merge of safetensors runs it, without torch, and
    in worker processes; None: the method always runs in torch."""

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def __call__(self, inputs: MergeInputs) -> torch.Tensor:
        return self.fn(inputs)


def require_base(inputs: MergeInputs, method: str) -> torch.Tensor:
    """The base tensor, or a ConfigError naming the method that needs it."""
    if inputs.base is None:
        raise missing_base(method)
    return inputs.base


def work_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32 (as mergekit does for these methods)."""
    import torch

    return getattr(torch, work_dtype_name(str(tensor.dtype).removeprefix("torch.")))
