"""Hub-ready model cards (issue 18, item 2): hub ids only in `base_model`/`datasets` (local paths under
`mergeguard:`), `base_model_relation: merge`, tags merge + mergekit, a real title and description, the
contamination section, and `model-index` once evaluated (`mergeguard card MODEL`); each card is parsed
with huggingface_hub's own `ModelCard` / `ModelCardData`."""

from __future__ import annotations

from pathlib import Path

import pytest
from demo_workdir import demo_folder, sha256
from huggingface_hub import ModelCard, ModelCardData

from mergeguard.cli import main
from mergeguard.db.evidence import ScoreDetail
from mergeguard.refs import read_model_card
from mergeguard.reports.card import CardFacts, card_text


@pytest.fixture(scope="session")
def demo(request: pytest.FixtureRequest) -> Path:
    return demo_folder(request)


def _front(card: ModelCard) -> dict:
    return card.data.to_dict()


def test_merged_card_then_refreshed_after_eval(demo: Path, capsys) -> None:
    folder = demo / "models" / "merge-clean"
    weights = sha256(folder / "model.safetensors")
    text = (folder / "README.md").read_text(encoding="utf-8")  # as the merge wrote it (before eval)
    card = ModelCard(text)
    assert card.content == text  # byte for byte what ModelCard.save writes
    data = _front(card)
    assert "base_model" not in data and "datasets" not in data  # only local models: no hub ids
    assert data["base_model_relation"] == "merge" and {"merge", "mergekit"} <= set(data["tags"])
    local = data["mergeguard"]
    assert local["base_model"] == [str(demo / "models" / n) for n in ("base", "ft-math", "ft-writing")]
    assert str(demo / "data" / "math.jsonl") in local["datasets"]
    assert "model-index" not in data and card.data.eval_results is None
    assert text.split("---\n", 2)[2].startswith("\n# merge-clean\n\n**merge-clean** is a merge of `ft-math`")
    assert "using TIES (`ties`)" in text and "## Contamination" in text and "Verdict: **clean**" in text
    # the local paths are read back, so lineage and audits still follow them
    assert read_model_card(folder).base_model == local["base_model"]

    assert main(["card", "merge-clean", "--db", str(demo / "mergeguard.db")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {folder / 'README.md'}"
    card = ModelCard.load(folder / "README.md")
    assert card.data.model_name == "merge-clean"
    result = card.data.eval_results[0]
    assert (result.dataset_type, result.metric_type, result.task_type) == (
        "demo_quiz",
        "acc",
        "text-generation",
    )
    assert result.metric_value == 20.0 and result.dataset_args == {"num_few_shot": 0}
    assert "## Evaluation" in card.text and "| demo_quiz | acc | 20.00 | 0 |" in card.text
    assert "Verdict: **clean**" in card.text
    assert sha256(folder / "model.safetensors") == weights


def test_hub_ids_and_local_paths_are_split(tmp_path: Path) -> None:
    local = tmp_path / "my-ft"
    local.mkdir()
    facts = CardFacts(
        name="best-merge",
        method="slerp",
        inputs=["org/base@v1", str(local)],
        base_model="org/base@v1",
        config_text="merge_method: slerp\n",
        datasets=["org/alpaca:train", str(tmp_path / "sft.jsonl"), "org/gsm8k"],
        section="## Contamination\n\nVerdict: **contaminated**.\n",
        scores=[ScoreDetail("gsm8k", "gsm8k", "exact_match", 0.4567, 5)],
    )
    card = ModelCard(card_text(facts))
    data: ModelCardData = card.data
    assert data.base_model == ["org/base"] and data.datasets == ["org/alpaca", "org/gsm8k"]
    assert data.to_dict()["mergeguard"] == {
        "base_model": [str(local)],
        "datasets": [str(tmp_path / "sft.jsonl")],
    }
    assert data.base_model_relation == "merge" and data.tags == ["merge", "mergekit", "mergeguard"]
    result = data.eval_results[0]
    assert (result.dataset_name, result.dataset_split, result.metric_value) == ("gsm8k", "test", 45.67)
    assert card.text.startswith(
        "\n# best-merge\n\n**best-merge** is a merge of `my-ft` (local) onto the base"
    )
    assert "[org/base](https://huggingface.co/org/base)" in card.text and "SLERP" in card.text
    assert "Verdict: **contaminated**" in card.text


def test_card_refuses_what_is_not_a_merge(demo: Path, capsys) -> None:
    readme = demo / "models" / "ft-math" / "README.md"
    before = sha256(readme)
    assert main(["card", "ft-math", "--db", str(demo / "mergeguard.db")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: ft-math is not a merge recorded in the database; `mergeguard card` writes the cards of "
        "models made with `mergeguard merge`"
    )
    assert sha256(readme) == before
    assert main(["card", "nope", "--db", str(demo / "mergeguard.db")]) == 2
    assert "error: model 'nope' is not in the database" in capsys.readouterr().err
