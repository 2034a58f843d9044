"""Reading a dataset for the engines: its texts checked as the audit needs them, and its shards.

A dataset that is a folder of data files, or a parquet file of several row groups, splits into shards that
workers read themselves (each names its own file and row when a row is bad); any other source (one JSON
Lines or JSON file, a `save_to_disk` folder, a hub stream) is read by the driver, in order, and its texts
go to the workers a chunk at a time. Either way memory stays bounded by the chunks in flight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergeguard.auditor.datasets import (
    MAX_REASONS,
    METADATA_FILES,
    ReadLog,
    check_text_field,
    dataset_texts,
    example_text,
    open_dataset,
    parquet_rows,
)
from mergeguard.auditor.detect import Match
from mergeguard.auditor.report import COMPLETE, INCOMPLETE, SKIPPED, UNREADABLE
from mergeguard.auditor.urls import is_url, open_parquet, parquet_urls
from mergeguard.errors import DatasetError

SHARD_ROWS = 65536  # a parquet file's row groups are grouped into shards of at least this many rows


@dataclass
class Scanned:
    """One dataset's scan: its matches and how much of it was read (the verdict fails closed on the rest)."""

    ref: str
    log: ReadLog
    matches: list[Match] = field(default_factory=list)
    examples: int = 0  # rows read
    texts: int = 0  # rows that hold text
    error: str | None = None  # what stopped the read
    paraphrases: list[Any] = field(default_factory=list)  # the semantic stage's matches (when asked)
    semantic: dict[str, Any] | None = None  # its cost on this dataset

    @property
    def status(self) -> str:
        if not self.texts:
            return UNREADABLE  # nothing read, or nothing with text: not clean
        if self.error is not None:
            return INCOMPLETE
        return SKIPPED if self.log.skipped else COMPLETE

    def entry(self) -> dict[str, Any]:
        """What the report says about the read, beside the dataset's ref."""
        reasons = [*self.log.reasons, *([self.error] if self.error else [])]
        return {
            "status": self.status,
            "examples": self.examples,
            "files": self.log.files,  # data files read (0 for a hub id or a save_to_disk folder)
            "skipped": self.log.skipped,
            "reasons": reasons,
        }

    def absorb(self, part: Scanned) -> None:
        """Add what reading a following shard met (its rows, files, skips and the error that stopped it)."""
        self.examples += part.examples
        self.texts += part.texts
        self.log.files += part.log.files
        self.log.skipped += part.log.skipped
        self.log.reasons.extend(part.log.reasons[: MAX_REASONS - len(self.log.reasons)])
        self.error = self.error or part.error


@dataclass(frozen=True)
class ReadOptions:
    """What reading needs of the audit's options (picklable: it travels to the workers)."""

    text_field: str | None = None
    only_text_field: str | None = None
    skip_bad_rows: bool = False
    max_line: int = 16 << 20

    @classmethod
    def of(cls, options: Any) -> ReadOptions:
        return cls(options.text_field, options.only_text_field, options.skip_bad_rows, options.max_line)


def checked_texts(
    scanned: Scanned, texts: Iterator[str], options: ReadOptions, where: Callable[[int], str]
) -> Iterator[str]:
    """`texts` counted into `scanned`. A read error ends the stream (recorded, not raised) so that the part
    read is still scanned; an over-long text is a bad row (yielded empty: numbering holds). `where(n)` names
    row n (1-based) in messages."""
    try:
        for text in texts:
            scanned.examples += 1
            if len(text) > options.max_line:
                scanned.log.bad(
                    DatasetError(
                        f"dataset {scanned.ref} {where(scanned.examples)} holds {len(text)} characters "
                        f"(more than {options.max_line})",
                        hint="split it, or pass --skip-bad-rows to skip it",
                    )
                )
                text = ""
            if text and not text.isspace():
                scanned.texts += 1
            yield text
    except DatasetError as error:
        scanned.error = str(error)
        return
    except RecursionError:  # a row nested deeper than Python recurses
        scanned.error = f"dataset {scanned.ref} {where(scanned.examples + 1)} is nested too deeply"
        return


def stream_texts(scanned: Scanned, options: ReadOptions) -> Iterator[str]:
    """The whole dataset's texts, read in order by the caller (the single-stream path)."""
    texts = dataset_texts(
        scanned.ref, options.text_field, log=scanned.log, only_text_field=options.only_text_field
    )
    return checked_texts(scanned, texts, options, lambda n: f"example {n}")


@dataclass(frozen=True)
class Shard:
    """A part of a dataset that a worker reads by itself: one data file, or some row groups of one."""

    ref: str
    path: str
    row_groups: tuple[int, ...] | None = None  # a parquet file's row groups; None: the whole file
    first: bool = False  # the dataset's first shard: checks that a named text field exists


def data_files(ref: str) -> list[str] | None:
    """The data files of a parquet file, of a folder of data files or of a URL (its parquet files), in
    reading order; None for any other source (read as one stream)."""
    if is_url(ref):
        return parquet_urls(ref)
    path = Path(ref).expanduser()
    if path.is_file() and path.name.lower().endswith(".parquet"):
        return [str(path)]
    if path.is_dir() and not any(
        (path / name).is_file() for name in ("dataset_info.json", "dataset_dict.json")
    ):
        return sorted(
            str(p)
            for p in path.rglob("*")
            if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
            and not p.name.upper().startswith(METADATA_FILES)
        )
    return None


def plan_shards(ref: str) -> list[Shard] | None:
    """The dataset's shards in reading order, or None when it is read as one stream (see the module)."""
    files = data_files(ref)
    if files is None:
        return None
    shards = [shard for file in files for shard in _file_shards(ref, file)]
    if len(shards) < 2:
        return None
    return [Shard(s.ref, s.path, s.row_groups, first=k == 0) for k, s in enumerate(shards)]


def _file_shards(ref: str, path: str) -> list[Shard]:
    """A data file's shards: groups of its row groups when it is a readable parquet file, else itself."""
    if not path.lower().endswith(".parquet"):
        return [Shard(ref, path)]
    try:
        meta = open_parquet(path).metadata
    except Exception:  # unreadable: the worker that reads it says why
        return [Shard(ref, path)]
    groups: list[list[int]] = [[]]
    rows = 0
    for group in range(meta.num_row_groups):
        if rows >= SHARD_ROWS:
            groups.append([])
            rows = 0
        groups[-1].append(group)
        rows += meta.row_group(group).num_rows
    if len(groups) == 1:
        return [Shard(ref, path)]
    return [Shard(ref, path, tuple(g)) for g in groups]


def shard_texts(shard: Shard, scanned: Scanned, options: ReadOptions) -> Iterator[str]:
    """One shard's texts, counted into `scanned` (rows named by file and row in messages)."""
    rows = _shard_rows(shard, scanned.log)
    named = options.only_text_field or options.text_field
    if shard.first and named:
        head = [row for _, row in zip(range(20), rows, strict=False)]
        try:
            check_text_field(
                head, named, shard.ref, "--only-text-field" if options.only_text_field else "--text-field"
            )
        except DatasetError as error:
            scanned.error = str(error)
            return iter(())
        rows = _chain(head, rows)
    texts = (example_text(row, options.text_field, options.only_text_field) for row in rows)
    return checked_texts(scanned, texts, options, lambda n: f"file {shard.path} row {n}")


def _chain(head: list[Any], rows: Iterator[Any]) -> Iterator[Any]:
    yield from head
    yield from rows


def _shard_rows(shard: Shard, log: ReadLog) -> Iterator[Any]:
    """The rows of a shard: a whole file through the usual reader, or the chosen row groups of a parquet
    file (a broken one is a bad file, named)."""
    if shard.row_groups is None:
        return iter(open_dataset(shard.path, log).rows)
    log.files = 1 if shard.row_groups[0] == 0 else 0  # a file counts once, with its first shard
    return parquet_rows(shard.path, log, shard.row_groups)
