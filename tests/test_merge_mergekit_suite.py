"""What mergekit's own test suite exercises, without mergekit: the CLI flags and errors of issue 21.

Vocabularies that differ (with and without a tokenizer setting, `--unsafe-truncate-embeddings`), unknown
keys (`--allow-unknown-keys`, recorded in the card), built-in chat template names, the three added methods'
declared parameters, `--mergekit-rounding`, and the finite-output check. The tensors themselves are
compared with mergekit in test_merge_parity.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from mergekit_configs import weighted_config
from vocab_models import with_tokens

from mergeguard.cli import main


def _digests(*folders: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _merge(capsys: pytest.CaptureFixture[str], config: Path, out: Path, *flags: str) -> tuple[int, str]:
    code = main(["merge", str(config), str(out), "--no-audit", "--quiet", *flags])
    return code, capsys.readouterr().err


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "merge.yml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def padded(models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fine-tune with one added token and its rows padded to 520 (config.json's vocab_size)."""
    base = models.base("llama", seed=0)
    root = tmp_path_factory.mktemp("suite")
    return with_tokens(models.finetune(base, seed=6), root / "padded", ["quokka"], seed=7, rows=520)


def _linear(a: Path, b: Path, extra: str = "") -> str:
    return weighted_config([a, b], base=a, extra=extra)


def test_different_vocabularies_need_a_tokenizer_setting(models, padded, tmp_path, capsys) -> None:
    base = models.base("llama", seed=0)
    config = _write(tmp_path, _linear(base, padded))
    before = _digests(base, padded)
    code, err = _merge(capsys, config, tmp_path / "out")
    line = err.strip().splitlines()[-1]
    assert code == 2
    assert line.startswith("error: tensor model.embed_tokens.weight has different shapes")
    assert line.endswith("set `tokenizer_source: base` (or `union`) to align them")
    assert not (tmp_path / "out").exists() and _digests(base, padded) == before


def test_tokenizer_source_aligns_and_writes_the_tokenizer(models, padded, tmp_path, capsys) -> None:
    from transformers import AutoTokenizer

    base = models.base("llama", seed=0)
    config = _write(tmp_path, _linear(base, padded, "tokenizer_source: union\nchat_template: llama3\n"))
    code, _ = _merge(capsys, config, tmp_path / "out")
    assert code == 0
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert "quokka" in tokenizer.get_vocab() and len(tokenizer) == 513
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 513
    assert "<|start_header_id|>" in tokenizer.chat_template


def test_a_tokenizer_setting_over_one_vocabulary_copies_the_files(models, tmp_path, capsys) -> None:
    """Same vocabulary everywhere, no padding rows: nothing to align, the tokenizer files are copied."""
    base = models.base("llama", seed=0)
    config = _write(tmp_path, _linear(base, models.finetune(base, seed=1), "tokenizer_source: union\n"))
    assert _merge(capsys, config, tmp_path / "out", "--no-copy-tokenizer")[0] == 0
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()


def test_unsafe_truncate_embeddings(models, padded, tmp_path, capsys) -> None:
    base = models.base("llama", seed=0)
    config = _write(tmp_path, _linear(base, padded))
    code, err = _merge(capsys, config, tmp_path / "out", "--unsafe-truncate-embeddings")
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 512


@pytest.mark.parametrize(
    ("tokenizer", "message"),
    [
        (
            "tokenizer_source: other/model",
            "error: tokenizer source `other/model` is neither `base`, `union` nor a model of the config",
        ),
        (
            "tokenizer: {tokens: {'<x>': {source: nowhere}}}",
            "error: the source of token '<x>' is nowhere, which is not a model of the config",
        ),
        (
            "tokenizer: {tokens: {'<x>': {source: {kind: model_token, model: a}}}}",
            "error: the `model_token` source of `tokenizer.tokens` entry `<x>` needs a `model` and one of",
        ),
        (
            "tokenizer: {pad_to_multiple_of: 0}",
            "error: `tokenizer.pad_to_multiple_of` = 0 is not a whole number from 1 to 1048576",
        ),
    ],
)
def test_tokenizer_settings_checked_before_any_weights(models, tmp_path, capsys, tokenizer, message) -> None:
    base = models.base("llama", seed=0)
    config = _write(tmp_path, _linear(base, models.finetune(base, seed=1), tokenizer + "\n"))
    code, err = _merge(capsys, config, tmp_path / "out")
    assert code == 2 and err.strip().splitlines()[-1].startswith(message)
    assert not (tmp_path / "out").exists()


def test_unknown_keys_refused_unless_allowed_and_then_recorded(models, tmp_path, capsys) -> None:
    base = models.base("llama", seed=0)
    config = _write(tmp_path, _linear(base, models.finetune(base, seed=1), "allow_negative_weights: true\n"))
    code, err = _merge(capsys, config, tmp_path / "out")
    assert code == 2
    assert (
        err.strip().splitlines()[-1].startswith("error: unknown key `allow_negative_weights` in the config;")
    )
    assert not (tmp_path / "out").exists()
    code, err = _merge(capsys, config, tmp_path / "out", "--allow-unknown-keys")
    assert code == 0
    assert (
        "warning: unknown key `allow_negative_weights` in the config is ignored (--allow-unknown-keys)" in err
    )
    card = (tmp_path / "out" / "README.md").read_text()
    assert "--allow-unknown-keys" in card and "`allow_negative_weights (the config)`" in card
    code, err = _merge(capsys, config, tmp_path / "o2", "--allow-unknown-keys", "--strict")
    assert code == 2 and "(--strict)" in err


def test_a_base_models_unused_weight_is_never_read() -> None:
    """mergekit's test: the base's `weight` under ties/nuslerp is not even parsed; others' still are."""
    from mergeguard.errors import ConfigError
    from mergeguard.merge import load_config

    text = (
        "models:\n  - model: b\n    parameters: {weight: bogus}\n  - model: a\n"
        "    parameters: {weight: WEIGHT, density: 0.5}\nbase_model: b\nmerge_method: ties\n"
    )
    config = load_config(text.replace("WEIGHT", "0.5"))
    assert config.models[0].parameters == {} and config.warnings == []
    with pytest.raises(ConfigError, match="parameter `weight` = 'bogus' is not a float"):
        load_config(text.replace("base_model: b", "base_model: a").replace("WEIGHT", "0.5"))


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("ram", "{epsilon: -1}", "parameter `epsilon` = -1 is out of range; use a value in [0, inf)"),
        ("ramplus_tl", "{alpha: -0.5}", "parameter `alpha` = -0.5 is out of range; use a value in [0, inf)"),
        ("arcee_fusion", "{}", "merge_method `arcee_fusion` takes at most 2 models in models, got 3"),
    ],
)
def test_new_methods_validate_their_declared_parameters(method: str, params: str, message: str) -> None:
    from mergeguard.errors import ConfigError
    from mergeguard.merge import load_config

    text = f"models:\n  - model: a\n  - model: b\n  - model: c\nbase_model: a\nmerge_method: {method}\n"
    with pytest.raises(ConfigError) as caught:
        load_config(text + f"parameters: {params}\n")
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_a_float16_overflow_fails_the_merge_and_writes_nothing(models, tmp_path, backend) -> None:
    from mergeguard.errors import MergeguardError
    from mergeguard.merge import MergeOptions, load_config, run_merge

    base = models.base("llama", seed=0, dtype="float16")
    ft = models.finetune(base, seed=1)
    text = (
        _linear(base, ft).replace("{weight: 0.5}", "{weight: 1000000}") + "parameters: {normalize: false}\n"
    )
    before = _digests(base, ft)
    with pytest.raises(MergeguardError) as caught:
        run_merge(load_config(text), tmp_path / "out", MergeOptions(backend=backend))
    assert str(caught.value).startswith("the merged tensor model.")
    assert "although its inputs are finite; merge in float32" in str(caught.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())
    assert _digests(base, ft) == before


def test_the_finite_check_cli_line(models, tmp_path, capsys) -> None:
    base = models.base("llama", seed=0, dtype="float16")
    text = _linear(base, models.finetune(base, seed=1)).replace("{weight: 0.5}", "{weight: 1000000}")
    config = _write(tmp_path, text + "parameters: {normalize: false}\n")
    code, err = _merge(capsys, config, tmp_path / "out")
    line = err.strip().splitlines()[-1]
    assert code == 2 and line.startswith("error: the merged tensor model.") and "float32" in line


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_non_finite_inputs_pass_through(models, tmp_path, backend) -> None:
    """An input that already holds inf is the input's doing: the merge proceeds (as mergekit's does)."""
    import torch
    from safetensors.torch import load_file, save_file

    from mergeguard.merge import MergeOptions, load_config, run_merge

    base = models.base("llama", seed=0)
    odd = tmp_path / "odd"
    import shutil

    shutil.copytree(models.finetune(base, seed=1), odd)
    tensors = load_file(odd / "model.safetensors")
    tensors["model.norm.weight"][3] = float("inf")
    save_file(tensors, odd / "model.safetensors", metadata={"format": "pt"})
    run_merge(load_config(_linear(base, odd)), tmp_path / "out", MergeOptions(backend=backend))
    merged = load_file(tmp_path / "out" / "model.safetensors")["model.norm.weight"]
    assert torch.isinf(merged[3]) and torch.isfinite(merged[:3]).all()


def test_mergekit_rounding_runs_the_torch_methods(models, tmp_path, capsys) -> None:
    from safetensors.torch import load_file

    base = models.base("llama", seed=0)
    ft1, ft2 = models.finetune(base, seed=1), models.finetune(base, seed=2)
    text = (
        f"models:\n  - model: {ft1}\n    parameters: {{weight: 0.7, density: 0.5}}\n"
        f"  - model: {ft2}\n    parameters: {{weight: 0.5, density: 0.5}}\n"
        f"base_model: {base}\nmerge_method: ties\ndtype: bfloat16\n"
    )
    config = _write(tmp_path, text)
    assert _merge(capsys, config, tmp_path / "once")[0] == 0
    assert _merge(capsys, config, tmp_path / "mk", "--mergekit-rounding")[0] == 0
    once, mk = load_file(tmp_path / "once/model.safetensors"), load_file(tmp_path / "mk/model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    assert mk[name].dtype == once[name].dtype and not (mk[name] == once[name]).all()


def test_llava_keeps_every_tensor_under_the_checkpoints_names(tmp_path) -> None:
    """mergekit 0.1.5's LLaVA test models: its output drops the 21 language-model tensors; mergeguard
    writes all 64 under the checkpoint's own names, and transformers loads them with none missing."""
    import torch
    import transformers as tf
    from safetensors import safe_open

    from mergeguard.merge import MergeOptions, load_config, run_merge
    from mergeguard.tiny import finetune_variant

    vision = tf.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32
    )
    text = tf.LlamaConfig(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    model = tf.LlavaForConditionalGeneration(
        tf.LlavaConfig(vision_config=vision, text_config=text, image_token_index=511)
    )
    model.save_pretrained(tmp_path / "a")
    finetune_variant(tmp_path / "a", tmp_path / "b", seed=1)
    config = _linear(tmp_path / "a", tmp_path / "b")
    run_merge(load_config(config), tmp_path / "out", MergeOptions(copy_tokenizer=False))

    def names(folder: Path) -> list[str]:
        with safe_open(folder / "model.safetensors", "pt") as handle:
            return sorted(handle.keys())

    assert names(tmp_path / "out") == names(tmp_path / "a") and len(names(tmp_path / "a")) == 64
    _, info = tf.LlavaForConditionalGeneration.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
