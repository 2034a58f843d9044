"""The package, the CLI skeleton and the fixture factory."""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
from safetensors import safe_open

from mergeguard import __version__, tiny
from mergeguard.benchmarks.loading import load_benchmarks
from mergeguard.cli import main
from mergeguard.demo.quiet import quiet_libraries
from mergeguard.errors import ModelNotFoundError
from mergeguard.refs import parse_model_ref, read_model_card, resolve_model

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("mergeguard", "auditor", "merge", "benchmarks", "db")
LOCAL_BENCHMARKS = {  # the benchmarks in shared_data/hf and their public test-set sizes
    "arc_challenge": 1172,
    "arc_easy": 2376,
    "bbh": 6511,
    "gpqa_diamond": 198,
    "gsm8k": 1319,
    "hellaswag": 10042,
    "ifeval": 541,
    "math": 5000,
    "math_hard": 1324,
    "mmlu": 14042,
    "truthfulqa_mc": 817,
    "winogrande": 1267,
}
ANSWERLESS = {"ifeval"}  # instructions to follow: no gold answer
CORPORA = {  # corpus files the tests read: their row counts and text fields
    "alpaca/alpaca_5000.json": (5000, ("instruction", "input", "output")),
    "codealpaca/code_alpaca_2k.json": (2017, ("instruction", "input", "output")),
    "hh_rlhf/harmless-base_test.jsonl.gz": (2312, ("chosen", "rejected")),
    "dolly_hhrlhf/dolly_hhrlhf_train_small.jsonl": (1000, ("prompt", "response")),
    "truthy_dpo/truthy_dpo_v0.1.jsonl": (1016, ("prompt", "chosen", "rejected")),
    "ultrafeedback_binarized_sample/train_clean.jsonl": (1000, ("prompt", "chosen", "rejected")),
    "ultrafeedback_binarized_sample/eval_clean.jsonl": (200, ("prompt", "chosen", "rejected")),
    "gsm8k_train_dpo/gsm8k_dpo.json": (716, ()),  # conversations: lists of turns
    "gsm8k_train/train.jsonl.gz": (7473, ("question", "answer")),
    "ultrafeedback_truthful_qa_prompts/truthful_qa.jsonl": (817, ("instruction",)),
    "truthfulqa_judge_finetune/finetune_truth.jsonl.gz": (22114, ("prompt", "completion")),
}
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


def _wheel(tmp_path: Path) -> zipfile.ZipFile:
    """The wheel `pip install .` would install, built offline from a copy of the sources."""
    source = tmp_path / "source"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name if source.is_dir() else _mkdir(source) / name)
    for folder in PACKAGE_FOLDERS:
        shutil.copytree(ROOT / folder, source / folder, ignore=skip)
    out = tmp_path / "dist"
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*command, "-q", "-w", str(out), str(source)], check=True, capture_output=True)
    return zipfile.ZipFile(next(out.glob("mergeguard-*.whl")))


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def test_the_wheel_installs_only_the_mergeguard_namespace(tmp_path: Path) -> None:
    """`db/`, `merge/`... install as `mergeguard.db`, `mergeguard.merge`: no generic top-level name such as
    `db` lands in site-packages, and every module of every folder is in the wheel under its mapped name."""
    wheel = _wheel(tmp_path)
    names = set(wheel.namelist())
    info = f"mergeguard-{__version__}.dist-info"
    assert {name.split("/", 1)[0] for name in names} == {"mergeguard", info}
    assert wheel.read(f"{info}/top_level.txt").decode().split() == ["mergeguard"]
    for folder in PACKAGE_FOLDERS:
        prefix = "mergeguard/" if folder != "mergeguard" else ""
        for path in (ROOT / folder).rglob("*.py"):
            assert f"{prefix}{path.relative_to(ROOT).as_posix()}" in names
    assert "mergeguard/reports/datasette-metadata.yaml" in names


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
    names: set[str] = set()
    for path in tiny.weight_files(models.base("qwen2")):
        with safe_open(path, framework="pt") as handle:
            names.update(handle.keys())
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names


def test_sharded_finetune_keeps_layout_and_differs(models, write_card) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

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


def _rows(path: Path) -> list[dict[str, object]]:
    """A corpus file's rows: a JSON array, or JSON Lines (gzipped or not)."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if path.name.endswith(".json"):
        return json.loads(raw)
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]


def test_shared_data_holds_what_the_tests_read(shared_data: Path) -> None:
    """Every local benchmark the tests load is complete (its public test-set size) and parses into items
    with a question and a gold answer (among the choices, when there are any); every corpus the tests
    read is rows of text fields; MMLU's dev split names each row's subject (the group subtasks need it)."""
    loaded, _ = load_benchmarks(list(LOCAL_BENCHMARKS), shared_data / "hf", use_hub=False)
    assert {b.spec.name: len(b.items) for b in loaded} == LOCAL_BENCHMARKS
    for benchmark in loaded:
        title = benchmark.spec.name
        assert all(item.question.strip() for item in benchmark.items), title
        assert all(item.answer.strip() for item in benchmark.items) != (title in ANSWERLESS), title
        choices = [item for item in benchmark.items if item.choices]
        assert all(item.answer in item.choices for item in choices), title
    for name, (count, fields) in CORPORA.items():
        rows = _rows(shared_data / "corpora" / name)
        assert len(rows) == count and all(isinstance(row, dict) for row in rows), name
        assert all(isinstance(row.get(field), str) for row in rows for field in fields), name
    dev = _rows(shared_data / "hf" / "mmlu" / "dev.jsonl")
    assert len(dev) == 285 and {str(row["subject"]) for row in dev} >= {"anatomy", "virology"}


def test_the_demo_quiets_libraries_only_while_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside `quiet_libraries` log records below ERROR and warnings are dropped and progress bars are
    off; afterwards the process's logging level, warning filters and environment are the caller's again
    (a variable the user had set keeps the user's value throughout)."""
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")
    logger = logging.getLogger("demo_probe")  # any library's logger
    before = logging.root.manager.disable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with quiet_libraries():
            warnings.warn("dropped", UserWarning, stacklevel=1)
            assert not logger.isEnabledFor(logging.WARNING) and logger.isEnabledFor(logging.ERROR)
            assert os.environ["TQDM_DISABLE"] == "1" and os.environ["TRANSFORMERS_VERBOSITY"] == "info"
        with pytest.raises(UserWarning):
            warnings.warn("raised again", UserWarning, stacklevel=1)
    assert logging.root.manager.disable == before and logger.isEnabledFor(logging.WARNING)
    assert "TQDM_DISABLE" not in os.environ and os.environ["TRANSFORMERS_VERBOSITY"] == "info"
