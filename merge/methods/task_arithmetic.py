"""The task-vector family: task_arithmetic, ties, dare_*, breadcrumbs*, della* as one function with switches.

merged = base + lambda * combine_i(w_i * sparsify(x_i - base)), where combine is a plain sum or a TIES sign
consensus, optionally divided by the summed weights (`normalize`).

Departures from the papers (mergekit's behaviour is the default, the paper's is an option):
- TIES elects the sign per entry from the *weight-scaled* trimmed deltas; `paper_sign_election: true` elects
  from the unscaled deltas as the TIES paper does.
- DARE/DELLA `rescale` restores each delta's L1 norm; `paper_rescale: true` divides by the keep probability
  (1/density for DARE, 1/p_i per entry for DELLA) as the papers do.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from mergeguard.merge.kernels import task_vectors as task_vectors_kernel
from mergeguard.merge.method_rules import Cut

from .base import FRACTION, REQUIRED, Interval, MergeInputs, MergeMethod, Param, require_base
from .sparsify import (
    EXACT_TIES_MAX_NUMEL,
    apply_cut_,
    breadcrumbs_,
    check_della,
    della_,
    magnitude_,
    magnitude_cut,
    random_,
)

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Variant:
    """The switches that make one named method of the family."""

    name: str
    sparsification: str | None  # None, "magnitude", "random", "breadcrumbs", "della"
    consensus: str | None  # None, "sum", "count"
    normalize: bool
    rescale: bool
    description: str


CHUNK = 1 << 16
"""Elements combined at a time: the dozen passes of the sign election stay in the CPU cache."""


def task_vector_merge(inputs: MergeInputs, variant: Variant) -> torch.Tensor:
    import torch

    base = require_base(inputs, variant.name)
    others = inputs.others()
    if not others:
        return base
    opts = inputs.options
    rescale = bool(opts["rescale"])
    paper_rescale = bool(opts.get("paper_rescale", False))
    if variant.sparsification is None:
        return _merge_dense(inputs, [t for t, _ in others], [float(p["weight"]) for _, p in others], variant)
    deltas = base.new_empty((len(others), *base.shape))
    cuts: list[Cut | None] = [None] * len(others)
    for i, (tensor, p) in enumerate(others):
        delta = deltas[i]
        torch.sub(tensor, base, out=delta)
        kind = variant.sparsification
        if kind == "magnitude":
            if rescale or delta.numel() <= EXACT_TIES_MAX_NUMEL:
                magnitude_(delta, float(p["density"]), rescale)
            else:  # decided on the whole tensor, applied chunk by chunk below
                cuts[i] = magnitude_cut(delta, float(p["density"]))
        elif kind == "breadcrumbs":
            breadcrumbs_(delta, float(p["density"]), float(p["gamma"]), rescale)
        elif kind == "random":
            out = random_(delta, float(p["density"]), rescale, inputs.generator, paper_rescale)
            if out is not delta:
                delta.copy_(out)
        elif kind == "della":
            out = della_(
                delta, float(p["density"]), float(p["epsilon"]), rescale, inputs.generator, paper_rescale
            )
            if out is not delta:
                delta.copy_(out)

    weights = [float(p["weight"]) for _, p in others]
    flat = deltas.view(len(others), -1)
    base_flat = base.reshape(-1)
    n = base_flat.numel()
    if n <= CHUNK:
        return _combine(flat, base_flat, weights, variant, opts).reshape(base.shape)
    out = torch.empty_like(base_flat)
    for start in range(0, n, CHUNK):
        s = slice(start, min(n, start + CHUNK))
        rows = flat[:, s]
        for i, cut in enumerate(cuts):
            if cut is not None:
                apply_cut_(rows[i], cut)
        out[s] = _combine(rows, base_flat[s], weights, variant, opts)
    return out.reshape(base.shape)


def _merge_dense(
    inputs: MergeInputs, tensors: list[torch.Tensor], weights: list[float], variant: Variant
) -> torch.Tensor:
    """No sparsification: each block's task vectors are taken in a reused buffer, never whole tensors."""
    import torch

    base = inputs.base
    assert base is not None
    base_flat = base.reshape(-1)
    flats = [t.reshape(-1) for t in tensors]
    n = base_flat.numel()
    out = torch.empty_like(base_flat)
    scratch = base.new_empty((len(tensors), min(n, CHUNK)))
    for start in range(0, n, CHUNK):
        end = min(n, start + CHUNK)
        rows = scratch[:, : end - start]
        for i, flat in enumerate(flats):
            torch.sub(flat[start:end], base_flat[start:end], out=rows[i])
        out[start:end] = _combine(rows, base_flat[start:end], weights, variant, inputs.options)
    return out.reshape(base.shape)


def _combine(
    deltas: torch.Tensor, base: torch.Tensor, weights: list[float], variant: Variant, opts: dict
) -> torch.Tensor:
    """base + lambda * combine(w_i * delta_i) for one block of elements (deltas: models x elements).

    Element-wise throughout, so a tensor combined block by block gives the same bits as in one go. Masks
    are 0/1 tensors of the work dtype built with `sign` (exact), not bool tensors: torch's comparison and
    `where` kernels are several times slower on CPU than its arithmetic.
    """
    import torch

    w = torch.tensor(weights, dtype=deltas.dtype, device=deltas.device).view(-1, 1)
    paper = bool(variant.consensus and opts.get("paper_sign_election", False))
    sign = _elect(deltas, variant.consensus) if paper else None  # the TIES paper votes unweighted
    deltas.mul_(w)
    if variant.consensus:
        if sign is None:
            sign = _elect(deltas, variant.consensus)
        divisor = torch.zeros_like(base) if opts["normalize"] else None
        for i, wi in enumerate(weights):
            row = deltas[i]
            agree = torch.mul(row, sign)  # > 0 where the entry has the elected sign (zeros never agree)
            if paper and wi < 0:  # a negatively weighted model's unscaled delta voted with the other sign
                agree.neg_()
            agree.sign_().clamp_(min=0)  # 1 where it agrees, else 0
            row.mul_(agree)
            if divisor is not None:
                divisor.add_(agree, alpha=wi)
            del agree
        del sign
        mixed = _sum_rows(deltas)
        if divisor is not None:
            divisor.add_(divisor.abs().sign_().sub_(1).neg_())  # 0 -> 1 (no model agrees)
    else:
        mixed = _sum_rows(deltas)
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if opts["normalize"]:
        mixed.div_(divisor)
    lam = float(opts["lambda"])
    if lam != 1:
        mixed.mul_(lam)
    return mixed.add_(base).to(base.dtype)


def _sum_rows(rows: torch.Tensor) -> torch.Tensor:
    """rows.sum(dim=0); two rows by one `add` (the same bits: one rounding either way, and faster)."""
    import torch

    if rows.shape[0] == 2:
        return torch.add(rows[0], rows[1])
    return rows.sum(dim=0)


def _elect(deltas: torch.Tensor, method: str | None) -> torch.Tensor:
    """Per entry, +1 where the elected sign is positive (sum of deltas, or count of signs, >= 0), else -1."""
    import torch

    if method == "sum":
        total = _sum_rows(deltas)
    else:
        total = torch.zeros_like(deltas[0])
        for row in deltas:
            total.add_(torch.sign(row))
    return total.sign_().add_(0.5).sign_()  # >= 0 -> 1, < 0 -> -1


def _delta_param(name: str, default: Any, help: str, valid: Interval | None = None) -> Param:
    """A per-model float of a task vector (its weight, density, gamma, epsilon): the base has none."""
    return Param(name, float, default, per_model=True, non_base=True, help=help, valid=valid)


def _params(variant: Variant) -> tuple[Param, ...]:
    params = [
        _delta_param("weight", REQUIRED, "scale of this model's task vector"),
        _delta_param("density", 1.0, "fraction of the delta kept", FRACTION),
    ]
    if variant.sparsification == "breadcrumbs":
        params.append(_delta_param("gamma", 0.01, "fraction of largest deltas dropped", Interval(0, 1)))
    if variant.sparsification == "della":
        params.append(
            _delta_param("epsilon", 0.15, "keep-probability spread by rank", Interval(0, 1, high_open=True))
        )
    params += [
        Param("normalize", bool, variant.normalize, help="divide by the summed weights (of agreeing models)"),
        Param("rescale", bool, variant.rescale, help="rescale kept deltas to the original L1 norm"),
        Param("lambda", float, 1.0, help="scale of the merged task vector"),
        Param("int8_mask", bool, False, help="mergekit memory option; no effect on the result"),
    ]
    if variant.consensus:
        params.append(
            Param(
                "paper_sign_election",
                bool,
                False,
                help="mergeguard: elect signs on unweighted deltas (TIES paper)",
            )
        )
    if variant.sparsification in ("random", "della"):
        params.append(
            Param(
                "paper_rescale",
                bool,
                False,
                help="mergeguard: rescale by 1/keep-probability (DARE/DELLA papers)",
            )
        )
    return tuple(params)


VARIANTS = (
    Variant("task_arithmetic", None, None, False, False, "base + weighted sum of task vectors"),
    Variant("ties", "magnitude", "sum", True, False, "trim by magnitude, elect sign, disjoint merge"),
    Variant("dare_ties", "random", "sum", False, True, "random drop with rescale, then TIES sign consensus"),
    Variant("dare_linear", "random", None, False, True, "random drop with rescale, weighted sum"),
    Variant(
        "breadcrumbs", "breadcrumbs", None, False, False, "drop smallest and largest deltas, weighted sum"
    ),
    Variant("breadcrumbs_ties", "breadcrumbs", "sum", False, False, "breadcrumbs with TIES sign consensus"),
    Variant("della", "della", "sum", True, True, "magnitude-ranked random drop, TIES sign consensus"),
    Variant("della_linear", "della", None, False, True, "magnitude-ranked random drop, weighted sum"),
)


def _method(v: Variant) -> MergeMethod:
    fn = partial(task_vector_merge, variant=v)
    return MergeMethod(
        name=v.name,
        fn=fn,
        params=_params(v),
        requires_base=True,
        randomized=v.sparsification in ("random", "della"),
        description=v.description,
        check=_check_della if v.sparsification == "della" else None,
        kernel=task_vectors_kernel.for_variant(v.name, v.sparsification, v.consensus),
    )


def _check_della(params: list[dict[str, Any]]) -> None:
    for p in params:
        if "epsilon" in p:  # the base has no density or epsilon
            check_della(float(p["density"]), float(p["epsilon"]))


FAMILY = tuple(_method(v) for v in VARIANTS)
