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

import torch

from .base import MergeInputs, MergeMethod, Param, require_base
from .sparsify import breadcrumbs_, della_, magnitude_, random_


@dataclass(frozen=True)
class Variant:
    """The switches that make one named method of the family."""

    name: str
    sparsification: str | None  # None, "magnitude", "random", "breadcrumbs", "della"
    consensus: str | None  # None, "sum", "count"
    normalize: bool
    rescale: bool
    description: str


def task_vector_merge(inputs: MergeInputs, variant: Variant) -> torch.Tensor:
    base = require_base(inputs, variant.name)
    others = inputs.others()
    if not others:
        return base
    opts = inputs.options
    rescale = bool(opts["rescale"])
    paper_rescale = bool(opts.get("paper_rescale", False))
    deltas = base.new_empty((len(others), *base.shape))
    for i, (tensor, p) in enumerate(others):
        delta = deltas[i]
        torch.sub(tensor, base, out=delta)
        kind = variant.sparsification
        if kind == "magnitude":
            magnitude_(delta, float(p["density"]), rescale)
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
    w = torch.tensor(weights, dtype=deltas.dtype, device=deltas.device).view(-1, *([1] * base.dim()))
    paper = bool(variant.consensus and opts.get("paper_sign_election", False))
    positive = _elect(deltas, variant.consensus) if paper else None  # the TIES paper votes unweighted
    deltas.mul_(w)
    if variant.consensus:
        if positive is None:
            positive = _elect(deltas, variant.consensus)
        divisor = torch.zeros_like(base) if opts["normalize"] else None
        for i, wi in enumerate(weights):
            row = deltas[i]
            up, down = (row < 0, row > 0) if paper and wi < 0 else (row > 0, row < 0)
            agree = torch.where(positive, up, down)  # zeros never agree
            del up, down
            row.mul_(agree)
            if divisor is not None:
                divisor.add_(agree.to(divisor.dtype), alpha=wi)
            del agree
        del positive
        mixed = deltas.sum(dim=0)
        if divisor is not None:
            divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    del deltas
    if opts["normalize"]:
        mixed.div_(divisor)
    lam = float(opts["lambda"])
    if lam != 1:
        mixed.mul_(lam)
    return mixed.add_(base).to(base.dtype)


def _elect(deltas: torch.Tensor, method: str | None) -> torch.Tensor:
    """Per entry, True where the elected sign is positive (by the sum of the deltas, or a count of signs)."""
    if method == "sum":
        return deltas.sum(dim=0) >= 0
    votes = torch.zeros_like(deltas[0])
    for row in deltas:
        votes.add_(torch.sign(row))
    return votes >= 0


def _params(variant: Variant) -> tuple[Param, ...]:
    params = [
        Param("weight", float, per_model=True, non_base=True, help="scale of this model's task vector"),
        Param("density", float, 1.0, per_model=True, non_base=True, help="fraction of the delta kept"),
    ]
    if variant.sparsification == "breadcrumbs":
        params.append(
            Param(
                "gamma", float, 0.01, per_model=True, non_base=True, help="fraction of largest deltas dropped"
            )
        )
    if variant.sparsification == "della":
        params.append(
            Param(
                "epsilon", float, 0.15, per_model=True, non_base=True, help="keep-probability spread by rank"
            )
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
    )


FAMILY = tuple(_method(v) for v in VARIANTS)
