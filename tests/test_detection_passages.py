"""Passages are not questions (issue 13): the registry says which part of an item is shared source text;
a training example that holds only that part is a `passage` note, listed, never a contaminated verdict."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from real_benchmarks import items_of, load_real

from mergeguard.auditor import build_index, scan_examples
from mergeguard.benchmarks.registry import REGISTRY
from mergeguard.cli import main

DOLLY = "corpora/dolly_hhrlhf/dolly_hhrlhf_train_small.jsonl"


@pytest.fixture(scope="module")
def ifeval(shared_data: Path):
    return load_real(["ifeval", "mmlu"], shared_data)


def test_registry_names_the_source_text_of_ifeval_and_mmlu(ifeval) -> None:
    assert REGISTRY["ifeval"].source_text == "paragraphs" and REGISTRY["mmlu"].source_text
    assert not REGISTRY["hellaswag"].source_text and not REGISTRY["arc_challenge"].source_text
    item = items_of(ifeval, "ifeval")[184]
    assert item.source.startswith("World War II or the Second World War")
    assert "in all capital letters" in item.question and "capital letters" not in item.source
    mmlu = items_of(ifeval, "mmlu")
    with_passage = [it for it in mmlu if it.source]
    assert with_passage and all(it.question.startswith(it.source) for it in with_passage[:50])


def test_dolly_quoting_the_ifeval_passage_is_clean_with_a_passage_note(
    shared_data: Path, tmp_path_factory, capsys
) -> None:
    path = shared_data / DOLLY
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    args = ["--benchmark", "ifeval", "--benchmarks-dir", str(shared_data / "hf")]
    args += ["--cache-dir", str(tmp_path_factory.mktemp("passage-cache")), "--no-progress"]
    assert main(["audit", "--dataset", str(path), *args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert data["models"][0]["verdict"] == "clean" and not data["contaminated"]
    (finding,) = data["findings"]
    assert (finding["item"], finding["severity"]) == (184, "passage")
    assert data["models"][0]["rates"][0]["contaminated"] == 0
    (view,) = data["dataset_view"]
    assert view["found"] == 0 and view["passages"] == 1 and "1 passage note" in view["summary"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_the_ifeval_prompt_itself_is_still_a_finding(ifeval, shared_data: Path) -> None:
    index = build_index([b for b in ifeval if b.spec.name == "ifeval"])
    item = index.items[184]
    dolly = [json.loads(line) for line in (shared_data / DOLLY).read_text().splitlines()]
    quoting = "\n".join(str(v) for v in dolly[955].values())
    found = {m.example: m.severity for m in scan_examples([item.question, quoting], index).matches}
    assert found[0] == "verbatim" and found[1] == "passage"
