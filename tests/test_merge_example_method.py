"""The README's "Adding a merge method" example, run for real: the method module's code as written there,
registered with its one registry line, merging tiny models through both the torch and the numpy path."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mergeguard.errors import ConfigError
from mergeguard.merge import MergeOptions, load_config, run_merge
from mergeguard.merge.kernels import Job, NumpyKernel, mix
from mergeguard.merge.method_rules import missing_base
from mergeguard.merge.methods import METHODS
from mergeguard.merge.methods.base import MergeInputs, MergeMethod, Param, require_base, work_dtype
from mergeguard.merge.params import Interval

# ---------------------------------------------------------------- the README's merge/methods/lerp.py


def lerp(inputs: MergeInputs) -> torch.Tensor:
    """(1 - t) * base + t * other, computed in float32 (float64 for float64 inputs)."""
    base = require_base(inputs, "lerp")
    other = inputs.others()[0][0]
    t = float(inputs.options["t"])
    dtype = work_dtype(base)
    return base.to(dtype) * (1 - t) + other.to(dtype) * t


def lerp_kernel(job: Job) -> np.ndarray | None:
    """The numpy twin: one weighted sum of [base, other] per block (`mix`)."""
    if job.base is None:
        raise missing_base("lerp")
    t = float(job.options["t"])
    return mix(job, [job.base, job.others()[0][0]], np.array([1 - t, t], dtype=job.work))


LERP = MergeMethod(
    name="lerp",
    fn=lerp,
    params=(Param("t", float, help="0: the base model, 1: the other model", valid=Interval(0, 1)),),
    requires_base=True,
    min_models=2,
    max_models=2,
    description="linear interpolation from the base model to one other model",
    kernel=NumpyKernel(lerp_kernel),
)

# ---------------------------------------------------------------- its test


@pytest.fixture(scope="module")
def pair(models: Any) -> dict[str, Path]:
    base = models.base("llama", seed=0, num_layers=2)
    return {"base": base, "ft": models.finetune(base, seed=1)}


CONFIG = """
    models:
      - model: {ft}
    base_model: {base}
    merge_method: lerp
    parameters: {{t: 0.25}}
    dtype: float32
"""


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_a_method_added_with_one_module_and_one_registry_line_merges(
    pair: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    monkeypatch.setitem(METHODS, "lerp", LERP)  # the registry line: `LERP,` in merge/methods/__init__.py
    config = load_config(textwrap.dedent(CONFIG.format(**pair)))
    out = tmp_path / "merged"
    result = run_merge(config, out, MergeOptions(backend=backend, write_model_card=False))
    assert result.method == "lerp"
    base, ft = (load_file(str(pair[k] / "model.safetensors")) for k in ("base", "ft"))
    merged: dict[str, torch.Tensor] = {}
    for shard in sorted(out.glob("*.safetensors")):
        merged.update(load_file(str(shard)))
    assert merged.keys() == base.keys()
    for name, tensor in merged.items():
        expected = 0.75 * base[name].float() + 0.25 * ft[name].float()
        assert tensor.dtype == torch.float32
        torch.testing.assert_close(tensor, expected, rtol=1e-6, atol=1e-7)


def test_the_added_method_checks_its_declared_parameters(
    pair: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The declaration alone validates the config, before any weights are read."""
    monkeypatch.setitem(METHODS, "lerp", LERP)
    with pytest.raises(ConfigError, match="t"):
        load_config(textwrap.dedent(CONFIG.format(**pair)).replace("0.25", "1.5"))
    with pytest.raises(ConfigError, match="base"):
        load_config(textwrap.dedent(CONFIG.format(**pair)).replace(f"base_model: {pair['base']}", ""))
