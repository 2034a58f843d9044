"""The auditor fails closed (issue 20, items 1, 2 and the dataset parts of 8 and 10): a declared dataset that
cannot be read completely makes the verdict `incomplete` or `unreadable`, never `clean`, and the guard
refuses the merge, unless `--skip-bad-rows` (recorded, counted) was asked for."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from quiz_setup import carded_base, leaky_jsonl, merge_config, quiz_args, quiz_benchmark

from mergeguard.auditor.datasets import ReadLog, dataset_texts
from mergeguard.cli import main
from mergeguard.demo.data import write_jsonl, writing_instructions
from mergeguard.errors import DatasetError

BROKEN_LINE = 5  # the rows before it are clean writing instructions; the leaked quiz items come after


@pytest.fixture(scope="module")
def quiz(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo's quiz benchmark (a custom spec), leaky and clean data, and a cache for its index."""
    root = tmp_path_factory.mktemp("failclosed")
    items, spec = quiz_benchmark(root / "bench", 20)
    leaky = leaky_jsonl(root / "leaky.jsonl", items[:8], 12)
    clean = write_jsonl(root / "clean.jsonl", writing_instructions(30, seed=2))
    return {"root": root, "spec": spec, "leaky": leaky, "clean": clean, "cache": root / "cache"}


def _bench(quiz: dict[str, Path]) -> list[str]:
    return quiz_args(quiz["spec"], quiz["cache"])


def _audit(quiz: dict[str, Path], *args: str) -> int:
    return main(["audit", *args, *_bench(quiz), "--no-progress"])


def _broken_copy(source: Path, target: Path, line: int = BROKEN_LINE) -> Path:
    """`source` with a trailing comma after the JSON object on `line` (1-based)."""
    lines = source.read_text(encoding="utf-8").splitlines()
    lines[line - 1] += ","
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def _sha256(path: Path) -> str:
    if path.is_dir():
        return hashlib.sha256(
            b"".join(p.name.encode() + p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())
        ).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "; " in lines[0], err
    return lines[0]


# ---------------------------------------------------------------- each bad input, one line and exit 2


def _trailing_comma(folder: Path, quiz: dict[str, Path]) -> Path:
    return _broken_copy(quiz["clean"], folder / "sft.jsonl")


def _truncated_gzip(folder: Path, quiz: dict[str, Path]) -> Path:
    data = gzip.compress(quiz["clean"].read_bytes())
    path = folder / "sft.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])  # a download cut short
    return path


def _unknown_extension(folder: Path, quiz: dict[str, Path]) -> Path:
    path = folder / "sft.jsonx"
    path.write_bytes(quiz["clean"].read_bytes())
    return path


def _empty_folder(folder: Path, quiz: dict[str, Path]) -> Path:
    path = folder / "data"
    path.mkdir()
    return path


def _file(name: str, data: bytes) -> Callable[[Path, dict[str, Path]], Path]:
    """A bad input that is these few bytes, written as `name`."""

    def make(folder: Path, quiz: dict[str, Path]) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    return make


_invalid_utf8 = _file("sft.txt", b"a clean first line\nsecond line \xff\xfe broken\nthird line\n")


def _long_line(folder: Path, quiz: dict[str, Path]) -> Path:
    path = folder / "sft.jsonl"
    path.write_text(
        json.dumps({"text": "word " * (17 << 18)}) + "\n"
    )  # one 21 MB line, over the 16 MiB bound
    return path


BAD_INPUTS = {
    "trailing_comma": (_trailing_comma, f"line {BROKEN_LINE} is not JSON"),
    "truncated_gzip": (_truncated_gzip, "is truncated or corrupt after line"),
    "unknown_extension": (_unknown_extension, "has an unknown type"),
    "empty_folder": (_empty_folder, "holds no data files"),
    "garbage_parquet": (
        _file("sft.parquet", b"PAR1 this is not parquet at all"),
        "is not a readable parquet file",
    ),
    "invalid_utf8": (_invalid_utf8, "sft.txt line 2 is not UTF-8"),
    "empty_file": (_file("sft.jsonl", b""), "holds no text (0 rows"),
    "numbers": (_file("sft.json", b"[1,2,3]"), "holds no text (3 rows"),
    "long_line": (_long_line, "line 1 is longer than 16777216 bytes"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_a_dataset_not_read_completely_is_never_clean(case, quiz, tmp_path, capsys) -> None:
    make, expected = BAD_INPUTS[case]
    data = make(tmp_path, quiz)
    before = _sha256(data)
    assert _audit(quiz, "--dataset", str(data), "--json") == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert expected in line and str(data.name) in line
    report = json.loads(captured.out)
    verdict = report["models"][0]
    assert verdict["verdict"] in ("incomplete", "unreadable") and not report["contaminated"]
    assert verdict["datasets"][0]["status"] == verdict["verdict"]
    assert _sha256(data) == before


def test_invalid_utf8_names_file_and_line_and_skip_reads_the_rest(tmp_path) -> None:
    data = _invalid_utf8(tmp_path, {})
    with pytest.raises(DatasetError, match=r"sft.txt line 2 is not UTF-8 \(byte 13\)"):
        list(dataset_texts(str(data)))
    log = ReadLog(str(data), skip_bad_rows=True)
    assert list(dataset_texts(str(data), log=log)) == ["a clean first line", "third line"]
    assert log.skipped == 1 and "line 2" in log.reasons[0]


# ---------------------------------------------------------------- models and the guard


@pytest.fixture(scope="module")
def family(models, quiz) -> dict[str, Path]:
    """The demo's story: a base pre-trained on plain text (readable), a clean fine-tune, and copies of the
    leaky and the clean fine-tunes whose declared data has one broken JSON line."""
    root = quiz["root"]
    base = carded_base(models, root / "pretrain.txt", seed=21)
    broken_leaky = _broken_copy(quiz["leaky"], root / "broken" / "leaky.jsonl")
    broken_clean = _broken_copy(quiz["clean"], root / "broken" / "clean.jsonl")

    def ft(seed: int, data: Path) -> Path:
        return models.finetune(base, seed=seed, card={"base_model": str(base), "datasets": [str(data)]})

    return {
        "base": base,
        "clean": ft(31, quiz["clean"]),
        "broken_leaky": ft(32, broken_leaky),
        "broken_clean": ft(33, broken_clean),
        "broken_leaky_data": broken_leaky,
        "broken_clean_data": broken_clean,
    }


def _merge(quiz, family, tmp_path: Path, inputs: list[Path], *extra: str) -> int:
    config = merge_config(tmp_path / "merge.yml", family["base"], inputs, "linear")
    db = ["--db", str(tmp_path / "mg.db")]
    return main(["merge", str(config), str(tmp_path / "out"), "--quiet", *db, *_bench(quiz), *extra])


def test_audit_model_with_a_broken_line_is_incomplete_even_when_the_base_reads(quiz, family, capsys) -> None:
    assert _audit(quiz, "--model", str(family["broken_clean"]), "--json") == 2
    captured = capsys.readouterr()
    assert f"line {BROKEN_LINE} is not JSON" in _one_error_line(captured.err)
    verdict = json.loads(captured.out)["models"][0]
    assert verdict["verdict"] == "incomplete"
    statuses = {Path(d["ref"]).name: (d["status"], d["examples"]) for d in verdict["datasets"]}
    assert statuses == {"pretrain.txt": ("complete", 1), "clean.jsonl": ("incomplete", BROKEN_LINE - 1)}


def test_merge_of_a_leaky_copy_with_one_broken_line_is_refused(quiz, family, tmp_path, capsys) -> None:
    data = family["broken_leaky_data"]
    before = _sha256(data), _sha256(family["broken_leaky"])
    code = _merge(quiz, family, tmp_path, [family["clean"], family["broken_leaky"]])
    captured = capsys.readouterr()
    assert code == 2
    line = _one_error_line(captured.err)
    assert (
        "refusing to merge" in line and "could not be read completely" in line and "--skip-bad-rows" in line
    )
    assert f"line {BROKEN_LINE} is not JSON" in " ".join(captured.out.split())  # the audit says which line
    assert not (tmp_path / "out").exists() and not [
        p for p in tmp_path.iterdir() if p.name.startswith(".out")
    ]
    assert (_sha256(data), _sha256(family["broken_leaky"])) == before
    from mergeguard.db import open_db

    db = open_db(tmp_path / "mg.db")
    statuses = [row[0] for row in db.execute("SELECT status FROM merges").fetchall()]
    assert statuses == ["refused"]  # in `history`, never a merged model
    verdicts = dict(
        db.execute("SELECT m.ref, v.verdict FROM audit_verdicts v JOIN models m ON m.id = v.model_id")
    )
    assert verdicts[str(family["broken_leaky"].resolve())] == "incomplete"
    # skipping the bad row reads the rest: the leaked items are found, so it is refused as contaminated
    assert _merge(quiz, family, tmp_path, [family["clean"], family["broken_leaky"]], "--skip-bad-rows") == 1
    assert "contaminated input(s)" in capsys.readouterr().err


def test_skip_bad_rows_merges_clean_data_and_records_the_choice(quiz, family, tmp_path, capsys) -> None:
    assert _merge(quiz, family, tmp_path, [family["clean"], family["broken_clean"]], "--skip-bad-rows") == 0
    from mergeguard.db import open_db

    db = open_db(tmp_path / "mg.db")
    reports = [json.loads(row[0]) for row in db.execute("SELECT report FROM audits WHERE report IS NOT NULL")]
    first = reports[0]
    assert first["thresholds"]["skip_bad_rows"] is True
    broken = next(m for m in first["models"] if m["model"] == str(family["broken_clean"]))
    assert broken["verdict"] == "clean"
    entry = next(d for d in broken["datasets"] if d["ref"] == str(family["broken_clean_data"]))
    assert (entry["status"], entry["skipped"]) == ("skipped", 1) and f"line {BROKEN_LINE}" in entry[
        "reasons"
    ][0]
    capsys.readouterr()
    assert _audit(quiz, "--model", str(family["broken_clean"]), "--skip-bad-rows") == 0
    assert "1 skipped" in " ".join(capsys.readouterr().out.split())  # the text report counts it too


# ---------------------------------------------------------------- folders, streaming, the hub


def test_a_folder_of_mixed_formats_reads_every_file(quiz, tmp_path, capsys) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.txt").write_text("the weather is fine today\n", encoding="utf-8")
    (folder / "b.txt").write_text("the sea is calm\n", encoding="utf-8")
    (folder / "leaky.jsonl").write_bytes(quiz["leaky"].read_bytes())
    (folder / "README.md").write_text("# a dataset card is not data\n", encoding="utf-8")
    assert _audit(quiz, "--dataset", str(folder), "--json") == 1  # the .jsonl is read: contaminated
    report = json.loads(capsys.readouterr().out)
    assert report["models"][0]["datasets"][0]["examples"] == 2 + 20
    (folder / "leaky.jsonl").unlink()
    (folder / "notes.docx").write_bytes(b"PK\x03\x04 not a data file")
    assert _audit(quiz, "--dataset", str(folder)) == 2  # an unknown file in the folder is an error
    assert "notes.docx has an unknown type" in _one_error_line(capsys.readouterr().err)
    assert _audit(quiz, "--dataset", str(folder), "--json", "--skip-bad-rows") == 0  # or skipped, counted
    entry = json.loads(capsys.readouterr().out)["models"][0]["datasets"][0]
    assert (entry["status"], entry["examples"], entry["skipped"]) == ("skipped", 2, 1)
    assert "notes.docx" in entry["reasons"][0]


def test_lines_stream_with_a_bound(tmp_path) -> None:
    """A one-line JSON array larger than the line bound streams element by element; a 50 MB line is an
    error naming the file and line, read in bounded memory."""
    array = tmp_path / "one_line.json"
    array.write_text(json.dumps([{"text": f"example {i} " + "x" * 80} for i in range(200_000)]))
    assert array.stat().st_size > 16 << 20
    assert sum(1 for _ in dataset_texts(str(array))) == 200_000
    huge = tmp_path / "huge.jsonl"
    huge.write_text(json.dumps({"text": "word " * 10_000_000}) + "\n" + json.dumps({"text": "ok"}) + "\n")
    script = (
        "import sys\n"
        "from mergeguard.auditor.datasets import ReadLog, dataset_texts\n"
        "from mergeguard.errors import DatasetError\n"
        "try:\n    list(dataset_texts(sys.argv[1]))\nexcept DatasetError as error:\n    print(error)\n"
        "log = ReadLog(sys.argv[1], skip_bad_rows=True)\n"
        "print(list(dataset_texts(sys.argv[1], log=log)), log.skipped)\n"
        "peak = [line for line in open('/proc/self/status') if line.startswith('VmHWM')][0]\n"
        "print(int(peak.split()[1]) // 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(huge)], capture_output=True, text=True, check=True
    )
    error, skipped, rss_mb = out.stdout.splitlines()
    assert (
        error
        == f"{huge} line 1 is longer than 16777216 bytes; split the example, or pass --skip-bad-rows to skip"
        " it"
    )
    assert skipped == "['ok'] 1"
    assert int(rss_mb) < 300, out.stdout


def test_an_offline_hub_dataset_fails_at_once(quiz, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(DatasetError, match="the hub is not reachable"):
        list(dataset_texts("no-such-org/no-such-dataset-xyz"))
    assert time.perf_counter() - started < 2
    assert _audit(quiz, "--dataset", "no-such-org/no-such-dataset-xyz") == 2
    assert "no-such-org/no-such-dataset-xyz" in _one_error_line(capsys.readouterr().err)
