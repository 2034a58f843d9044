"""The engines (#16): one unit of work, identical findings in this process and in worker processes, on a
real corpus (Alpaca with GSM8K and ARC-Challenge test items planted), read as one stream or as shards."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from engine_corpus import BENCHMARKS, finding_keys, planted_rows, write_jsonl, write_parquet_shards

from mergeguard.auditor import AuditOptions, audit_datasets, load_benchmark_index, scan_examples
from mergeguard.auditor.engines import open_engine
from mergeguard.auditor.engines.local import ProcessPool
from mergeguard.auditor.engines.shared_index import export_index, open_index
from mergeguard.auditor.engines.work import combine, scan_batch
from mergeguard.cli import main
from mergeguard.errors import UsageError


@pytest.fixture(scope="module")
def options(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> AuditOptions:
    cache = tmp_path_factory.mktemp("engines-cache")
    return AuditOptions(benchmarks=BENCHMARKS, benchmarks_dir=shared_data / "hf", cache_dir=cache)


@pytest.fixture(scope="module")
def corpus(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """20,000 rows (two of the local engine's chunks) as one JSON Lines file and as 3 parquet files."""
    rows, planted = planted_rows(shared_data, copies=4)
    folder = tmp_path_factory.mktemp("engines-corpus")
    return {
        "rows": rows,
        "planted": planted,
        "jsonl": write_jsonl(rows, folder / "sft.jsonl"),
        "parquet": write_parquet_shards(rows, folder / "sft-parquet", files=3, row_group=2500),
    }


def _match_keys(matches: list) -> list[tuple]:
    return [(m.example, m.item, m.severity, round(m.score, 6), m.start, m.end) for m in matches]


def test_unit_of_work_partials_combine_to_the_whole_stream(options: AuditOptions, corpus: dict) -> None:
    """Batches cut anywhere give, once combined, exactly what one pass over the stream finds, including
    the step that drops the dataset's own template n-grams (counted over all its examples)."""
    index, _ = load_benchmark_index(options)
    texts = [row["instruction"] + "\n" + row["input"] + "\n" + row["output"] for row in corpus["rows"][:6000]]
    whole = scan_examples(texts, index, containment=options.containment)
    cuts = [0, 37, 1500, 1501, 4096, 5999, 6000]
    partials = [
        scan_batch(texts[a:b], index, options.containment) for a, b in zip(cuts, cuts[1:], strict=False)
    ]
    combined = combine(partials, index, options.containment)
    assert _match_keys(combined.matches) == _match_keys(whole.matches)
    assert combined.examples == whole.examples == 6000
    planted = {row for row in corpus["planted"] if row < 6000}
    assert planted and planted <= {m.example for m in whole.matches}


def test_workers_share_the_index_memory_mapped(options: AuditOptions, corpus: dict, tmp_path: Path) -> None:
    """Workers map the exported index read-only (no copy per process), and it scans like the original."""
    index, _ = load_benchmark_index(options)
    mapped = open_index(export_index(index, tmp_path))
    assert isinstance(mapped.bench_hashes, np.memmap) and not mapped.bench_hashes.flags.writeable
    assert isinstance(mapped._bitmap, np.memmap)  # the lookup bitmap is built once, not per worker
    texts = [json.dumps(corpus["rows"][row]) for row in sorted(corpus["planted"])]
    found = _match_keys(scan_batch(texts, mapped, options.containment).matches)
    assert found == _match_keys(scan_batch(texts, index, options.containment).matches)
    assert {example for example, *_ in found} == set(range(len(texts)))


@pytest.mark.parametrize("form", ["jsonl", "parquet"])
def test_one_and_two_workers_give_identical_findings(options: AuditOptions, corpus: dict, form: str) -> None:
    """A stream read by the driver (JSON Lines) and shards read by the workers (parquet row groups): every
    planted item found at its row, and the same findings from one process and from two workers."""
    ref = str(corpus[form])
    single = audit_datasets([ref], replace(options, workers=1))
    with open_engine(*load_benchmark_index(options)[:1], replace(options, workers=2)) as engine:
        assert isinstance(engine, ProcessPool)
    double = audit_datasets([ref], replace(options, workers=2))
    assert finding_keys(double) == finding_keys(single)
    assert {f.example for f in single.findings} == set(corpus["planted"])
    for report in (single, double):
        read = report.models[0].datasets[0]
        assert (read["status"], read["examples"]) == ("complete", len(corpus["rows"]))
    assert double.models[0].datasets[0]["files"] == (3 if form == "parquet" else 1)


def test_a_bad_row_in_a_shard_stops_there_or_is_counted(
    options: AuditOptions, corpus: dict, tmp_path: Path
) -> None:
    """A malformed row in the middle shard: the report names its file and line and the audit stops there
    (rows after it unread, their findings absent), with any number of workers; --skip-bad-rows counts it."""
    rows = corpus["rows"]
    folder = write_parquet_shards(rows[:10000], tmp_path / "mixed", files=1, row_group=2500)
    lines = [json.dumps(row) for row in rows[10000:15000]]
    lines[100] = '{"instruction": "a broken row'
    (folder / "part-00001.jsonl").write_text("\n".join(lines) + "\n")
    write_parquet_shards(rows[15000:], tmp_path / "tail", files=1)
    (tmp_path / "tail/part-00000.parquet").rename(folder / "part-00002.parquet")
    reports = [audit_datasets([str(folder)], replace(options, workers=w)) for w in (1, 2)]
    assert finding_keys(reports[0]) == finding_keys(reports[1])
    for report in reports:
        read = report.models[0].datasets[0]
        assert read["status"] == "incomplete" and read["examples"] == 10100
        assert "part-00001.jsonl line 101" in read["reasons"][-1]
        assert all(f.example < 10100 for f in report.findings)
    skipped = audit_datasets([str(folder)], replace(options, workers=2, skip_bad_rows=True))
    read = skipped.models[0].datasets[0]
    assert (read["status"], read["skipped"], read["examples"]) == ("skipped", 1, len(rows) - 1)
    assert {f.example for f in skipped.findings} >= {p - 1 for p in corpus["planted"] if p > 10100}


def test_cli_workers_flag_and_bad_values(options: AuditOptions, corpus: dict, capsys) -> None:
    common = ["--benchmark", ",".join(BENCHMARKS), "--benchmarks-dir", str(options.benchmarks_dir)]
    common += ["--cache-dir", str(options.cache_dir), "-q", "--json", "--dataset", str(corpus["parquet"])]
    assert main(["audit", *common, "--workers", "2"]) == 1
    found = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["findings"]
    assert {f["example"] for f in found} == set(corpus["planted"])
    assert main(["audit", *common, "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err
    with pytest.raises(UsageError, match="unknown engine"):
        audit_datasets([str(corpus["jsonl"])], replace(options, engine="spark"))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_parquet_url_reads_as_its_files_do(options: AuditOptions, corpus: dict, workers: int) -> None:
    """A URL (file:// here; s3:// and gs:// go through the same pyarrow filesystems) is read shard by
    shard, in its files' order: the findings are those of the same files on local disk, one file or all."""
    folder = Path(corpus["parquet"])
    for ref in (folder, folder / "part-00001.parquet"):
        url = ref.resolve().as_uri()
        local = audit_datasets([str(ref)], replace(options, workers=workers))
        remote = audit_datasets([url], replace(options, workers=workers))
        assert finding_keys(remote) == sorted((url, *key[1:]) for key in finding_keys(local))
        read, expected = remote.models[0].datasets[0], local.models[0].datasets[0]
        assert (read["status"], read["examples"], read["files"]) == (
            "complete",
            expected["examples"],
            expected["files"],
        )


def test_a_url_is_refused_when_it_holds_data_it_cannot_read(
    options: AuditOptions, corpus: dict, tmp_path: Path
) -> None:
    """Only parquet is read at a URL: a folder there with other data files, or nothing there, is unreadable
    (never clean), and the reason says what to do."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "part-0.parquet").write_bytes((Path(corpus["parquet"]) / "part-00000.parquet").read_bytes())
    (mixed / "extra.jsonl").write_text('{"text": "more"}\n', encoding="utf-8")
    cases = {mixed: "only parquet is read at a URL", tmp_path / "missing": "not found"}
    for where, said in cases.items():
        report = audit_datasets([where.resolve().as_uri()], options)
        read = report.models[0].datasets[0]
        assert read["status"] == "unreadable" and report.models[0].verdict != "clean"
        assert any(said in reason for reason in read["reasons"]), read["reasons"]
