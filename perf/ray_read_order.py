"""Does Ray Data's `read_parquet` give a folder's rows in the files' order? (Why the Ray engine reads its
shards itself, #16.) A finding names its example by position, so an engine must see the rows in order.

Reads the first FILES parquet files of a folder with `preserve_order` on, in batches of 16,384 rows, and
counts the batches whose first row is not the row at that position when the files are read one after the
other (pyarrow, sorted by name, as the local engines read them):

    RAY_AUTH_MODE=disabled python perf/ray_read_order.py /tmp/audit-scale/corpus-10000000 [--files 40]

(`perf/audit_scale.py --rows 10000000` writes that folder.)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

BATCH = 16384


def first_text(batch: Any) -> dict[str, list[Any]]:
    """Per batch: its size and the start of its first row's first column."""
    column = batch.column(batch.column_names[0]).to_pylist()
    return {"rows": [len(column)], "first": [str(column[0])[:60]]}


def main() -> None:
    import pyarrow.parquet as pq
    import ray

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--files", type=int, default=40)
    args = parser.parse_args()
    files = sorted(str(path) for path in args.folder.glob("*.parquet"))[: args.files]
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False
    )
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    data = ray.data.read_parquet(files).map_batches(first_text, batch_size=BATCH, batch_format="pyarrow")
    batches = list(data.iter_rows())
    ray.shutdown()
    in_order: list[str] = []
    for name in files:
        table = pq.read_table(name, columns=[pq.read_schema(name).names[0]])
        in_order += [str(value)[:60] for value in table.column(0).to_pylist()]
    position, misplaced = 0, 0
    for batch in batches:
        misplaced += in_order[position] != batch["first"]
        position += batch["rows"]
    print(
        f"{len(files)} files, {position:,} rows read by Ray Data ({len(in_order):,} in the files), "
        f"{len(batches)} batches, {misplaced} not where the files' order puts them (Ray {ray.__version__})"
    )


if __name__ == "__main__":
    main()
