"""`mergeguard benchmarks list|show`, with and without --json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergeguard.benchmarks import loading
from mergeguard.cli import main


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.delenv("MERGEGUARD_BENCHMARKS_DIR", raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_json(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "benchmarks", "list", "--benchmarks-dir", str(shared_data / "hf"), "--json")
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["gsm8k"]["items"] == 1319 and rows["gsm8k"]["available"] is True
    assert rows["gsm8k"]["source"] == str(shared_data / "hf" / "gsm8k")
    assert rows["bbh"]["items"] == 6511 and rows["bbh"]["suites"] == ["v2"]
    assert rows["musr"]["available"] is False and rows["musr"]["items"] is None
    assert rows["musr"]["source"].startswith("hub:TAUR-Lab/MuSR")
    assert rows["mmlu_pro"]["random_baseline"] == 0.1 and rows["mmlu_pro"]["contained_in"] == ["mmlu"]


def test_list_table_with_a_custom_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "eval.jsonl").write_text('{"q": "Why?", "a": "Because."}\n', encoding="utf-8")
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: team_eval\nfiles: eval.jsonl\nquestion: q\nanswer: a\n", encoding="utf-8")
    code, out, _ = run(
        capsys, "benchmarks", "list", "--benchmarks-dir", str(tmp_path), "--benchmark-spec", str(spec)
    )
    assert code == 0
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 3}
    assert "team_eval" in lines and "custom" in lines["team_eval"] and "yes" in lines["team_eval"]
    assert "arc_challenge" in lines and "no" in lines["arc_challenge"]
    assert "25-shot acc_norm" in lines["arc_challenge"]


def test_show_json_and_text(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hf = str(shared_data / "hf")
    code, out, _ = run(
        capsys, "benchmarks", "show", "arc_challenge", "--limit", "2", "--json", "--benchmarks-dir", hf
    )
    assert code == 0
    payload = json.loads(out)
    assert payload["count"] == 1172 and len(payload["items"]) == 2 and len(payload["content_hash"]) == 64
    assert payload["items"][0]["item_id"] == "Mercury_7175875"
    assert payload["items"][0]["answer"] == "Planetary days will become shorter."

    code, out, _ = run(capsys, "benchmarks", "show", "winogrande", "-n", "1", "--benchmarks-dir", hf)
    assert code == 0
    assert "winogrande: 1267 items" in out and "validation#0" in out
    assert "* B. Maria" in out and "Sarah was a much better surgeon" in out
    assert "validation#1" not in out

    code, out, _ = run(capsys, "benchmarks", "show", "gsm8k", "-n", "1", "--benchmarks-dir", hf)
    assert code == 0 and "answer:" in out and "#### 18" in out


def test_show_uses_the_environment_folder(
    shared_data: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MERGEGUARD_BENCHMARKS_DIR", str(shared_data / "hf"))
    code, out, _ = run(capsys, "benchmarks", "show", "ifeval", "-n", "1", "--json")
    assert code == 0 and json.loads(out)["items"][0]["item_id"] == "1000"


def test_show_custom_benchmark(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "eval.jsonl").write_text(
        '{"q": "Pick.", "opts": ["a", "b"], "gold": "B"}\n', encoding="utf-8"
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: team_eval\nfiles: eval.jsonl\nquestion: q\nchoices: opts\nanswer: gold\n")
    code, out, _ = run(capsys, "benchmarks", "show", "team_eval", "--benchmark-spec", str(spec), "--json")
    assert code == 0 and json.loads(out)["items"][0]["answer"] == "b"


def test_show_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(capsys, "benchmarks", "show", "hellaswg")
    assert code == 2 and "unknown benchmark 'hellaswg'" in err and "did you mean hellaswag" in err

    def no_hub(path: str, name: str | None, split: str) -> None:
        raise ConnectionError("huggingface.co is not reachable")

    monkeypatch.setattr(loading, "hub_load_dataset", no_hub)
    code, _, err = run(capsys, "benchmarks", "show", "musr", "--benchmarks-dir", str(tmp_path))
    assert code == 2 and "musr is not available" in err and str(tmp_path / "musr") in err
    assert "--benchmarks-dir" in err
