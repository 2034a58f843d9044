"""Clean real corpora stay clean against every benchmark (issue 13): the whole-turn rule, whole-text units
and twin counting must not turn chance overlaps into findings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergeguard.cli import main

pytestmark = pytest.mark.slow  # one index of every benchmark, nine corpora: about 15 s

CLEAN = [
    "codealpaca/code_alpaca_2k.json",
    "hh_rlhf/harmless-base_test.jsonl.gz",
    "dolly_hhrlhf/dolly_hhrlhf_train_small.jsonl",
    "truthy_dpo/truthy_dpo_v0.1.jsonl",
    "ultrafeedback_binarized_sample/train_clean.jsonl",
    "ultrafeedback_binarized_sample/eval_clean.jsonl",
    "gsm8k_train_dpo/gsm8k_dpo.json",
    "alpaca/alpaca_5000.json",
    "gsm8k_train/train.jsonl.gz",
]
# GSM8K train rows 1314 and 5162 are number-swapped copies of test item 602: the only overlap there may be.
GSM8K_TRAIN_COPIES = {(1314, 602), (5162, 602)}


def test_clean_corpora_are_clean_against_all_benchmarks(shared_data: Path, tmp_path_factory, capsys) -> None:
    corpora = shared_data / "corpora"
    args = ["--benchmarks-dir", str(shared_data / "hf"), "--cache-dir", str(tmp_path_factory.mktemp("c"))]
    datasets = [arg for name in CLEAN for arg in ("--dataset", str(corpora / name))]
    assert main(["audit", *datasets, *args, "--no-progress", "--json"]) == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [m["verdict"] for m in data["models"]] == ["clean"] * len(CLEAN)
    counted = [f for f in data["findings"] if f["severity"] != "passage"]
    gsm8k_train = str(corpora / "gsm8k_train/train.jsonl.gz")
    assert {(f["example"], f["item"]) for f in counted if f["dataset"] == gsm8k_train} <= GSM8K_TRAIN_COPIES
    # Alpaca row 3093 asks "Who invented the light bulb?", TruthfulQA #99 word for word: a real duplicate
    # (a user turn that is a test question), question only, far below the rate that fails.
    others = {
        (Path(f["dataset"]).name, f["benchmark"], f["item"]) for f in counted if f["dataset"] != gsm8k_train
    }
    assert others <= {("alpaca_5000.json", "truthfulqa_mc", 99)}
