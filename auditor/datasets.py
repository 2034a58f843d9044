"""Dataset references -> examples -> text.

A REF is a local file (.json, .jsonl, .jsonl.gz, .json.gz, .csv, .parquet, .txt), a `datasets.save_to_disk`
folder, or a hub dataset id (read with `datasets`, streaming). A local folder of data files goes through
the same `datasets.load_dataset` call as a hub id, which is how the hub path is tested offline.
The text of an example is every string under the fields of the common fine-tuning schemas (Alpaca,
prompt/response/completion/chosen/rejected, question/answer, text, chat `messages`, ShareGPT
`conversations`); `text_field` picks one field (dotted for nested) instead.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from pathlib import Path
from typing import Any

from mergeguard.errors import DatasetError

# Fields whose strings are training text, in the order they are joined (system prompt first, then the
# user's turn, then the model's). Chat lists (`messages`, `conversations`) and preference pairs
# (`chosen`/`rejected`, strings or message lists) are flattened to their strings.
TEXT_FIELDS = (
    "system",
    "instruction",
    "input",
    "prompt",
    "question",
    "query",
    "context",
    "text",
    "content",
    "messages",
    "conversations",
    "conversation",
    "output",
    "response",
    "completion",
    "answer",
    "chosen",
    "rejected",
)
# Keys of message dicts that hold no text (roles, names, ids).
SKIP_KEYS = {"role", "from", "name", "id", "type", "weight", "loss"}
FILE_SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".csv", ".parquet", ".txt", ".txt.gz")


@dataclass
class DatasetSource:
    """An opened dataset: its name in reports, and its rows (dicts, or str for .txt lines)."""

    ref: str
    rows: Iterable[Any]
    kind: str  # file | disk | hub


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a value (lists and dicts flattened, role/name keys skipped)."""
    if isinstance(value, str):
        if value:
            yield value
    elif isinstance(value, dict):
        for key, inner in value.items():
            if key not in SKIP_KEYS:
                yield from _strings(inner)
    elif isinstance(value, list | tuple):
        for inner in value:
            yield from _strings(inner)


def _field(row: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(row, dict) or part not in row:
            return None
        row = row[part]
    return row


def example_text(row: Any, text_field: str | None = None) -> str:
    """The training text of one example."""
    if isinstance(row, str):
        return row
    if not isinstance(row, dict):
        return "\n".join(_strings(row))
    if text_field:
        return "\n".join(_strings(_field(row, text_field)))
    getter = _text_fields(tuple(row))
    if getter is None:
        return "\n".join(_strings(row))
    known = getter(row)
    try:  # the common flat case (all strings), without recursion
        return "\n".join(filter(None, known))
    except TypeError:
        return "\n".join(_strings(known))


@lru_cache(maxsize=256)
def _text_fields(keys: tuple[str, ...]) -> Callable[[dict], tuple[Any, ...]] | None:
    """A getter of the TEXT_FIELDS among a row's keys, in TEXT_FIELDS order, as a tuple (rows of a dataset
    share their keys, so this is built once per dataset); None when the row has none of them."""
    present = set(keys)
    fields = [key for key in TEXT_FIELDS if key in present]
    if not fields:
        return None
    if len(fields) == 1:
        return lambda row: (row[fields[0]],)
    return itemgetter(*fields)


def check_text_field(rows: list[Any], text_field: str, ref: str) -> None:
    """Fail early (with the fields there are) when `--text-field` names a field the data lacks."""
    dicts = [row for row in rows if isinstance(row, dict)]
    if dicts and all(_field(row, text_field) is None for row in dicts):
        raise DatasetError(
            f"dataset {ref} has no field {text_field!r} (fields: {', '.join(sorted(dicts[0]))})",
            hint="pass --text-field with one of those",
        )


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")  # type: ignore[return-value]
    return open(path, encoding="utf-8-sig")  # noqa: SIM115


def _json_rows(path: Path) -> Iterator[Any]:
    with _open_text(path) as handle:
        head = handle.read(1)
        while head and head.isspace():
            head = handle.read(1)
        rest = handle.read()
    text = head + rest
    if head == "[":
        data = json.loads(text)
        yield from data
        return
    if head == "{":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):  # {"data": [...]} or {"train": [...]}
            lists = [v for v in data.values() if isinstance(v, list)]
            yield from (lists[0] if lists else [data])
            return
    lines = [line for line in text.splitlines() if line.strip()]
    try:  # JSON Lines as one JSON array: one decoder call instead of one per line
        data = json.loads("[" + ",".join(lines) + "]")
    except json.JSONDecodeError:
        data = None  # find the bad line below, to name it
    if isinstance(data, list) and len(data) == len(lines):
        yield from data
        return
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                raise DatasetError(
                    f"{path} line {number} is not JSON ({error.msg})", hint="fix the file or convert it"
                ) from error


def _file_rows(path: Path) -> Iterator[Any]:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        yield from _json_rows(path)
    elif name.endswith(".csv"):
        with _open_text(path) as handle:
            yield from csv.DictReader(handle)
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches():
            yield from batch.to_pylist()
    elif name.endswith((".txt", ".txt.gz")):
        with _open_text(path) as handle:
            yield from (line.rstrip("\n") for line in handle if line.strip())
    else:
        raise DatasetError(
            f"dataset file {path} has an unknown type",
            hint=f"use one of {', '.join(FILE_SUFFIXES)}, a save_to_disk folder or a hub id",
        )


def _disk_rows(folder: Path) -> Iterator[Any]:
    from datasets import DatasetDict, load_from_disk

    data = load_from_disk(str(folder))
    if isinstance(data, DatasetDict):
        split = "train" if "train" in data else next(iter(data))
        data = data[split]
    yield from data


def hub_rows(ref: str, split: str = "train", streaming: bool = True) -> Iterator[Any]:
    """Rows of a hub dataset id (or a local folder of data files), streamed with `datasets`."""
    from datasets import load_dataset

    name, _, wanted = ref.partition(":")
    try:
        data = load_dataset(name, split=wanted or split, streaming=streaming)
    except Exception as error:  # offline, missing, gated, bad split: all one message for the user
        raise DatasetError(
            f"cannot load dataset {ref} ({type(error).__name__}: {str(error).splitlines()[0][:160]})",
            hint="check the id and your network, or give a local file with --dataset MODEL=PATH",
        ) from error
    yield from data


def open_dataset(ref: str) -> DatasetSource:
    """Open a dataset REF (see the module docstring); nothing is read until the rows are iterated."""
    path = Path(ref).expanduser()
    if path.is_file():
        return DatasetSource(ref, _file_rows(path), "file")
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return DatasetSource(ref, _disk_rows(path), "disk")
        return DatasetSource(ref, hub_rows(str(path)), "hub")
    if ref.startswith(("/", "./", "../", "~")) or ref.lower().endswith(FILE_SUFFIXES):
        raise DatasetError(f"dataset file {ref} not found", hint="check the path")
    return DatasetSource(ref, hub_rows(ref), "hub")


def dataset_texts(ref: str, text_field: str | None = None) -> Iterator[str]:
    """The text of every example of a dataset, in order (example i is the i-th text)."""
    source = open_dataset(ref)
    rows = iter(source.rows)
    if text_field:
        head = [row for _, row in zip(range(20), rows, strict=False)]
        check_text_field(head, text_field, ref)
        rows = _chain(head, rows)
    if text_field:
        for row in rows:
            yield example_text(row, text_field)
    else:
        yield from map(example_text, rows)  # no Python frame per row here


def _chain(head: list[Any], rest: Iterator[Any]) -> Iterator[Any]:
    yield from head
    yield from rest
