"""Parity with mergekit: the same configs give the same fp32 tensors (max abs diff <= 1e-6), on both the
numpy-kernel path and the torch path.

mergekit is an oracle only, run in its own interpreter: set MERGEKIT_PYTHON to a python that has it
(locally /work/mkvenv/bin/python; CI sets it). All mergekit merges run in one subprocess to keep this fast.
Random methods (dare_*, della*) draw differently by design and are not compared here.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

MERGEKIT_PYTHON = os.environ.get("MERGEKIT_PYTHON")
pytestmark = pytest.mark.skipif(
    not MERGEKIT_PYTHON or not Path(MERGEKIT_PYTHON).exists(), reason="MERGEKIT_PYTHON not set"
)

CASES: dict[str, str] = {
    "linear_gradient_filters": """
        models:
          - model: {ft1}
            parameters:
              weight:
                - filter: self_attn
                  value: [0.1, 0.9]
                - filter: mlp
                  value: [0.8, 0.2, 0.5]
                - value: 0.3
          - model: {ft2}
            parameters: {{weight: 0.7}}
        merge_method: linear
        parameters: {{normalize: 1.0}}
        dtype: float32
    """,
    "linear_unnormalized": """
        models:
          - model: {base}
            parameters: {{weight: 0.2}}
          - model: {ft1}
            parameters: {{weight: [0.5, 1.0]}}
        merge_method: linear
        parameters: {{normalize: false}}
        dtype: float32
    """,
    "task_arithmetic": """
        models:
          - model: {ft1}
            parameters: {{weight: [0.2, 0.9, 0.4]}}
          - model: {ft2}
            parameters: {{weight: 0.5}}
        base_model: {base}
        merge_method: task_arithmetic
        dtype: float32
    """,
    "ties": """
        models:
          - model: {base}
          - model: {ft1}
            parameters: {{weight: 0.6, density: [0.3, 0.8]}}
          - model: {ft2}
            parameters: {{weight: 0.4, density: 0.5}}
        base_model: {base}
        merge_method: ties
        parameters: {{normalize: true, int8_mask: true}}
        dtype: float32
    """,
    "breadcrumbs": """
        models:
          - model: {ft1}
            parameters: {{weight: 0.6, density: 0.8, gamma: 0.05}}
          - model: {ft2}
            parameters: {{weight: 0.4, density: 0.7, gamma: 0.02}}
        base_model: {base}
        merge_method: breadcrumbs
        dtype: float32
    """,
    "breadcrumbs_ties": """
        models:
          - model: {ft1}
            parameters: {{weight: 0.6, density: 0.8, gamma: 0.05}}
          - model: {ft2}
            parameters: {{weight: 0.4, density: 0.7, gamma: 0.02}}
        base_model: {base}
        merge_method: breadcrumbs_ties
        dtype: float32
    """,
    "sce": """
        models:
          - model: {ft1}
          - model: {ft2}
        base_model: {base}
        merge_method: sce
        parameters: {{select_topk: 0.5}}
        dtype: float32
    """,
    "slerp_slices": """
        slices:
          - sources:
              - model: {base}
                layer_range: [0, 4]
              - model: {ft1}
                layer_range: [0, 4]
        merge_method: slerp
        base_model: {base}
        parameters:
          t:
            - filter: self_attn
              value: [0, 0.5, 0.3, 0.7, 1]
            - filter: mlp
              value: [1, 0.5, 0.7, 0.3, 0]
            - value: 0.4
        dtype: float32
    """,
    "nuslerp": """
        models:
          - model: {ft1}
            parameters: {{weight: 0.3}}
          - model: {ft2}
            parameters: {{weight: 0.7}}
        base_model: {base}
        merge_method: nuslerp
        dtype: float32
    """,
    "multislerp": """
        models:
          - model: {ft1}
            parameters: {{weight: 0.3}}
          - model: {ft2}
            parameters: {{weight: 0.7}}
          - model: {base}
            parameters: {{weight: 0.5}}
        merge_method: multislerp
        dtype: float32
    """,
    "karcher": """
        models:
          - model: {base}
          - model: {ft1}
          - model: {ft2}
        merge_method: karcher
        dtype: float32
    """,
    "model_stock": """
        models:
          - model: {ft1}
          - model: {ft2}
        base_model: {base}
        merge_method: model_stock
        dtype: float32
    """,
    "nearswap": """
        models:
          - model: {base}
          - model: {ft1}
        base_model: {base}
        merge_method: nearswap
        parameters: {{t: 0.001}}
        dtype: float32
    """,
    "passthrough_frankenmerge": """
        slices:
          - sources:
              - model: {ft1}
                layer_range: [0, 3]
          - sources:
              - model: {ft2}
                layer_range: [1, 4]
                parameters:
                  scale:
                    - filter: o_proj
                      value: 0.5
                    - value: 1.0
        merge_method: passthrough
        dtype: float32
    """,
    "slices_precedence": """
        slices:
          - sources:
              - model: {ft1}
                layer_range: [0, 2]
                parameters: {{weight: 0.9}}
              - model: {ft2}
                layer_range: [2, 4]
            parameters: {{weight: [0.1, 0.6]}}
          - sources:
              - model: {ft1}
                layer_range: [2, 4]
              - model: {ft2}
                layer_range: [0, 2]
        merge_method: linear
        parameters: {{weight: 0.25, normalize: false}}
        dtype: float32
    """,
}

DRIVER = """
import json, sys, yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
for config_path, out in json.loads(sys.argv[1]):
    with open(config_path) as f:
        config = MergeConfiguration.model_validate(yaml.safe_load(f))
    run_merge(config, out, MergeOptions(copy_tokenizer=False, random_seed=0, quiet=True))
"""


@pytest.fixture(scope="module")
def parity_outputs(models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    base = models.base("llama", seed=0)
    refs = {
        "base": base,
        "ft1": models.finetune(base, seed=1),
        "ft2": models.finetune(base, seed=2, scale=0.02),
    }
    root = tmp_path_factory.mktemp("parity")
    jobs, outputs = [], {}
    for name, template in CASES.items():
        path = root / f"{name}.yml"
        path.write_text(textwrap.dedent(template).format(**{k: str(v) for k, v in refs.items()}))
        jobs.append((str(path), str(root / f"mk-{name}")))
        outputs[name] = (path, root / f"mk-{name}")
    done = subprocess.run(
        [str(MERGEKIT_PYTHON), "-c", DRIVER, json.dumps(jobs)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return outputs


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("case", list(CASES))
def test_same_tensors_as_mergekit(case: str, backend: str, parity_outputs, tmp_path: Path) -> None:
    """`auto` runs the numpy kernels where a method has one (the default path), `torch` the torch methods."""
    from mergeguard.merge import MergeOptions, load_config, run_merge

    config_path, theirs_dir = parity_outputs[case]
    ours_dir = tmp_path / "ours"
    options = MergeOptions(random_seed=0, copy_tokenizer=False, backend=backend)
    run_merge(load_config(config_path), ours_dir, options)
    ours, theirs = _tensors(ours_dir), _tensors(theirs_dir)
    assert sorted(ours) == sorted(theirs)
    worst = max((ours[k].float() - theirs[k].float()).abs().max().item() for k in theirs)
    assert worst <= 1e-6, f"{case}: max abs diff {worst}"
    ours_cfg = json.loads((ours_dir / "config.json").read_text())
    theirs_cfg = json.loads((theirs_dir / "config.json").read_text())
    assert ours_cfg["num_hidden_layers"] == theirs_cfg["num_hidden_layers"]
