"""`mergeguard report` (issue 18, item 1): one offline HTML page or Markdown for a model, a merge config or
a dataset, made from a real demo database: verdict and why, per-benchmark counts, the lineage as inline
SVG, the score plot, every finding with the item beside the training row and the shared words marked."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from demo_workdir import demo_folder, sha256

from mergeguard.cli import main
from mergeguard.reports.gather import BenchmarkCount, Report
from mergeguard.reports.pages import render_html


@pytest.fixture(scope="session")
def demo(request: pytest.FixtureRequest) -> Path:
    return demo_folder(request)


def _report(demo: Path, target: str, tmp_path: Path, *extra: str, name: str = "r.html") -> str:
    out = tmp_path / name
    assert main(["report", target, "--db", str(demo / "mergeguard.db"), "--out", str(out), *extra]) == 0
    return out.read_text(encoding="utf-8")


def test_leaky_model_html_is_self_contained_and_shows_everything(demo: Path, tmp_path: Path) -> None:
    db = demo / "mergeguard.db"
    before = sha256(db)
    page = _report(demo, "ft-leaky", tmp_path)
    assert sha256(db) == before  # a report only reads
    assert "<script" not in page and "<link" not in page and "@import" not in page and "<img" not in page
    assert not re.search(r"(src|href)=\"https?:", page)  # nothing from the network
    assert re.search(r'id="verdict"[^>]*>contaminated<', page)
    assert "demo_quiz: 20 of 20 test items (100.0%)" in page
    lineage = re.search(r'<svg[^>]*class="lineage".*?</svg>', page, re.S).group(0)
    assert 'class="node contaminated" data-model="ft-leaky"' in lineage and 'data-findings="20"' in lineage
    assert 'class="node clean" data-model="base"' in lineage and "<line" in lineage
    plot = re.search(r'<svg class="scores".*?</svg>', page, re.S).group(0)
    assert "ft-leaky (model)" in plot and "base (parent)" in plot and "demo_quiz" in plot
    findings = re.findall(r'<div class="finding" id="finding-\d+">.*?</div></div>', page, re.S)
    assert len(findings) == 20
    for block in findings:  # item beside row, shared words marked on both sides, row and severity named
        assert block.count("<mark>") >= 2 and "leaky.jsonl row " in block and "verbatim" in block
    assert sorted(int(i) for i in re.findall(r"demo_quiz item (\d+)", page)) == list(range(20))


def test_markdown_carries_the_same_content(demo: Path, tmp_path: Path) -> None:
    text = _report(demo, "ft-leaky", tmp_path, "--format", "markdown", name="r.md")
    assert text.startswith("# mergeguard report: ft-leaky")
    assert "**Verdict: contaminated**" in text and "| demo_quiz | test | 20 / 20 | 100.0% | verbatim" in text
    assert "```mermaid" in text and "Findings came in at: ft-leaky (20)" in text
    assert "## Findings (20)" in text and text.count("Training row:") == 20
    assert "| ft-leaky | model |" in text and "| base | parent |" in text
    assert re.search(r"> \*\*In the realm of .+\*\*", text)  # the copied words in bold


def test_suffix_picks_markdown_and_stdout_is_the_default(demo: Path, tmp_path: Path, capsys) -> None:
    assert _report(demo, "ft-leaky", tmp_path, name="r.md").startswith("# mergeguard report")
    assert main(["report", "merge-clean", "--db", str(demo / "mergeguard.db")]) == 0
    assert capsys.readouterr().out.startswith("<!DOCTYPE html>")


def test_clean_merge_is_short_and_shows_parents_base_and_guard(demo: Path, tmp_path: Path) -> None:
    page = _report(demo, "merge-clean", tmp_path)
    leaky = _report(demo, "ft-leaky", tmp_path, name="leaky.html")
    assert re.search(r'id="verdict"[^>]*>clean<', page) and 'class="finding"' not in page
    assert len(page) < len(leaky)
    assert page.count('class="node clean"') == 4  # base, two fine-tunes, the merge
    plot = re.search(r'<svg class="scores".*?</svg>', page, re.S).group(0)
    for label in ("merge-clean (model)", "ft-math (parent)", "ft-writing (parent)", "base (base)"):
        assert label in plot
    assert "Merge config" in page and "merge_method: ties" in page
    assert "family base ~ ft-math" in page and "similarity 0." in page


def test_refused_config_and_merged_config(demo: Path, tmp_path: Path) -> None:
    refused = _report(demo, str(demo / "merge-all.yml"), tmp_path, "--format", "markdown", name="a.md")
    assert "**Verdict: contaminated**" in refused
    assert "merge-all.yml was refused by the guard (contaminated ft-leaky)" in refused
    assert "| refused | contaminated ft-leaky |" in refused  # the guard's recorded decision
    assert "- ft-leaky: contaminated" in refused and "## Findings (20)" in refused
    merged = _report(demo, str(demo / "merge-clean.yml"), tmp_path, "--format", "markdown", name="c.md")
    assert "**Verdict: clean**" in merged and "merge-clean.yml was merged into merge-clean (ok)" in merged
    assert "## Guard decisions" in merged


def test_dataset_report(demo: Path, tmp_path: Path) -> None:
    text = _report(demo, str(demo / "data" / "leaky.jsonl"), tmp_path, "--format", "markdown", name="d.md")
    assert "# mergeguard report: leaky.jsonl" in text and "Verdict of ft-leaky, which declares" in text
    assert "## Findings (20)" in text
    clean = _report(demo, str(demo / "data" / "math.jsonl"), tmp_path, "--format", "markdown", name="m.md")
    assert "**Verdict: clean**" in clean and "## Findings" not in clean


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["nope"],
            2,
            "error: model 'nope' is not in the database; evaluate, import, audit or merge it first",
        ),
        (["ft-leaky", "--format", "pdf"], 2, "error: unknown format 'pdf'; use one of html, markdown"),
        (["ft-leaky", "--suite", "v3"], 2, "error: unknown suite 'v3'; use v1 or v2"),
        (
            ["ft-leaky", "--out", "{tmp}/missing/r.html"],
            2,
            "does not exist; create it or choose another --out",
        ),
    ],
)
def test_errors_are_one_line_and_write_nothing(
    demo: Path, tmp_path: Path, capsys, args: list[str], code: int, message: str
) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "r.html")]
    assert main(["report", *args, "--db", str(demo / "mergeguard.db")]) == code
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.rglob("*.html")) and not any(tmp_path.rglob("*.tmp"))


def test_unmerged_config_and_missing_database(demo: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "new.yml"  # inputs in the database, but never audited together
    math, merged = demo / "models" / "ft-math", demo / "models" / "merge-clean"
    models = "".join(f"  - model: {m}\n    parameters: {{weight: 1.0}}\n" for m in (math, merged))
    config.write_text(f"merge_method: linear\nmodels:\n{models}")
    assert main(["report", str(config), "--db", str(demo / "mergeguard.db")]) == 2
    err = capsys.readouterr().err
    assert f"error: no audit of the inputs of {config} is in the database; run `mergeguard merge" in err
    assert main(["report", "ft-leaky", "--db", str(tmp_path / "none.db")]) == 2
    assert "error: no database at" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_hostile_names_and_texts_are_escaped() -> None:
    evil = "</pre><script>alert(1)</script><img src=https://x.example/a.png>"
    finding = {
        "model": evil, "dataset": evil, "example": 3, "benchmark": "b", "item": 0, "item_id": evil,
        "score": 1.0, "severity": "paraphrase", "inherited_from": None, "evidence": evil, "item_text": evil,
        "semantic": {"reason": evil, "cosine": 0.91},
    }  # fmt: skip
    report = Report(
        kind="model",
        subject=evil,
        ref=evil,
        verdict="contaminated",
        verdict_via=None,
        why=[evil],
        counts=[BenchmarkCount("b", "test", 10, 1, 0.1, "verbatim", "contaminated")],
        findings=[finding],
    )
    page = render_html(report)
    assert "<script" not in page and "<img" not in page and "&lt;script&gt;" in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert "cosine 0.91" in page and 'class="sev-paraphrase"' in page


def test_a_translation_shows_its_coverage_not_a_cosine() -> None:
    finding = {
        "model": "m", "dataset": "zh.jsonl", "example": 0, "benchmark": "mmlu", "item": 4, "item_id": None,
        "score": 0.61, "severity": "paraphrase", "inherited_from": None, "evidence": "大众社会理论表明",
        "item_text": "Mass-society theory suggests that:",
        "semantic": {"reason": "translated_choices", "cosine": None, "coverage": 0.6111},
    }  # fmt: skip
    counts = [BenchmarkCount("mmlu", "test", 10, 1, 0.1, "paraphrase", "contaminated")]
    report = Report("model", "m", "m", "contaminated", None, ["x"], counts, [finding])
    page = render_html(report)
    assert "translated_choices; coverage 0.61" in page and "cosine" not in page


def test_a_merge_that_inherits_contamination_marks_where_it_came_in(demo: Path, tmp_path: Path) -> None:
    db = tmp_path / "mergeguard.db"
    shutil.copy(demo / "mergeguard.db", db)
    spec = demo / "benchmarks" / "demo_quiz.yaml"
    args = ["--db", str(db), "--benchmark-spec", str(spec), "--benchmark", "demo_quiz"]
    args += ["--cache-dir", str(demo / "cache")]
    merged = tmp_path / "allowed"
    assert main(["merge", str(demo / "merge-all.yml"), str(merged), "--allow-contaminated", *args]) == 0
    page = _report(demo, str(merged), tmp_path, "--db", str(db))
    assert re.search(r'id="verdict"[^>]*>contaminated via ft-leaky<', page)
    assert "An ancestor, ft-leaky, was audited contaminated" in page
    lineage = re.search(r'<svg[^>]*class="lineage".*?</svg>', page, re.S).group(0)
    assert 'class="node suspect" data-model="allowed"' in lineage  # inherited
    assert (
        'class="node contaminated" data-model="ft-leaky" data-verdict="contaminated" data-findings="20"'
        in (lineage)
    )
    assert page.count("came in through ft-leaky") == 20
