"""Datasets at a URL (s3://, gs://, abfs://, hf://, file://, ...): parquet read through pyarrow's
filesystems, the layer Ray Data's readers use too, so a URL that Ray can read every engine can read, with
the credentials of the machine that reads (each worker opens its own shard).

Only parquet is read at a URL: a folder there that also holds other data files (JSON Lines, CSV, ...) is
refused rather than read in part, so that an audit never passes on data it did not see.
"""

from __future__ import annotations

from typing import Any

from mergeguard.auditor.suffixes import NOT_READ_AT_A_URL
from mergeguard.errors import DatasetError


def is_url(ref: str) -> bool:
    return "://" in ref


def parquet_urls(ref: str) -> list[str]:
    """The parquet files at `ref` (the file itself, or a folder listed recursively), as URLs in path order;
    files and folders whose names start with `.` or `_` (`_SUCCESS`, `.cache`) are not data."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        filesystem, root = pafs.FileSystem.from_uri(ref)
        kind = filesystem.get_file_info(root).type
        if kind == pafs.FileType.File:
            return [ref]
        if kind == pafs.FileType.NotFound:
            raise DatasetError(f"dataset {ref} not found", hint="check the URL and the credentials")
        listed = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    except (OSError, pa.ArrowException) as error:
        raise DatasetError(
            f"cannot list dataset {ref} ({str(error).splitlines()[0][:160]})",
            hint="check the URL and the credentials",
        ) from error
    names = sorted(
        info.path
        for info in listed
        if info.is_file and not any(part.startswith((".", "_")) for part in info.path[len(root) :].split("/"))
    )
    _refuse_other_data(ref, names)
    scheme = ref.split("://", 1)[0]
    return [f"{scheme}://{name}" for name in names if name.lower().endswith(".parquet")]


def _refuse_other_data(ref: str, names: list[str]) -> None:
    others = [name for name in names if name.lower().endswith(NOT_READ_AT_A_URL)]
    if others or not any(name.lower().endswith(".parquet") for name in names):
        found = f"holds {others[0].rsplit('/', 1)[-1]}" if others else "holds no parquet file"
        raise DatasetError(
            f"dataset {ref} {found}: only parquet is read at a URL",
            hint="convert it to parquet, or copy it to local disk",
        )


def open_parquet(path: str) -> Any:
    """A pyarrow ParquetFile of a local path or of a URL."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    if not is_url(path):
        return pq.ParquetFile(path)
    filesystem, inner = pafs.FileSystem.from_uri(path)
    return pq.ParquetFile(inner, filesystem=filesystem)
