"""A real corpus with planted benchmark items, for the engine tests (test_audit_engines, test_ray_engine):
Alpaca rows (real) with GSM8K and ARC-Challenge test items planted at known rows, written as one JSON Lines
file or as a folder of parquet shards (several row groups each)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

BENCHMARKS = ["gsm8k", "arc_challenge"]


def planted_rows(
    shared_data: Path, copies: int = 1, plants: int = 12, seed: int = 7
) -> tuple[list[dict], dict]:
    """Alpaca's rows (`copies` times over), `plants` test items planted: (rows, {row: (benchmark, item)})."""
    alpaca = json.loads((shared_data / "corpora/alpaca/alpaca_5000.json").read_text())
    rows: list[dict[str, Any]] = [dict(row) for _ in range(copies) for row in alpaca]
    gsm8k = [json.loads(x) for x in (shared_data / "hf/gsm8k/test.jsonl").read_text().splitlines()]
    arc = [json.loads(x) for x in (shared_data / "hf/arc_challenge/test.jsonl").read_text().splitlines()]
    rng = random.Random(seed)
    planted = {}
    for k, at in enumerate(sorted(rng.sample(range(len(rows)), plants))):
        if k % 2:
            item = rng.randrange(len(gsm8k))
            rows[at] = {"instruction": gsm8k[item]["question"], "input": "", "output": gsm8k[item]["answer"]}
            planted[at] = ("gsm8k", item)
        else:
            item = rng.randrange(len(arc))
            row = arc[item]
            choices = "\n".join(
                f"{label}. {text}"
                for label, text in zip(row["choices"]["label"], row["choices"]["text"], strict=True)
            )
            answer = row["choices"]["text"][row["choices"]["label"].index(row["answerKey"])]
            rows[at] = {"instruction": f"{row['question']}\n{choices}", "input": "", "output": answer}
            planted[at] = ("arc_challenge", item)
    return rows, planted


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_parquet_shards(rows: list[dict], folder: Path, files: int = 3, row_group: int = 1000) -> Path:
    """`rows` split into `files` parquet files, `row_group` rows per row group, named in reading order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(rows) // files)
    for k in range(files):
        part = rows[k * per : (k + 1) * per]
        pq.write_table(pa.Table.from_pylist(part), folder / f"part-{k:05d}.parquet", row_group_size=row_group)
    return folder


def finding_keys(report: Any) -> list[tuple]:
    """What must be identical across engines: each finding's dataset row, item, severity and score."""
    return sorted(
        (f.dataset, f.example, f.benchmark, f.item, f.severity, f.score, f.evidence) for f in report.findings
    )
