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
from vocab_models import with_tokens

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
    "arcee_fusion": """
        models:
          - model: {base}
          - model: {ft1}
        base_model: {base}
        merge_method: arcee_fusion
        dtype: float32
    """,
    "ram": """
        models:
          - model: {ft1}
          - model: {ft2}
        base_model: {base}
        merge_method: ram
        parameters: {{epsilon: 0.008}}
        dtype: float32
    """,
    "ramplus_tl": """
        models:
          - model: {base}
          - model: {ft1}
          - model: {ft2}
        base_model: {base}
        merge_method: ramplus_tl
        parameters: {{r: 0.5, alpha: 0.3, epsilon: 0.01}}
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
for config_path, out, extra in json.loads(sys.argv[1]):
    with open(config_path) as f:
        config = MergeConfiguration.model_validate(yaml.safe_load(f))
    options = {"copy_tokenizer": False, "random_seed": 0, "quiet": True, **extra}
    run_merge(config, out, MergeOptions(**options))
"""


def _mergekit_outputs(
    root: Path, refs: dict[str, Path], cases: dict[str, tuple[str, dict]]
) -> dict[str, tuple[Path, Path]]:
    """Per case (its config template, mergekit's options beyond the defaults): the config written under
    `root` with `refs` filled in, and mergekit's output folder. All cases merge in one subprocess (fast)."""
    jobs, outputs = [], {}
    for name, (template, theirs) in cases.items():
        path = root / f"{name}.yml"
        path.write_text(textwrap.dedent(template).format(**{k: str(v) for k, v in refs.items()}))
        jobs.append((str(path), str(root / f"mk-{name}"), theirs))
        outputs[name] = (path, root / f"mk-{name}")
    done = subprocess.run(
        [str(MERGEKIT_PYTHON), "-c", DRIVER, json.dumps(jobs)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return outputs


def _finetunes(models) -> dict[str, Path]:
    """The llama base and its two fine-tunes (the second with larger deltas) that most cases merge."""
    base = models.base("llama", seed=0)
    ft1, ft2 = models.finetune(base, seed=1), models.finetune(base, seed=2, scale=0.02)
    return {"base": base, "ft1": ft1, "ft2": ft2}


@pytest.fixture(scope="module")
def parity_outputs(models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    cases = {name: (template, {}) for name, template in CASES.items()}
    return _mergekit_outputs(tmp_path_factory.mktemp("parity"), _finetunes(models), cases)


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


VOCAB_CASES: dict[str, str] = {
    "union_task_arithmetic": """
        models:
          - model: {a}
            parameters: {{weight: 0.6}}
          - model: {b}
            parameters: {{weight: 0.4}}
        base_model: {base}
        merge_method: task_arithmetic
        tokenizer_source: union
        dtype: float32
    """,
    "base_linear": """
        models:
          - model: {a}
            parameters: {{weight: 0.5}}
          - model: {b}
            parameters: {{weight: 0.5}}
        merge_method: linear
        base_model: {a}
        tokenizer_source: base
        dtype: float32
    """,
    "model_source_ties_padded_vocab": """
        models:
          - model: {a}
            parameters: {{weight: 0.5, density: 0.5}}
          - model: {b}
            parameters: {{weight: 0.5, density: 0.7}}
        base_model: {base}
        merge_method: ties
        tokenizer_source: {b}
        dtype: float32
    """,
    "tokens_force_zero_pad": """
        models:
          - model: {a}
            parameters: {{weight: 0.5}}
          - model: {b}
            parameters: {{weight: 0.5}}
        base_model: {base}
        merge_method: task_arithmetic
        tokenizer:
          source: union
          pad_to_multiple_of: 64
          tokens:
            <|im_start|>:
              source: {a}
            <|im_end|>:
              source: {b}
              force: true
            <|pad|>:
              source: {{kind: zero}}
              force: true
            newtok:
              source: {{kind: model_token, model: {a}, token: zebra}}
        dtype: float32
    """,
}
"""Different vocabularies: `a` adds three tokens, `b` two (one shared) and pads its rows to 520 (Phi's
layout: vocab_size above the tokenizer's size)."""


@pytest.fixture(scope="module")
def vocab_outputs(models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    base = models.base("llama", seed=0)
    root = tmp_path_factory.mktemp("vocab")
    refs = {
        "base": base,
        "a": with_tokens(
            models.finetune(base, seed=1), root / "a", ["<|im_start|>", "<|im_end|>", "zebra"], seed=3
        ),
        "b": with_tokens(
            models.finetune(base, seed=2), root / "b", ["<|im_end|>", "quokka"], seed=4, rows=520
        ),
    }
    cases = {name: (template, {"copy_tokenizer": True}) for name, template in VOCAB_CASES.items()}
    return _mergekit_outputs(root, refs, cases)


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("case", list(VOCAB_CASES))
def test_vocabularies_aligned_as_mergekit(case: str, backend: str, vocab_outputs, tmp_path: Path) -> None:
    """Same output vocabulary, and every token's row equal (compared by token: mergekit orders the tokens
    a union adds by a hash map's order), padding rows included; config.json's vocab_size equal."""
    import torch
    from transformers import AutoTokenizer

    from mergeguard.merge import MergeOptions, load_config, run_merge

    config_path, theirs_dir = vocab_outputs[case]
    ours_dir = tmp_path / "ours"
    run_merge(load_config(config_path), ours_dir, MergeOptions(random_seed=0, backend=backend))
    ours, theirs = _tensors(ours_dir), _tensors(theirs_dir)
    assert sorted(ours) == sorted(theirs)
    our_vocab = AutoTokenizer.from_pretrained(ours_dir).get_vocab()
    their_vocab = AutoTokenizer.from_pretrained(theirs_dir).get_vocab()
    assert sorted(our_vocab) == sorted(their_vocab)
    tokens = sorted(our_vocab)
    for name, theirs_tensor in theirs.items():
        mine = ours[name].float()
        theirs_tensor = theirs_tensor.float()
        assert mine.shape == theirs_tensor.shape, name
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            pad = slice(len(tokens), None)
            assert torch.allclose(mine[pad], theirs_tensor[pad], rtol=0, atol=1e-6), name
            mine = mine[[our_vocab[t] for t in tokens]]
            theirs_tensor = theirs_tensor[[their_vocab[t] for t in tokens]]
        assert (mine - theirs_tensor).abs().max().item() <= 1e-6, f"{case}: {name}"
    ours_cfg = json.loads((ours_dir / "config.json").read_text())
    assert ours_cfg["vocab_size"] == json.loads((theirs_dir / "config.json").read_text())["vocab_size"]


OPTION_CASES: dict[str, tuple[str, dict, dict]] = {
    # (config, mergekit's options, mergeguard's options and load_config's keywords)
    "mixed_bf16_fp32_no_dtype": (
        """
        models:
          - model: {ft1}
            parameters: {{weight: 0.3}}
          - model: {bf16}
            parameters: {{weight: 0.7}}
        merge_method: linear
        """,
        {},
        {},
    ),
    "ties_base_weight_unparsed_and_unknown_key": (
        """
        models:
          - model: {base}
            parameters: {{weight: not a number}}
          - model: {ft1}
            parameters: {{weight: 0.6, density: 0.5}}
          - model: {ft2}
            parameters: {{weight: 0.4, density: 0.7}}
        base_model: {base}
        merge_method: ties
        allow_negative_weights: true
        dtype: float32
        """,
        {},
        {"allow_unknown_keys": True},
    ),
    "nuslerp_base_weight_unparsed": (
        """
        models:
          - model: {base}
            parameters: {{weight: [oops]}}
          - model: {ft1}
            parameters: {{weight: 0.3}}
          - model: {ft2}
            parameters: {{weight: 0.7}}
        base_model: {base}
        merge_method: nuslerp
        dtype: float32
        """,
        {},
        {},
    ),
    # by default TIES rounds once (closer to the float32 result); --mergekit-rounding rounds every
    # intermediate as mergekit does and matches it bit for bit
    **{
        f"ties_{dtype}_mergekit_rounding": (
            """
        models:
          - model: {base}
          - model: {ft1}
            parameters: {{weight: 0.6, density: [0.3, 0.8]}}
          - model: {ft2}
            parameters: {{weight: 0.4, density: 0.5}}
        base_model: {base}
        merge_method: ties
        dtype: DTYPE
        """.replace("DTYPE", dtype),
            {},
            {"mergekit_rounding": True},
        )
        for dtype in ("bfloat16", "float16")
    },
    "unsafe_truncate_embeddings": (
        """
        models:
          - model: {ft1}
            parameters: {{weight: 0.5}}
          - model: {padded}
            parameters: {{weight: 0.5}}
        base_model: {ft1}
        merge_method: linear
        dtype: float32
        """,
        {"unsafe_truncate_embeddings": True},
        {"unsafe_truncate_embeddings": True},
    ),
}


@pytest.fixture(scope="module")
def option_outputs(models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("options")
    refs = _finetunes(models)
    refs["bf16"] = models.finetune(models.base("llama", seed=0, dtype="bfloat16"), seed=5)
    refs["padded"] = with_tokens(
        models.finetune(refs["base"], seed=6), root / "padded", ["quokka"], seed=7, rows=520
    )
    cases = {name: (template, theirs) for name, (template, theirs, _) in OPTION_CASES.items()}
    return _mergekit_outputs(root, refs, cases)


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_options_and_dtype_rules_as_mergekit(case: str, backend: str, option_outputs, tmp_path: Path) -> None:
    """mergekit's dtype promotion (bf16 + fp32 -> fp32), a base's unused weight never read, unknown keys
    let through by --allow-unknown-keys, --mergekit-rounding (bit for bit in half precision) and
    --unsafe-truncate-embeddings: same tensors, same dtypes."""
    from mergeguard.merge import MergeOptions, load_config, run_merge

    config_path, theirs_dir = option_outputs[case]
    ours_options = dict(OPTION_CASES[case][2])
    allow = ours_options.pop("allow_unknown_keys", False)
    config = load_config(config_path, allow_unknown_keys=allow)
    options = MergeOptions(random_seed=0, copy_tokenizer=False, backend=backend, **ours_options)
    result = run_merge(config, tmp_path / "ours", options)
    ours, theirs = _tensors(tmp_path / "ours"), _tensors(theirs_dir)
    assert sorted(ours) == sorted(theirs)
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype, name
        assert ours[name].shape == tensor.shape, name
        worst = (ours[name].float() - tensor.float()).abs().max().item()
        assert worst <= (0 if "rounding" in case else 1e-6), f"{case}: {name}"
    if allow:
        assert result.unknown_keys == ["allow_negative_weights (the config)"]


CONVERSATIONS = [
    [{"role": "user", "content": "Hi there "}],
    [
        {"role": "system", "content": " Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
    ],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
]


@pytest.mark.parametrize("name", ["chatml", "llama3", "mistral"])
def test_chat_template_names_render_as_mergekits(name: str) -> None:
    """The built-in names render what mergekit's templates of the same name render (transformers' way);
    alpaca and exaone differ on purpose (mergekit's leak whitespace; see merge/output.py)."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    from mergeguard.merge.output import CHAT_TEMPLATES

    where = subprocess.run(
        [str(MERGEKIT_PYTHON), "-c", "import mergekit, os; print(os.path.dirname(mergekit.__file__))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    theirs = (Path(where) / "_data" / "chat_templates" / f"{name}.jinja").read_text()
    for messages in CONVERSATIONS:
        for prompt in (False, True):
            kwargs = {
                "messages": messages,
                "add_generation_prompt": prompt,
                "bos_token": "<s>",
                "eos_token": "</s>",
            }
            expected = _compile_jinja_template(theirs).render(**kwargs)
            assert _compile_jinja_template(CHAT_TEMPLATES[name]).render(**kwargs) == expected
