"""Dataset references -> examples -> text.

A REF is a local file (.json, .jsonl, .jsonl.gz, .json.gz, .csv, .parquet, .txt), a `datasets.save_to_disk`
folder, a folder of such files (every one is read; other files are errors), or a hub dataset id (read
with `datasets`, streaming). Files are streamed a bounded line (or JSON array element) at a time. Reading
fails closed: a bad line, a truncated file, an unknown file type raise a DatasetError naming the file and
line, unless a `ReadLog` with `skip_bad_rows` skips and counts them.
The text of an example is every string under the fields of the common fine-tuning schemas (Alpaca,
prompt/response/completion/chosen/rejected, question/answer, text, chat `messages`, ShareGPT
`conversations`); `text_field` picks one field (dotted for nested) instead.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain, islice
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO

from mergeguard.auditor.options import MAX_LINE
from mergeguard.auditor.suffixes import FILE_SUFFIXES
from mergeguard.auditor.urls import is_url, open_parquet, parquet_urls
from mergeguard.benchmarks.loading import hub_cache_hit, hub_reachable
from mergeguard.errors import DatasetError

# Fields whose strings come first, in this order (system prompt, then the user's turn, then the model's);
# every other field's strings follow in the row's own order (lists such as `correct_answers`, `choices` or
# `incorrect_answers` included: a bare prompt set holds its answers there). Chat lists (`messages`,
# `conversations`) and preference pairs (`chosen`/`rejected`, strings or message lists) are flattened.
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


MAX_DOCUMENT = 64 << 20  # bytes of a file that is one JSON object ({"train": [...]}), read whole
MAX_REASONS = 5  # skipped rows whose reason the report keeps (all are counted)
JSON_BATCH = 2000  # JSON Lines decoded per json.loads call
JSON_CHUNK = 1 << 20  # characters of a JSON array read at a time
HUB_TIMEOUT = 1.5  # seconds to wait for the hub to answer before calling it offline
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")  # read at each call: the HF cache only
_SPACE = re.compile(r"[ \t\r\n]*")
METADATA_FILES = ("README", "LICENSE", "DATASET_INFOS.JSON")  # files of a data folder that hold no rows


@dataclass
class ReadLog:
    """What reading one dataset met. Without `skip_bad_rows` a bad row or file raises a DatasetError
    (naming the file and line); with it, the row is skipped and counted, and the first reasons kept, so
    that the report can say what the verdict did not see."""

    ref: str
    skip_bad_rows: bool = False
    max_line: int = MAX_LINE
    files: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)

    def bad(self, error: DatasetError) -> None:
        """A bad row or file: raised, or skipped and counted when the user chose --skip-bad-rows."""
        if not self.skip_bad_rows:
            raise error
        self.skipped += 1
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(str(error).split("; ")[0])


@dataclass
class DatasetSource:
    """An opened dataset: its name in reports, and its rows (dicts, or str for .txt lines)."""

    ref: str
    rows: Iterable[Any]
    kind: str  # file | disk | hub | url


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


def example_text(row: Any, text_field: str | None = None, only_text_field: str | None = None) -> str:
    """The training text of one example: every string of the row (SKIP_KEYS aside), one per line.

    `text_field` (dotted for nested) adds a field the defaults leave out (one under a SKIP_KEYS key);
    `only_text_field` takes that field's strings alone instead."""
    if isinstance(row, str):
        return row
    if not isinstance(row, dict):
        return "\n".join(_strings(row))
    if only_text_field:
        return "\n".join(_strings(_field(row, only_text_field)))
    known = _text_fields(tuple(row))(row)
    try:  # the common flat case (all strings), without recursion
        text = "\n".join(filter(None, known))
    except TypeError:
        text = "\n".join(_strings(known))
    if text_field and any(part in SKIP_KEYS for part in text_field.split(".")):
        extra = "\n".join(_strings(_field(row, text_field)))
        text = f"{text}\n{extra}" if text and extra else text or extra
    return text


@lru_cache(maxsize=256)
def _text_fields(keys: tuple[str, ...]) -> Callable[[dict], tuple[Any, ...]]:
    """A getter of a row's text fields as a tuple: TEXT_FIELDS first in their order, then every other
    key but SKIP_KEYS in the row's order (rows of a dataset share their keys: built once per dataset)."""
    present = set(keys)
    fields = [key for key in TEXT_FIELDS if key in present]
    fields += [key for key in keys if key not in SKIP_KEYS and key not in fields]
    if not fields:
        return lambda row: ()
    if len(fields) == 1:
        return lambda row: (row[fields[0]],)
    return itemgetter(*fields)


def check_text_field(rows: list[Any], text_field: str, ref: str, option: str = "--text-field") -> None:
    """Fail early (with the fields there are) when `--text-field` names a field the data lacks."""
    dicts = [row for row in rows if isinstance(row, dict)]
    if dicts and all(_field(row, text_field) is None for row in dicts):
        raise DatasetError(
            f"dataset {ref} has no field {text_field!r} (fields: {', '.join(sorted(dicts[0]))})",
            hint=f"pass {option} with one of those",
        )


def _open_binary(path: Path) -> BinaryIO:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")  # noqa: SIM115


def _raw_lines(path: Path, log: ReadLog) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of every line, read one bounded line at a time (never the whole file): a line
    over `log.max_line` bytes, a truncated or corrupt gzip, are errors naming the file and the line."""
    limit = log.max_line
    with _open_binary(path) as handle:
        number = 0
        while True:
            try:
                line = handle.readline(limit + 1)
            except (OSError, EOFError, zlib.error) as error:
                log.bad(
                    DatasetError(
                        f"{path} is truncated or corrupt after line {number} ({error})",
                        hint="download or write the file again",
                    )
                )
                return  # the rest of a broken stream cannot be read: the file counts as one skip
            if not line:
                return
            number += 1
            if len(line) > limit and not line.endswith(b"\n"):
                log.bad(
                    DatasetError(
                        f"{path} line {number} is longer than {limit} bytes",
                        hint="split the example, or pass --skip-bad-rows to skip it",
                    )
                )
                while line and not line.endswith(b"\n"):  # skipped: drop the rest of the line
                    line = handle.readline(limit)
                continue
            if number == 1 and line.startswith(codecs.BOM_UTF8):
                line = line[len(codecs.BOM_UTF8) :]
            yield number, line


def _decode(path: Path, number: int, line: bytes, log: ReadLog) -> str | None:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as error:
        log.bad(
            DatasetError(
                f"{path} line {number} is not UTF-8 (byte {error.start + 1})",
                hint="convert the file to UTF-8, or pass --skip-bad-rows to skip the line",
            )
        )
        return None


def _text_lines(path: Path, log: ReadLog) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line, decoded as UTF-8 (a bad line is named)."""
    for number, line in _raw_lines(path, log):
        text = _decode(path, number, line, log)
        if text is not None:
            yield number, text


def _json_lines(path: Path, log: ReadLog) -> Iterator[Any]:
    """JSON Lines, decoded a batch of lines per `json.loads` call (one call per line is ~2x slower);
    a batch that fails is decoded line by line to name the bad line."""
    lines = _raw_lines(path, log)
    while batch := [item for item in islice(lines, JSON_BATCH) if item[1].strip()]:
        try:
            rows = json.loads(b"[" + b",".join(line for _, line in batch) + b"]")
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            rows = None
        if isinstance(rows, list) and len(rows) == len(batch):
            yield from rows
        else:
            yield from _json_line_by_line(path, batch, log)


def _json_line_by_line(path: Path, batch: list[tuple[int, bytes]], log: ReadLog) -> Iterator[Any]:
    for number, line in batch:
        text = _decode(path, number, line, log)
        if text is None:
            continue
        try:
            row = json.loads(text)
        except RecursionError:
            log.bad(DatasetError(f"{path} line {number} is nested too deeply", hint="fix the line"))
            continue
        except json.JSONDecodeError as error:
            log.bad(
                DatasetError(
                    f"{path} line {number} is not JSON ({error.msg}, column {error.colno})",
                    hint="fix the line, or pass --skip-bad-rows to skip it",
                )
            )
            continue
        yield row


def _json_array(path: Path, log: ReadLog) -> Iterator[Any]:
    """The elements of a JSON array file, decoded one by one from a buffer refilled a chunk at a time (a
    one-line array of any size streams; one element over `log.max_line` characters is an error)."""
    decoder, skip_space = json.JSONDecoder(), _SPACE.match
    with _open_binary(path) as raw:
        handle = io.TextIOWrapper(raw, encoding="utf-8-sig")
        buffer, pos, line, count, eof, comma = "", 0, 1, 0, False, False

        def fail(message: str, at: int, hint: str = "fix the file") -> DatasetError:
            return DatasetError(f"{path} line {line + buffer.count(chr(10), 0, at)}: {message}", hint=hint)

        def fill() -> None:
            nonlocal buffer, pos, line, eof
            try:
                chunk = handle.read(JSON_CHUNK)
            except (OSError, EOFError, zlib.error, UnicodeDecodeError) as error:
                raise fail(
                    f"cannot be read ({type(error).__name__}: {error})", pos, "download it again"
                ) from error
            line += buffer.count("\n", 0, pos)
            buffer, pos, eof = buffer[pos:] + chunk, 0, not chunk

        try:
            fill()
            pos = skip_space(buffer, pos).end() + 1  # past the "["
            while True:
                pos = skip_space(buffer, pos).end()
                if pos == len(buffer):
                    if eof:
                        raise fail("the JSON array ends early", pos, "the file is truncated")
                    fill()
                elif buffer[pos] == "]":
                    return
                elif comma:
                    if buffer[pos] != ",":
                        raise fail(f"expected ',' after element {count}", pos)
                    pos, comma = pos + 1, False
                else:
                    try:
                        row, end = decoder.raw_decode(buffer, pos)
                    except json.JSONDecodeError as error:
                        if eof:
                            raise fail(f"element {count + 1} is not JSON ({error.msg})", error.pos) from error
                        if len(buffer) - pos > log.max_line:
                            too_long = f"element {count + 1} is longer than {log.max_line} characters"
                            raise fail(too_long, pos, "split the example") from None
                        fill()
                        continue
                    if end == len(buffer) and not eof:  # a number may go on in the next chunk
                        fill()
                        continue
                    pos, comma, count = end, True, count + 1
                    yield row
        except (DatasetError, RecursionError) as error:  # the rest of the array cannot be found: one skip
            log.bad(error if isinstance(error, DatasetError) else fail("nested too deeply", pos))


def _json_rows(path: Path, log: ReadLog) -> Iterator[Any]:
    """A JSON array, JSON Lines, or one object holding a list (`{"data": [...]}`), streamed."""
    first = _first_line(path, log.max_line)
    head = first.lstrip(codecs.BOM_UTF8 + b" \t\r\n")[:1]
    if head == b"[":
        yield from _json_array(path, log)
        return
    cut = len(first) >= log.max_line and not first.endswith(b"\n")  # a line over the bound: JSON Lines say so
    if head == b"{" and not cut and not _is_object(first):  # not an object per line: one {"train": [...]}
        document = _json_document(path, log)
        if document is not None:
            yield from document
            return
    yield from _json_lines(path, log)


def _first_line(path: Path, limit: int) -> bytes:
    """The first non-blank line of a file (at most `limit` bytes); b"" when there is none or the file
    cannot be read (the line reader then says why)."""
    try:
        with _open_binary(path) as handle:
            while line := handle.readline(limit):
                if line.strip():
                    return line
    except (OSError, EOFError, zlib.error):
        pass
    return b""


def _is_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line.removeprefix(codecs.BOM_UTF8)), dict)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False


def _json_document(path: Path, log: ReadLog) -> list[Any] | None:
    """The rows of a file that is one JSON object (its first list, or the object), read whole up to
    MAX_DOCUMENT bytes; None when it is not one JSON document (then it is read as JSON Lines)."""
    with _open_binary(path) as handle:
        try:
            data = handle.read(MAX_DOCUMENT + 1)
        except (OSError, EOFError, zlib.error):
            return None  # JSON Lines reading names where it broke
    if len(data) > MAX_DOCUMENT:
        log.bad(DatasetError(f"{path} is one JSON object over {MAX_DOCUMENT} bytes", hint="use JSON Lines"))
        return []
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    lists = [v for v in value.values() if isinstance(v, list)]
    return lists[0] if lists else [value]


def _csv_rows(path: Path, log: ReadLog) -> Iterator[Any]:
    last = 0  # the line the reader is on, for the error

    def lines() -> Iterator[str]:
        nonlocal last
        for last, text in _text_lines(path, log):  # noqa: B007 (`last` is read by the error below)
            yield text

    try:
        yield from csv.DictReader(lines(), strict=True)  # a stray quote is an error, not a field to the end
    except csv.Error as error:
        log.bad(DatasetError(f"{path} line {last} is not CSV ({error})", hint="fix the file"))


def parquet_rows(path: str | Path, log: ReadLog, row_groups: tuple[int, ...] | None = None) -> Iterator[Any]:
    """The rows of a parquet file (a local path or a URL), or of some of its row groups; a file that
    cannot be read is a bad file, named (raised, or counted under --skip-bad-rows)."""
    import pyarrow as pa

    groups = list(row_groups) if row_groups is not None else None
    try:
        for batch in open_parquet(str(path)).iter_batches(batch_size=1024, row_groups=groups):
            yield from batch.to_pylist()
    except (pa.ArrowException, OSError) as error:
        part = f" (row groups {groups[0]}-{groups[-1]})" if groups else ""
        log.bad(
            DatasetError(
                f"{path}{part} is not a readable parquet file ({str(error).splitlines()[0][:160]})",
                hint="write the file again",
            )
        )


def _url_rows(ref: str, log: ReadLog) -> Iterator[Any]:
    """Every row of the parquet files at a URL, in order (`urls.parquet_urls`)."""
    for url in parquet_urls(ref):
        log.files += 1
        yield from parquet_rows(url, log)


def _file_rows(path: Path, log: ReadLog) -> Iterator[Any]:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        yield from _json_rows(path, log)
    elif name.endswith(".csv"):
        yield from _csv_rows(path, log)
    elif name.endswith(".parquet"):
        yield from parquet_rows(path, log)
    elif name.endswith((".txt", ".txt.gz")):
        yield from (text.rstrip("\r\n") for _, text in _text_lines(path, log) if text.strip())
    else:
        log.bad(
            DatasetError(
                f"dataset file {path} has an unknown type",
                hint=f"use one of {', '.join(FILE_SUFFIXES)}, or pass --skip-bad-rows to skip it",
            )
        )


def _folder_rows(folder: Path, log: ReadLog) -> Iterator[Any]:
    """Every data file under a folder, in name order; metadata (hidden files, README, LICENSE) is left
    out, and any other file of an unknown type is an error (a skip with --skip-bad-rows)."""
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and not p.name.upper().startswith(METADATA_FILES)
    )
    if not files:
        raise DatasetError(f"dataset folder {folder} holds no data files", hint="check the path")
    for path in files:
        log.files += 1
        yield from _file_rows(path, log)


def _disk_rows(folder: Path) -> Iterator[Any]:
    from datasets import DatasetDict, load_from_disk

    try:
        data = load_from_disk(str(folder))
    except Exception as error:  # datasets raises many kinds for a damaged folder
        raise DatasetError(
            f"cannot read the save_to_disk folder {folder} ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:160] if str(error) else ''})",
            hint="save the dataset again",
        ) from error
    if isinstance(data, DatasetDict):
        split = "train" if "train" in data else next(iter(data))
        data = data[split]
    yield from data


def hub_rows(ref: str, split: str = "train", streaming: bool = True) -> Iterator[Any]:
    """Rows of a hub dataset id, streamed with `datasets`. Offline (HF_HUB_OFFLINE, or the hub not
    answering a quick connect) and not in the HF cache: an error at once, not datasets' retries."""
    name, _, wanted = ref.partition(":")
    offline = any(os.environ.get(var, "").lower() in ("1", "true", "yes") for var in OFFLINE_VARS)
    if not hub_cache_hit(name) and (offline or not hub_reachable(timeout=HUB_TIMEOUT)):
        raise DatasetError(
            f"cannot load dataset {ref}: the hub is not reachable (or HF_HUB_OFFLINE is set) and the HF "
            "cache does not hold it",
            hint="give a local file with --dataset MODEL=PATH, or go online",
        )
    from datasets import load_dataset

    try:
        data = load_dataset(name, split=wanted or split, streaming=streaming)
        yield from data
    except Exception as error:  # offline, missing, gated, bad split: all one message for the user
        raise DatasetError(
            f"cannot load dataset {ref} ({type(error).__name__}: {str(error).splitlines()[0][:160]})",
            hint="check the id and your network, or give a local file with --dataset MODEL=PATH",
        ) from error


def open_dataset(ref: str, log: ReadLog | None = None) -> DatasetSource:
    """Open a dataset REF (see the module docstring); nothing is read until the rows are iterated. Bad
    rows raise a DatasetError naming the file and line, or are counted in `log` if it skips them."""
    log = log if log is not None else ReadLog(ref)
    path = Path(ref).expanduser()
    if path.is_file():
        log.files = 1
        return DatasetSource(ref, _file_rows(path, log), "file")
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return DatasetSource(ref, _disk_rows(path), "disk")
        return DatasetSource(ref, _folder_rows(path, log), "folder")
    if is_url(ref):
        return DatasetSource(ref, _url_rows(ref, log), "url")
    if ref.startswith(("/", "./", "../", "~")) or ref.lower().endswith(FILE_SUFFIXES):
        raise DatasetError(f"dataset file {ref} not found", hint="check the path")
    return DatasetSource(ref, hub_rows(ref), "hub")


def dataset_texts(
    ref: str, text_field: str | None = None, log: ReadLog | None = None, only_text_field: str | None = None
) -> Iterator[str]:
    """The text of every example of a dataset, in order (example i is the i-th text). A bad row raises
    a DatasetError, unless `log` skips bad rows (it then counts them). `text_field` adds a field to the
    defaults, `only_text_field` replaces them (see `example_text`)."""
    source = open_dataset(ref, log)
    rows = iter(source.rows)
    named = only_text_field or text_field
    if named:
        head = [row for _, row in zip(range(20), rows, strict=False)]
        check_text_field(head, named, ref, "--only-text-field" if only_text_field else "--text-field")
        rows = chain(head, rows)
        for row in rows:
            yield example_text(row, text_field, only_text_field)
    else:
        yield from map(example_text, rows)  # no Python frame per row here
