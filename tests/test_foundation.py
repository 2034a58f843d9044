"""The package, the CLI skeleton and the fixture factory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mergeguard import __version__
from mergeguard.cli import main
from mergeguard.errors import ModelNotFoundError
from mergeguard.refs import parse_model_ref, read_model_card, resolve_model

SUBCOMMANDS = ["audit", "merge", "eval", "import", "leaderboard", "lineage", "history", "benchmarks", "demo"]


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"mergeguard {__version__}"


def test_help_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys; from mergeguard.cli import main; main(['--help']);"
        "print(sorted(m for m in ('torch','datasets','lm_eval','transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_namespace_has_no_generic_top_level_names() -> None:
    import mergeguard.auditor
    import mergeguard.benchmarks
    import mergeguard.db
    import mergeguard.merge

    for module in (mergeguard.auditor, mergeguard.benchmarks, mergeguard.db, mergeguard.merge):
        assert module.__name__.startswith("mergeguard.")


def test_model_refs() -> None:
    assert parse_model_ref("org/name@v2").revision == "v2"
    assert parse_model_ref("org/name+org/adapter").lora == "org/adapter"
    assert parse_model_ref("./local/folder").name == "./local/folder"
    with pytest.raises(ModelNotFoundError, match="not found"):
        resolve_model("./definitely/not/here")
    with pytest.raises(ModelNotFoundError, match="neither a local folder nor a hub id"):
        resolve_model("not a valid id")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma", "mistral", "phi3", "gpt2"])
def test_tiny_models_load_and_generate(models, arch: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = models.base(arch)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] and config["model_type"]
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("The quick brown fox", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4


def test_tied_embeddings_have_no_lm_head(models) -> None:
    from safetensors import safe_open

    from mergeguard import tiny

    names: set[str] = set()
    for path in tiny.weight_files(models.base("qwen2")):
        with safe_open(path, framework="pt") as handle:
            names.update(handle.keys())
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names


def test_sharded_finetune_keeps_layout_and_differs(models, write_card) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from mergeguard import tiny

    base = models.base("llama", sharded=True)
    assert (base / "model.safetensors.index.json").is_file()
    ft = models.finetune(base, seed=1, card={"datasets": ["data/train.jsonl"], "base_model": str(base)})
    assert [p.name for p in tiny.weight_files(ft)] == [p.name for p in tiny.weight_files(base)]
    first = tiny.weight_files(base)[0].name
    a, b = load_file(base / first), load_file(ft / first)
    for name in a:
        delta = (a[name] - b[name]).abs().max().item()
        assert 0 < delta < 0.1
    AutoModelForCausalLM.from_pretrained(ft)
    card = read_model_card(ft)
    assert card.datasets == ["data/train.jsonl"] and card.base_model == [str(base)]
    assert torch.equal(load_file(ft / first)[next(iter(a))], b[next(iter(a))])
    write_card(ft, datasets=["x"], base_model=["a", "b"])
    assert read_model_card(ft).base_model == ["a", "b"]


def test_shared_data_fixture(shared_data: Path) -> None:
    assert (shared_data / "hf" / "gsm8k" / "test.jsonl").is_file()
