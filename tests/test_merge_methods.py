"""Each merge method against an independent reference formula (from the papers / mergekit's docs).

The references below are written from scratch on small tensors, element by element where that is clearest;
they never call mergeguard's helpers.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mergeguard.errors import ConfigError
from mergeguard.merge.methods import ALL_PARAM_NAMES, METHODS, REQUIRED, MergeInputs, get_method

ATOL = 1e-5


def run(method, tensors, params=None, *, base_index=None, base=None, gen=None, name="w", **options):
    """Call a method the way the engine does: defaults filled, base given whenever there is one."""
    m = METHODS[method]
    opts = {p.name: p.default for p in m.params if not p.per_model}
    opts.update(options)
    params = params or [{} for _ in tensors]
    full = []
    for p in params:
        d = {q.name: q.default for q in m.params if q.per_model and q.default is not REQUIRED}
        d.update(p)
        full.append(d)
    if base is None and base_index is not None:
        base = tensors[base_index]
    snapshot = [t.clone() for t in tensors]
    out = m.fn(MergeInputs(list(tensors), full, base, base_index, opts, name, gen))
    for before, after in zip(snapshot, tensors, strict=True):
        assert torch.equal(before, after), "a merge method modified its inputs"
    return out


def rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def family(n=3, shape=(6, 5), seed=0):
    """A base and n fine-tunes close to it."""
    base = rand(*shape, seed=seed)
    return base, [base + rand(*shape, seed=seed + i + 1, scale=0.1) for i in range(n)]


# ---------------------------------------------------------------- registry


def test_registry_has_the_20_mergekit_methods():
    expected = {
        "linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs",
        "breadcrumbs_ties", "della", "della_linear", "slerp", "nuslerp", "multislerp", "karcher",
        "model_stock", "sce", "nearswap", "passthrough", "arcee_fusion", "ram", "ramplus_tl",
    }  # fmt: skip
    assert set(METHODS) == expected
    for m in METHODS.values():
        assert all(p.kind in (float, bool, int) for p in m.params), m.name
        assert len({p.name for p in m.params}) == len(m.params)
        assert get_method(m.name) is m


def test_unknown_method_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown merge method `tie`, did you mean `ties`\?"):
        get_method("tie")
    with pytest.raises(ConfigError, match="known methods: .*slerp"):
        get_method("zzz")


@pytest.mark.parametrize(
    "method,name,default,per_model",
    [
        ("linear", "weight", REQUIRED, True),
        ("linear", "normalize", True, False),
        ("task_arithmetic", "normalize", False, False),
        ("ties", "normalize", True, False),
        ("ties", "density", 1.0, True),
        ("ties", "rescale", False, False),
        ("dare_ties", "rescale", True, False),
        ("dare_ties", "normalize", False, False),
        ("dare_linear", "rescale", True, False),
        ("breadcrumbs", "gamma", 0.01, True),
        ("della", "epsilon", 0.15, True),
        ("della", "normalize", True, False),
        ("della_linear", "normalize", False, False),
        ("ties", "lambda", 1.0, False),
        ("ties", "int8_mask", False, False),
        ("slerp", "t", REQUIRED, False),
        ("nuslerp", "nuslerp_flatten", True, False),
        ("nuslerp", "nuslerp_row_wise", False, False),
        ("multislerp", "normalize_weights", True, False),
        ("multislerp", "eps", 1e-8, False),
        ("karcher", "max_iter", 10, False),
        ("karcher", "tol", 1e-5, False),
        ("model_stock", "filter_wise", False, False),
        ("sce", "select_topk", 1.0, False),
        ("nearswap", "t", REQUIRED, False),
        ("passthrough", "scale", None, True),
    ],
)
def test_parameter_names_and_defaults_follow_mergekit(method, name, default, per_model):
    p = METHODS[method].param(name)
    assert p is not None and p.default == default and p.per_model == per_model
    assert name in ALL_PARAM_NAMES


def test_methods_that_do_not_use_a_param_do_not_declare_it():
    assert METHODS["sce"].param("density") is None and METHODS["sce"].param("weight") is None
    assert METHODS["ties"].param("gamma") is None and METHODS["ties"].param("epsilon") is None
    assert METHODS["task_arithmetic"].param("paper_rescale") is None
    assert METHODS["dare_linear"].param("paper_sign_election") is None
    assert [m for m in METHODS.values() if m.randomized] == [
        METHODS[n] for n in ("dare_ties", "dare_linear")
    ] + [
        METHODS["della"],
        METHODS["della_linear"],
        METHODS["arcee_fusion"],  # samples its quantiles above a million entries
    ]


# ---------------------------------------------------------------- linear / task arithmetic


def test_linear_matches_weighted_average():
    xs = [rand(4, 3, seed=i) for i in range(3)]
    w = [0.5, 0.3, 0.7]
    out = run("linear", xs, [{"weight": v} for v in w])
    ref = sum(wi * x for wi, x in zip(w, xs, strict=True)) / sum(w)
    assert torch.allclose(out, ref, atol=ATOL)
    out = run("linear", xs, [{"weight": v} for v in w], normalize=False)
    assert torch.allclose(out, ref * sum(w), atol=ATOL)


def test_linear_of_one_model_is_identity_and_keeps_dtype():
    x = rand(5, 7, seed=3).to(torch.bfloat16)
    out = run("linear", [x], [{"weight": 0.37}])
    assert out.dtype == torch.bfloat16 and torch.equal(out, x)


def test_linear_zero_weight_sum_is_a_config_error():
    with pytest.raises(ConfigError, match="sum to zero"):
        run("linear", [rand(3), rand(3, seed=1)], [{"weight": 1.0}, {"weight": -1.0}])


def test_task_arithmetic_matches_formula_with_base_listed_or_not():
    base, fts = family()
    w = [1.0, 0.5, -0.3]
    ref = base + 0.8 * sum(wi * (x - base) for wi, x in zip(w, fts, strict=True))
    listed = run(
        "task_arithmetic", [base, *fts], [{}] + [{"weight": v} for v in w], base_index=0, **{"lambda": 0.8}
    )
    unlisted = run("task_arithmetic", fts, [{"weight": v} for v in w], base=base, **{"lambda": 0.8})
    assert torch.allclose(listed, ref, atol=ATOL) and torch.equal(listed, unlisted)
    normed = run("task_arithmetic", fts, [{"weight": v} for v in w], base=base, normalize=True)
    assert torch.allclose(normed, base + (ref - base) / 0.8 / sum(w), atol=ATOL)


def test_task_vector_methods_need_a_base():
    with pytest.raises(ConfigError, match="needs a base model"):
        run("ties", [rand(3)], [{"weight": 1.0}])


# ---------------------------------------------------------------- TIES family


def ref_trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES trim: keep the top max(1, int(density * n)) entries by |value|."""
    flat = delta.flatten().tolist()
    k = max(1, int(density * len(flat)))
    keep = sorted(range(len(flat)), key=lambda i: -abs(flat[i]))[:k]
    out = [0.0] * len(flat)
    for i in keep:
        out[i] = flat[i]
    return torch.tensor(out).reshape(delta.shape)


def ref_ties(base, fts, weights, densities, normalize=True, lam=1.0, paper=False):
    """mergekit TIES, element by element: elect the sign of sum_i w_i d_i (d_i unweighted with `paper`)."""
    deltas = [ref_trim(x - base, d) for x, d in zip(fts, densities, strict=True)]
    out = base.flatten().tolist()
    for e in range(len(out)):
        vals = [float(d.flatten()[e]) for d in deltas]
        elect = sum(vals) if paper else sum(w * v for w, v in zip(weights, vals, strict=True))
        sign = 1.0 if elect >= 0 else -1.0
        agree = [
            (w, v) for w, v in zip(weights, vals, strict=True) if v != 0 and math.copysign(1, w * v) == sign
        ]
        if paper:
            agree = [
                (w, v) for w, v in zip(weights, vals, strict=True) if v != 0 and math.copysign(1, v) == sign
            ]
        total = sum(w * v for w, v in agree)
        if normalize:
            div = sum(w for w, _ in agree)
            total /= div if div != 0 else 1.0
        out[e] += lam * total
    return torch.tensor(out).reshape(base.shape)


@pytest.mark.parametrize("paper", [False, True])
def test_ties_matches_element_wise_reference(paper):
    base, fts = family(3, (5, 4), seed=7)
    w, dens = [1.0, 0.6, -0.4], [0.5, 0.3, 0.8]
    params = [{"weight": a, "density": b} for a, b in zip(w, dens, strict=True)]
    out = run("ties", fts, params, base=base, paper_sign_election=paper, **{"lambda": 1.2})
    assert torch.allclose(out, ref_ties(base, fts, w, dens, lam=1.2, paper=paper), atol=ATOL)
    out = run("ties", fts, params, base=base, normalize=False, paper_sign_election=paper)
    assert torch.allclose(out, ref_ties(base, fts, w, dens, normalize=False, paper=paper), atol=ATOL)


def test_paper_sign_election_differs_when_weights_flip_the_vote():
    base = torch.zeros(1)
    fts = [torch.tensor([1.0]), torch.tensor([-0.6])]
    params = [{"weight": 0.1}, {"weight": 1.0}]
    # weighted votes: 0.1 vs -0.6 -> negative wins; unweighted: 1.0 vs -0.6 -> positive wins
    assert run("ties", fts, params, base=base).item() == pytest.approx(-0.6)
    assert run("ties", fts, params, base=base, paper_sign_election=True).item() == pytest.approx(1.0)


def test_ties_density_one_single_model_is_task_arithmetic():
    base, (ft,) = family(1, (8, 3), seed=2)
    ties = run("ties", [ft], [{"weight": 0.7}], base=base, normalize=False)
    ta = run("task_arithmetic", [ft], [{"weight": 0.7}], base=base)
    assert torch.allclose(ties, ta, atol=1e-7)
    # normalized, a single model's delta comes back whole
    assert torch.allclose(run("ties", [ft], [{"weight": 0.7}], base=base), ft, atol=1e-6)


def test_ties_rescale_restores_l1_norm_of_each_trimmed_delta():
    base, (ft,) = family(1, (10, 10), seed=4)
    out = run("ties", [ft], [{"weight": 1.0, "density": 0.2}], base=base, rescale=True, normalize=False)
    delta = out - base
    assert int((delta != 0).sum()) == 20
    assert delta.abs().sum().item() == pytest.approx((ft - base).abs().sum().item(), rel=1e-5)


def test_breadcrumbs_drops_largest_gamma_and_smallest():
    base = torch.zeros(100)
    ft = torch.arange(1, 101, dtype=torch.float32) * torch.tensor([1.0, -1.0]).repeat(50)
    out = run("breadcrumbs", [ft], [{"weight": 1.0, "density": 0.5, "gamma": 0.1}], base=base)
    # ranks by |value| ascending: keep positions [100 - 50 - 10, 90) = magnitudes 41..90
    kept = sorted(int(v) for v in out.abs().tolist() if v != 0)
    assert kept == list(range(41, 91))
    assert torch.equal(out[out != 0], ft[out != 0])


def test_breadcrumbs_density_one_ignores_gamma_like_mergekit():
    base, (ft,) = family(1, (4, 4))
    out = run("breadcrumbs", [ft], [{"weight": 1.0, "gamma": 0.3}], base=base)
    assert torch.allclose(out, ft, atol=1e-7)


def test_breadcrumbs_ties_matches_trim_then_consensus():
    base, fts = family(2, (6, 6), seed=9)
    w = [0.8, 0.5]
    out = run("breadcrumbs_ties", fts, [{"weight": v, "density": 0.5, "gamma": 0.1} for v in w], base=base)

    def crumbs(d):
        flat = d.flatten().tolist()
        n = len(flat)
        target, top = int(0.5 * n), int(0.1 * n)
        order = sorted(range(n), key=lambda i: abs(flat[i]))[n - target - top : n - top]
        res = [0.0] * n
        for i in order:
            res[i] = flat[i]
        return torch.tensor(res).reshape(d.shape)

    ds = [crumbs(x - base) * wi for x, wi in zip(fts, w, strict=True)]
    stacked = torch.stack(ds)
    sign = torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
    agree = (torch.sign(stacked) == sign).float()
    ref = base + (stacked * agree).sum(0)  # breadcrumbs_ties: normalize defaults to False
    assert torch.allclose(out, ref, atol=ATOL)


# ---------------------------------------------------------------- DARE / DELLA (random)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_dare_is_deterministic_for_a_seed_and_independent_of_call_order():
    base, fts = family(2, (30, 20), seed=1)
    other_base, other_fts = family(2, (7, 9), seed=5)
    params = [{"weight": 1.0, "density": 0.3}, {"weight": 0.5, "density": 0.6}]

    def merge_both(order):
        res = {}
        for name in order:
            b, f = (base, fts) if name == "a" else (other_base, other_fts)
            res[name] = run("dare_ties", f, params, base=b, gen=gen(hash(name) % 1000), name=name)
        return res

    first, second = merge_both("ab"), merge_both("ba")
    assert torch.equal(first["a"], second["a"]) and torch.equal(first["b"], second["b"])
    different = run("dare_ties", fts, params, base=base, gen=gen(999))
    assert not torch.equal(different, first["a"])


def test_dare_linear_keeps_density_fraction_and_l1_norm():
    base, (ft,) = family(1, (200, 100), seed=3)
    out = run("dare_linear", [ft], [{"weight": 1.0, "density": 0.25}], base=base, gen=gen(0))
    delta = out - base
    kept = (delta != 0).float().mean().item()
    assert abs(kept - 0.25) < 0.02
    assert delta.abs().sum().item() == pytest.approx((ft - base).abs().sum().item(), rel=1e-4)
    # each survivor scaled by the same L1 ratio
    ratio = delta[delta != 0] / (ft - base)[delta != 0]
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-4)


def test_dare_paper_rescale_divides_by_density():
    base, (ft,) = family(1, (50, 40), seed=3)
    out = run(
        "dare_linear", [ft], [{"weight": 1.0, "density": 0.4}], base=base, gen=gen(1), paper_rescale=True
    )
    delta, orig = out - base, ft - base
    nz = delta != 0
    assert torch.allclose(delta[nz], orig[nz] / 0.4, rtol=1e-5, atol=1e-6)
    no_rescale = run(
        "dare_linear", [ft], [{"weight": 1.0, "density": 0.4}], base=base, gen=gen(1), rescale=False
    )
    assert torch.allclose(no_rescale[nz] - base[nz], orig[nz], atol=1e-6)
    assert torch.equal(no_rescale - base != 0, nz)  # same draws from the same seed


def test_della_keeps_large_magnitudes_more_often():
    base = torch.zeros(400, 100)
    ft = torch.arange(1, 101, dtype=torch.float32).repeat(400, 1)  # rank == column
    out = run(
        "della_linear",
        [ft],
        [{"weight": 1.0, "density": 0.5, "epsilon": 0.3}],
        base=base,
        gen=gen(2),
        rescale=False,
    )
    keep = (out != 0).float().mean(dim=0)
    # keep probability rises linearly from density - eps to density + eps across the row
    expected = 0.2 + torch.arange(100) / 99 * 0.6
    assert (keep - expected).abs().max() < 0.1
    assert keep[:10].mean() < 0.3 < 0.7 < keep[-10:].mean()


def test_della_paper_rescale_divides_by_each_keep_probability():
    base = torch.zeros(2, 5)
    ft = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    params = [{"weight": 1.0, "density": 0.5, "epsilon": 0.4}]
    out = run("della_linear", [ft], params, base=base, gen=gen(3), paper_rescale=True)
    probs = torch.tensor([[0.1, 0.3, 0.5, 0.7, 0.9], [0.9, 0.7, 0.5, 0.3, 0.1]])
    nz = out != 0
    assert torch.allclose(out[nz], ft[nz] / probs[nz], rtol=1e-5)


def test_della_epsilon_out_of_range_is_a_config_error():
    base, (ft,) = family(1)
    with pytest.raises(ConfigError, match="epsilon"):
        run("della", [ft], [{"weight": 1.0, "density": 0.9, "epsilon": 0.15}], base=base, gen=gen(0))


# ---------------------------------------------------------------- spherical methods


def ref_slerp(t, a, b):
    a64, b64 = a.double().flatten(), b.double().flatten()
    cos = float(a64 @ b64 / (a64.norm() * b64.norm()))
    if abs(cos) > 0.9995:
        return ((1 - t) * a64 + t * b64).reshape(a.shape)
    th = math.acos(cos)
    return ((math.sin((1 - t) * th) * a64 + math.sin(t * th) * b64) / math.sin(th)).reshape(a.shape)


@pytest.mark.parametrize("t", [0.0, 0.25, 0.6, 1.0])
def test_slerp_matches_formula_and_endpoints(t):
    a, b = rand(8, 6, seed=1), rand(8, 6, seed=2)
    out = run("slerp", [a, b], base_index=0, t=t)
    assert torch.allclose(out.double(), ref_slerp(t, a, b), atol=ATOL)
    if t == 0.0:
        assert torch.allclose(out, a, atol=1e-6)
    if t == 1.0:
        assert torch.allclose(out, b, atol=1e-6)
    # base listed second: still interpolates from the base
    assert torch.allclose(run("slerp", [b, a], base_index=1, t=t), out, atol=1e-6)


def test_slerp_falls_back_to_lerp_for_parallel_vectors():
    a = rand(50, seed=1)
    out = run("slerp", [a, 2 * a], base_index=0, t=0.5)
    assert torch.allclose(out, 1.5 * a, atol=1e-6)


def test_slerp_keeps_half_precision_dtype():
    a, b = rand(8, 6, seed=1).half(), rand(8, 6, seed=2).half()
    out = run("slerp", [a, b], base_index=0, t=0.3)
    assert out.dtype == torch.float16
    assert torch.allclose(out.double(), ref_slerp(0.3, a.float(), b.float()), atol=2e-3)


def test_nuslerp_weights_set_t_and_act_on_task_vectors():
    base, (x, y) = family(2, (6, 4), seed=8)
    out = run("nuslerp", [x, y], [{"weight": 1.0}, {"weight": 3.0}], base=base)
    assert torch.allclose(out.double(), base.double() + ref_slerp(0.75, x - base, y - base), atol=ATOL)
    nobase = run("nuslerp", [x, y], [{"weight": 1.0}, {"weight": 3.0}])
    assert torch.allclose(nobase.double(), ref_slerp(0.75, x, y), atol=ATOL)


@pytest.mark.parametrize("row_wise", [False, True])
def test_nuslerp_unflattened_interpolates_each_vector(row_wise):
    x, y = rand(5, 7, seed=1), rand(5, 7, seed=2)
    out = run(
        "nuslerp",
        [x, y],
        [{"weight": 2.0}, {"weight": 2.0}],
        nuslerp_flatten=False,
        nuslerp_row_wise=row_wise,
    )
    xs, ys = (x.T, y.T) if row_wise else (x, y)
    ref = torch.stack([ref_slerp(0.5, xs[i], ys[i]) for i in range(xs.shape[0])])
    assert torch.allclose(out.double(), ref.T if row_wise else ref, atol=ATOL)


def test_multislerp_of_orthogonal_pair_is_the_scaled_bisector():
    a = torch.tensor([3.0, 0.0, 0.0])
    b = torch.tensor([0.0, 1.0, 0.0])
    out = run("multislerp", [a, b], [{"weight": 1.0}, {"weight": 1.0}])
    # unit bisector times the weighted mean norm (3 + 1) / 2
    assert torch.allclose(out, torch.tensor([2.0, 2.0, 0.0]) / math.sqrt(2), atol=1e-5)


def test_multislerp_matches_tangent_space_formula():
    base, fts = family(3, (4, 5), seed=11)
    w = [0.2, 0.5, 0.3]
    out = run("multislerp", fts, [{"weight": v} for v in w], base=base)
    vs = [(x - base).flatten().double() for x in fts]
    norms = [v.norm() for v in vs]
    units = [v / n for v, n in zip(vs, norms, strict=True)]
    mean = sum(wi * u for wi, u in zip(w, units, strict=True))
    mean = mean / mean.norm()
    tangent = sum(wi * (u - (u @ mean) * mean) for wi, u in zip(w, units, strict=True))
    tn = tangent.norm()
    res = (mean * torch.cos(tn) + tangent * torch.sin(tn) / tn) * sum(
        wi * n for wi, n in zip(w, norms, strict=True)
    )
    assert torch.allclose(out.double(), base.double() + res.reshape(base.shape), atol=ATOL)


def test_multislerp_single_model_is_identity():
    x = rand(3, 3)
    assert torch.equal(run("multislerp", [x], [{"weight": 0.3}]), x)


def test_karcher_of_identical_tensors_is_that_tensor():
    x = rand(6, 6, seed=5)
    assert torch.allclose(run("karcher", [x, x.clone(), x.clone()]), x, atol=1e-6)


def test_karcher_of_orthogonal_pair_is_bisector_scaled_by_mean_norm():
    a, b = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 4.0])
    out = run("karcher", [a, b])
    assert torch.allclose(out, 3.0 * torch.tensor([1.0, 1.0]) / math.sqrt(2), atol=1e-5)


def test_karcher_includes_an_unlisted_base_like_mergekit():
    a, b, c = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    out = run("karcher", [a, b], base=c)
    assert torch.allclose(out, torch.ones(3) / math.sqrt(3), atol=1e-5)


# ---------------------------------------------------------------- model_stock, sce, nearswap, passthrough


def ref_model_stock(base, fts):
    offs = [(x - base).flatten().double() for x in fts]
    cos = [float(a @ b / (a.norm() * b.norm())) for i, a in enumerate(offs) for b in offs[i + 1 :]]
    c = sum(cos) / len(cos)
    n = len(fts)
    t = n * c / (1 + (n - 1) * c)
    return t * (sum(fts) / n) + (1 - t) * base


def test_model_stock_matches_formula():
    base, fts = family(3, (5, 5), seed=12)
    fts = [f + 0.05 * fts[0] for f in fts]  # correlated fine-tunes: positive angle
    out = run("model_stock", [base, *fts], base_index=0)
    assert torch.allclose(out.double(), ref_model_stock(base, fts).double(), atol=ATOL)


def test_model_stock_identical_finetunes_give_the_finetune():
    base, (ft,) = family(1, (4, 6))
    out = run("model_stock", [ft, ft.clone()], base=base)
    assert torch.allclose(out, ft, atol=1e-6)


def test_model_stock_filter_wise_uses_one_ratio_per_row():
    base, fts = family(2, (3, 8), seed=13)
    out = run("model_stock", fts, base=base, filter_wise=True)
    rows = torch.stack([ref_model_stock(base[i], [f[i] for f in fts]) for i in range(3)])
    assert torch.allclose(out.double(), rows.double(), atol=ATOL)


def ref_sce(base, fts, topk):
    tvs = torch.stack([x - base for x in fts]).double()
    if topk < 1:
        var = tvs.var(dim=0, unbiased=False).flatten()
        k = int(int((var != 0).sum()) * topk)
        keep = torch.zeros_like(var)
        keep[sorted(range(var.numel()), key=lambda i: -float(var[i]))[:k]] = 1
        tvs = tvs * keep.reshape(base.shape)
    energy = tvs.pow(2).flatten(1).mean(1)
    w = energy / energy.sum()
    sign = torch.where(tvs.sum(0) >= 0, 1.0, -1.0)
    agree = (torch.sign(tvs) == sign).double()
    ww = w.view(-1, 1, 1) * agree
    return base.double() + (tvs * ww).sum(0) / ww.sum(0).clamp(min=1e-6)


@pytest.mark.parametrize("topk", [1.0, 0.4])
def test_sce_matches_formula(topk):
    base, fts = family(3, (6, 5), seed=14)
    out = run("sce", [base, *fts], base_index=0, select_topk=topk)
    assert torch.allclose(out.double(), ref_sce(base, fts, topk), atol=ATOL)


def test_nearswap_matches_elementwise_formula():
    base = torch.tensor([0.0, 0.0, 0.0, 1.0])
    other = torch.tensor([0.01, 0.5, -2.0, 1.0])
    out = run("nearswap", [base, other], base_index=0, t=0.1)
    ref = []
    for a, b in zip(base.tolist(), other.tolist(), strict=True):
        w = min(1.0, max(0.0, 0.1 / max(abs(a - b), 1e-6)))
        ref.append(w * b + (1 - w) * a)
    assert torch.allclose(out, torch.tensor(ref), atol=1e-6)
    assert out[0] == other[0]  # closer than t: swapped


def test_passthrough_copies_or_scales():
    x = rand(4, 4)
    assert torch.equal(run("passthrough", [x]), x)
    assert torch.allclose(run("passthrough", [x], [{"scale": 0.5}]), 0.5 * x)
    with pytest.raises(ConfigError, match="exactly one"):
        run("passthrough", [x, x])


# ---------------------------------------------------------------- property tests


@settings(max_examples=40, deadline=None)
@given(
    weights=st.lists(st.floats(0.05, 5.0), min_size=1, max_size=4),
    seed=st.integers(0, 10_000),
)
def test_normalized_linear_stays_inside_the_inputs(weights, seed):
    xs = [rand(3, 4, seed=seed + i) for i in range(len(weights))]
    out = run("linear", xs, [{"weight": w} for w in weights])
    stacked = torch.stack(xs)
    assert (out >= stacked.min(0).values - 1e-5).all() and (out <= stacked.max(0).values + 1e-5).all()


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.integers(-4, 4), min_size=2, max_size=60),
    density=st.floats(0.01, 0.99),
)
def test_ties_trim_keeps_exactly_k_largest_even_with_ties(values, density):
    base = torch.zeros(len(values))
    ft = torch.tensor(values, dtype=torch.float32)
    out = run("ties", [ft], [{"weight": 1.0, "density": density}], base=base, normalize=False)
    k = max(1, int(density * len(values)))
    kept = out[out != 0].abs()
    dropped = ft[(out == 0) & (ft != 0)].abs()
    # the kept set is k entries (fewer only where zeros were selected) and dominates what was dropped
    assert int((out != 0).sum()) == min(k, int((ft != 0).sum()))
    if kept.numel() and dropped.numel():
        assert kept.min() >= dropped.max()
    assert torch.equal(out[out != 0], ft[out != 0])


def test_large_tensors_with_tied_magnitudes_keep_exactly_k_lowest_index_first():
    # above EXACT_TIES_MAX_NUMEL the cut is found from a sample and ties go to the lowest indices
    n = 300_000
    values = (torch.arange(n) % 1000).float() - 500.0  # every magnitude repeated ~600 times
    base = torch.zeros(n)
    out = run("ties", [values], [{"weight": 1.0, "density": 0.3}], base=base, normalize=False)
    k = int(0.3 * n)
    kept = out != 0
    assert int(kept.sum()) == k
    assert out[kept].abs().min() >= values[~kept].abs().max()
    cut = out[kept].abs().min()
    tied = (values.abs() == cut).nonzero().flatten()
    kept_tied = tied[kept[tied]]
    assert torch.equal(kept_tied, tied[: kept_tied.numel()])  # lowest indices first
    crumbs = run("breadcrumbs", [values], [{"weight": 1.0, "density": 0.5, "gamma": 0.1}], base=base)
    assert int((crumbs != 0).sum()) == n // 2
    assert crumbs.abs().max() <= values.abs().max()
    sce_out = run("sce", [base, values, -0.5 * values], base_index=0, select_topk=0.25)
    assert sce_out.shape == values.shape and torch.isfinite(sce_out).all()


def test_count_consensus_switch_elects_by_number_of_signs():
    from mergeguard.merge.methods.base import MergeInputs as Inputs
    from mergeguard.merge.methods.task_arithmetic import Variant, task_vector_merge

    variant = Variant("count_demo", None, "count", True, False, "")
    base = torch.zeros(2)
    fts = [torch.tensor([1.0, -1.0]), torch.tensor([1.0, -1.0]), torch.tensor([-5.0, 2.0])]
    params = [{"weight": 1.0} for _ in fts]
    opts = {"normalize": True, "rescale": False, "lambda": 1.0}
    out = task_vector_merge(Inputs(fts, params, base, None, opts, "w", None), variant)
    # two votes beat one large value: the positive side wins entry 0, the negative side entry 1
    assert torch.equal(out, torch.tensor([1.0, -1.0]))


def _ref_ties_vectorised(base, fts, weights, densities):
    """mergekit's TIES on continuous values (no magnitude ties): top-k trim, weighted sign vote, mean."""
    trimmed = []
    for ft, density in zip(fts, densities, strict=True):
        delta = (ft - base).flatten()
        keep = torch.topk(delta.abs(), int(density * delta.numel())).indices
        out = torch.zeros_like(delta)
        out[keep] = delta[keep]
        trimmed.append(out)
    weighted = [w * d for w, d in zip(weights, trimmed, strict=True)]
    elected = torch.sign(sum(weighted))
    agree = [(torch.sign(d) == elected) & (d != 0) for d in trimmed]
    total = sum(wd * a for wd, a in zip(weighted, agree, strict=True))
    divisor = sum(w * a.float() for w, a in zip(weights, agree, strict=True))
    divisor[divisor.abs() < 1e-8] = 1.0
    return (base.flatten() + total / divisor).reshape(base.shape)


def test_ties_on_a_large_tensor_matches_the_reference():
    # 640 x 640 = 409,600 elements: the blocked kernels and the sampled magnitude cut, not the small path
    base, fts = family(3, (640, 640), seed=21)
    weights, densities = [0.5, 0.3, 0.2], [0.4, 0.6, 0.3]
    params = [{"weight": w, "density": d} for w, d in zip(weights, densities, strict=True)]
    out = run("ties", fts, params, base=base)
    assert torch.allclose(out, _ref_ties_vectorised(base, fts, weights, densities), atol=1e-6)


def test_large_half_precision_ties_keep_exactly_k_lowest_index_first():
    # fp16 magnitudes repeat a lot: the cut comes from a histogram of the 2-byte patterns
    n = 400_000
    values = ((torch.arange(n) * 7919 % 2000).float() / 100.0 - 10.0).half()
    base = torch.zeros(n, dtype=torch.float16)
    out = run("ties", [values], [{"weight": 1.0, "density": 0.25}], base=base, normalize=False)
    kept = out != 0
    assert int(kept.sum()) == int(0.25 * n)
    assert out[kept].abs().min() >= values[~kept].abs().max()
    cut = out[kept].abs().min()
    tied = (values.abs() == cut).nonzero().flatten()
    kept_tied = tied[kept[tied]]
    assert torch.equal(kept_tied, tied[: kept_tied.numel()])
    assert torch.equal(out[kept], values[kept])
