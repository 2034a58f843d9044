"""End-to-end merges of the tiny fixture models: outputs load and generate, layouts, atomicity, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergeguard.errors import ConfigError, MergeguardError
from mergeguard.merge import MergeOptions, load_config, run_merge


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def _generates(folder: Path) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("The quick brown", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4
    return tokenizer.decode(out[0])


def _linear(a: Path, b: Path, wa: float = 0.3, wb: float = 0.7, extra: str = "") -> str:
    return f"""
        models:
          - model: {a}
            parameters: {{weight: {wa}}}
          - model: {b}
            parameters: {{weight: {wb}}}
        merge_method: linear
        parameters: {{normalize: false}}
        {extra}
    """


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "phi3", "gemma", "mistral"])
def test_linear_merge_loads_and_generates(models, arch: str, tmp_path: Path) -> None:
    base = models.base(arch, seed=0)
    ft = models.finetune(base, seed=1)
    out = tmp_path / "out"
    result = run_merge(load_config(_linear(base, ft)), out, MergeOptions(random_seed=0))
    ours, a, b = _tensors(out), _tensors(base), _tensors(ft)
    assert sorted(ours) == sorted(a)
    for name in a:  # an independent formula: 0.3 a + 0.7 b
        expected = 0.3 * a[name].double() + 0.7 * b[name].double()
        assert (ours[name].double() - expected).abs().max() < 1e-5, name
    assert result.tensors == len(a) and result.method == "linear"
    _generates(out)


def test_tied_embeddings_stay_tied(models, tmp_path: Path) -> None:
    base = models.base("qwen2", seed=0)
    ft = models.finetune(base, seed=3)
    out = tmp_path / "out"
    run_merge(load_config(_linear(base, ft, extra="dtype: bfloat16")), out)
    names = _tensors(out)
    assert "lm_head.weight" not in names
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["dtype"] == "bfloat16"
    assert all(t.dtype.is_floating_point and str(t.dtype) == "torch.bfloat16" for t in names.values())
    _generates(out)


def test_sharded_inputs_and_sharded_output(models, tmp_path: Path) -> None:
    base = models.base("llama", seed=0, sharded=True)
    ft = models.finetune(base, seed=1)
    out = tmp_path / "out"
    run_merge(load_config(_linear(base, ft)), out, MergeOptions(out_shard_size="150KB"))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 2 and files == {p.name for p in out.glob("*.safetensors")}
    ours, a, b = _tensors(out), _tensors(base), _tensors(ft)
    assert sorted(ours) == sorted(a)
    assert all((ours[k] - (0.3 * a[k] + 0.7 * b[k])).abs().max() < 1e-6 for k in a)
    _generates(out)


def test_passthrough_renumbers_layers(models, tmp_path: Path) -> None:
    base = models.base("llama", seed=0)
    ft = models.finetune(base, seed=1)
    text = f"""
        slices:
          - sources: [{{model: {base}, layer_range: [0, 3]}}]
          - sources: [{{model: {ft}, layer_range: [1, 4]}}]
        merge_method: passthrough
    """
    out = tmp_path / "out"
    run_merge(load_config(text), out)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 6
    ours, a, b = _tensors(out), _tensors(base), _tensors(ft)
    name = "model.layers.{}.mlp.up_proj.weight"
    assert (ours[name.format(2)] == a[name.format(2)]).all()
    assert (ours[name.format(3)] == b[name.format(1)]).all()
    assert (ours[name.format(5)] == b[name.format(3)]).all()
    assert (ours["lm_head.weight"] == b["lm_head.weight"]).all()  # post weights come from the last slice
    assert (ours["model.embed_tokens.weight"] == a["model.embed_tokens.weight"]).all()
    _generates(out)


def test_gradient_and_precedence_in_plan(models, tmp_path: Path) -> None:
    base = models.base("llama", seed=0)
    ft = models.finetune(base, seed=1)
    text = f"""
        models:
          - model: {base}
            parameters: {{weight: [0.0, 1.0]}}
          - model: {ft}
        merge_method: linear
        parameters:
          weight: [{{filter: mlp, value: 0.25}}, {{value: 0.5}}]
          normalize: false
    """
    out = tmp_path / "out"
    run_merge(load_config(text), out)
    ours, a, b = _tensors(out), _tensors(base), _tensors(ft)
    for layer, t in [(0, 0.0), (1, 1 / 3), (3, 1.0)]:
        for part, w_ft in (("mlp.up_proj", 0.25), ("self_attn.q_proj", 0.5)):
            name = f"model.layers.{layer}.{part}.weight"
            expected = t * a[name] + w_ft * b[name]
            assert (ours[name] - expected).abs().max() < 1e-6, name
    # embeddings and lm_head sit at t = 0, as in mergekit
    assert (ours["lm_head.weight"] - 0.5 * b["lm_head.weight"]).abs().max() < 1e-6


def test_failed_merge_leaves_nothing_and_existing_out_refused(models, tmp_path: Path) -> None:
    base = models.base("llama", seed=0)
    ft = models.finetune(base, seed=1)
    out = tmp_path / "out"
    zero = _linear(base, ft, 1.0, -1.0).replace("normalize: false", "normalize: true")
    with pytest.raises(ConfigError, match="sum to zero"):
        run_merge(load_config(zero), out)
    assert list(tmp_path.iterdir()) == []
    out.mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        run_merge(load_config(_linear(base, ft)), out)
    run_merge(load_config(_linear(base, ft)), out, MergeOptions(force=True))
    assert (out / "model.safetensors").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_model_problems_are_refused_before_reading(models, tmp_path: Path) -> None:
    base = models.base("llama", seed=0)
    other = models.base("mistral", seed=0)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="different architectures"):
        run_merge(load_config(_linear(base, other)), out)
    run_merge(load_config(_linear(base, other)), out, MergeOptions(allow_crimes=True))
    bounds = f"slices:\n  - sources: [{{model: {base}, layer_range: [2, 9]}}]\nmerge_method: passthrough\n"
    with pytest.raises(ConfigError, match="out of bounds: .* has 4 layers"):
        run_merge(load_config(bounds), tmp_path / "o2")
    with pytest.raises(MergeguardError, match="not found"):
        run_merge(load_config(_linear(base, tmp_path / "missing")), tmp_path / "o3")
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_pickled_weights_need_allow_pickle(models, tmp_path: Path) -> None:
    import shutil

    import torch

    base = models.base("llama", seed=0)
    pickled = tmp_path / "pickled"
    shutil.copytree(base, pickled)
    torch.save(_tensors(base), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(MergeguardError, match="--allow-pickle"):
        run_merge(load_config(_linear(base, pickled)), tmp_path / "out")
    run_merge(load_config(_linear(base, pickled)), tmp_path / "out", MergeOptions(allow_pickle=True))
    ours, a = _tensors(tmp_path / "out"), _tensors(base)
    assert all((ours[k] - a[k]).abs().max() < 1e-6 for k in a)


def test_random_methods_depend_on_seed_only(models, tmp_path: Path) -> None:
    base = models.base("llama", seed=0)
    text = f"""
        models:
          - model: {models.finetune(base, seed=1)}
            parameters: {{weight: 0.5, density: 0.5}}
          - model: {models.finetune(base, seed=2)}
            parameters: {{weight: 0.5, density: 0.5}}
        base_model: {base}
        merge_method: dare_ties
    """
    config = load_config(text)
    runs = {}
    for key, seed in (("a", 7), ("b", 7), ("c", 8)):
        run_merge(config, tmp_path / key, MergeOptions(random_seed=seed))
        runs[key] = _tensors(tmp_path / key)
    name = "model.layers.1.mlp.up_proj.weight"
    assert (runs["a"][name] == runs["b"][name]).all()
    assert not (runs["a"][name] == runs["c"][name]).all()


def test_output_folder_card_template_and_tokenizer(models, tmp_path: Path) -> None:
    base = models.base("llama", seed=0)
    ft1 = models.finetune(base, seed=1, card={"datasets": ["org/alpaca", "org/gsm8k"]})
    ft2 = models.finetune(base, seed=2, card={"datasets": ["org/gsm8k", "org/oasst"]})
    text = f"""
        models:
          - model: {ft1}
            parameters: {{weight: 0.5}}
          - model: {ft2}
            parameters: {{weight: 0.5}}
        base_model: {base}
        merge_method: task_arithmetic
        chat_template: chatml
        tokenizer_source: union
    """
    out = tmp_path / "out"
    result = run_merge(load_config(text), out)
    from mergeguard.refs import read_model_card

    card = read_model_card(out)
    assert card.base_model == [str(base), str(ft1), str(ft2)]
    assert card.base_model_relation == "merge" and card.tags == ["merge", "mergekit", "mergeguard"]
    assert card.datasets == ["org/alpaca", "org/gsm8k", "org/oasst"]
    from huggingface_hub import ModelCard

    written = (out / "README.md").read_text(encoding="utf-8")
    assert ModelCard(written).content == written  # byte for byte what ModelCard.save would write
    assert ModelCard.load(out / "README.md").data.base_model_relation == "merge"
    assert "<|im_start|>" in json.loads((out / "tokenizer_config.json").read_text())["chat_template"]
    assert (out / "mergekit_config.yml").read_text().strip() == load_config(text).text.strip()
    assert (out / "generation_config.json").is_file()
    assert result.parents[str(ft1)]["weight"] == 0.5 and result.models[str(base)] == base
    _generates(out)


def test_cli_merge(models, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mergeguard.cli import main

    base = models.base("llama", seed=0)
    ft = models.finetune(base, seed=1)
    config = tmp_path / "merge.yml"
    config.write_text(_linear(base, ft).replace("merge_method:", "select_topk: 0.3\n        merge_method:"))
    out = tmp_path / "out"
    args = ["merge", str(config), str(out), "--no-audit", "--copy-tokenizer", "--lazy-unpickle"]
    assert main([*args, "--low-cpu-memory", "--out-shard-size", "5B", "--random-seed", "1"]) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "select_topk" in captured.err
    assert "merged 2 models with linear" in captured.out
    assert main([*args, "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--quiet", "--force", "--strict"]) == 2
    assert "(--strict)" in capsys.readouterr().err
    assert (
        main(["merge", str(config), str(tmp_path / "o2"), "--quiet", "--no-copy-tokenizer", "--no-audit"])
        == 0
    )
    assert not (tmp_path / "o2" / "tokenizer.json").exists()
    import torch

    assert main(["merge", str(config), str(tmp_path / "o4"), "--device", "tpu"]) == 2
    assert "unknown device `tpu`" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["merge", str(config), str(tmp_path / "o3"), "--cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_gpt2_passthrough_updates_n_layer(models, tmp_path: Path) -> None:
    base = models.base("gpt2", seed=0)
    text = f"""
        slices:
          - sources: [{{model: {base}, layer_range: [0, 4]}}]
          - sources: [{{model: {base}, layer_range: [2, 4]}}]
        merge_method: passthrough
    """
    run_merge(load_config(text), tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["n_layer"] == 6
    ours, a = _tensors(tmp_path / "out"), _tensors(base)
    assert (ours["transformer.h.5.attn.c_attn.weight"] == a["transformer.h.3.attn.c_attn.weight"]).all()
    _generates(tmp_path / "out")


def test_model_plus_lora_is_applied(models, tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    import torch
    from transformers import AutoModelForCausalLM

    base = models.base("llama", seed=0)
    model = AutoModelForCausalLM.from_pretrained(base)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    adapter = tmp_path / "adapter"
    lora.save_pretrained(adapter)
    expected = lora.merge_and_unload().state_dict()["model.layers.1.self_attn.q_proj.weight"]
    text = f"models:\n  - model: {base}+{adapter}\n    parameters: {{weight: 1.0}}\nmerge_method: linear\n"
    run_merge(load_config(text), tmp_path / "out")
    ours = _tensors(tmp_path / "out")["model.layers.1.self_attn.q_proj.weight"]
    assert (ours - expected).abs().max() < 1e-6
    assert not (ours == _tensors(base)["model.layers.1.self_attn.q_proj.weight"]).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "out"]


def test_large_tensors_are_read_exactly(tmp_path) -> None:
    """Tensors of 1 MiB and more are memory-mapped one at a time; the values must be the file's."""
    import torch
    from safetensors.torch import save_file

    from mergeguard.merge.io import ModelReader

    big = torch.randn(700, 700, generator=torch.Generator().manual_seed(3))  # ~1.9 MB of float32
    small = torch.arange(10, dtype=torch.float16)
    save_file({"big.weight": big, "small.weight": small}, str(tmp_path / "model.safetensors"))
    reader = ModelReader(tmp_path)
    try:
        assert torch.equal(reader.get("big.weight"), big)
        assert torch.equal(reader.get("small.weight"), small)
    finally:
        reader.close()
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes()[:100_000])
    with pytest.raises(Exception, match="(?i)truncat|short|size|corrupt|incomplete"):
        broken = ModelReader(tmp_path)
        broken.get("big.weight")
