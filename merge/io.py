"""Reading input weights lazily and writing output shards as tensors finish.

The reader memory-maps safetensors files and hands out one tensor at a time; the writer appends each
finished tensor to the current shard file and starts a new shard when `shard_size` would be exceeded, so
peak memory is a few tensors, never a shard or a model.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import threading
from pathlib import Path
from typing import Any

from mergeguard.errors import MergeguardError

SAFE_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"
_DTYPES = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}

DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
"""safetensors dtype codes (`F16`) -> torch dtype names (`float16`)."""


class _LazyDtypes(dict):  # torch is imported only when a tensor is read
    def __missing__(self, key: str) -> Any:
        import torch

        value = getattr(torch, DTYPE_NAMES[key])
        self[key] = value
        return value


_TORCH_DTYPES = _LazyDtypes()


def parse_size(value: str | int) -> int:
    """`5B` -> 5e9 (mergekit's meaning: B is billions), `500M`, `2GB`, `1000` -> bytes."""
    if isinstance(value, int):
        return value
    text = str(value).strip().upper().replace("_", "")
    units = {"GB": 10**9, "MB": 10**6, "KB": 10**3, "GIB": 2**30, "MIB": 2**20, "KIB": 2**10}
    units |= {"B": 10**9, "M": 10**6, "K": 10**3, "G": 10**9}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            number = text[: -len(unit)].strip()
            try:
                return int(float(number) * units[unit])
            except ValueError:
                break
    try:
        return int(float(text))
    except ValueError:
        raise MergeguardError(
            f"shard size `{value}` is not a size", hint="write e.g. 5B, 2GB or 500M"
        ) from None


_MAP_MIN = 1 << 20
"""Tensors from this size on are memory-mapped rather than read."""


def _mapped(fd: int, offset: int, nbytes: int) -> memoryview:
    """One tensor's bytes as a private, pre-faulted mapping of its place in the file.

    No copy and no zero-filled pages (cheaper than pread into fresh memory); MAP_POPULATE does the page
    faults here, in the reader thread, not in the compute. Private: a method writing into its input gets
    its own copy of the page. The mapping is one tensor's and goes when the tensor does, so mapped pages
    count in the RSS only while that tensor is in flight.
    """
    skew = offset % mmap.ALLOCATIONGRANULARITY
    try:
        region = mmap.mmap(
            fd,
            nbytes + skew,
            flags=mmap.MAP_PRIVATE | mmap.MAP_POPULATE,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
            offset=offset - skew,
        )
    except (OSError, ValueError) as error:
        raise MergeguardError(f"cannot map {nbytes} bytes at {offset}: {error}") from error
    return memoryview(region)[skew : skew + nbytes]


def _read(fd: int, offset: int, nbytes: int) -> memoryview:
    """A small tensor's bytes, read with pread into fresh (writable) memory."""
    buffer = memoryview(bytearray(nbytes))
    done = 0
    while done < nbytes:
        got = os.preadv(fd, [buffer[done:]], offset + done)
        if got <= 0:
            raise MergeguardError("a weights file is truncated", hint="download the model again")
        done += got
    return buffer


class ModelReader:
    """Lazy access to one model's tensors, from one safetensors file, an index of shards, or (opt-in) .bin."""

    def __init__(self, folder: Path, *, allow_pickle: bool = False) -> None:
        self.folder = folder
        self._where: dict[str, Path] = {}
        self._handles: dict[Path, int] = {}
        self._headers: dict[Path, tuple[int, dict[str, Any]]] = {}
        self._pickled: dict[Path, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.pickled = False
        index = folder / SAFE_INDEX
        files = sorted(folder.glob("*.safetensors"))
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            self._where = {name: folder / file for name, file in weight_map.items()}
        elif files:
            for path in files:
                for name in self._header(path)[1]:
                    self._where[name] = path
        else:
            bins = sorted(folder.glob("*.bin"))
            if not bins:
                raise MergeguardError(
                    f"no weights (*.safetensors) in {folder}", hint="check the model folder"
                )
            if not allow_pickle:
                raise MergeguardError(
                    f"{folder} has only pickled .bin weights, which can run code when loaded",
                    hint="convert them to safetensors, or pass --allow-pickle if you trust the source",
                )
            self.pickled = True
            pickle_index = folder / PICKLE_INDEX
            if pickle_index.is_file():
                weight_map = json.loads(pickle_index.read_text(encoding="utf-8"))["weight_map"]
                self._where = {name: folder / file for name, file in weight_map.items()}
            else:
                for path in bins:
                    for name in self._load_pickle(path):
                        self._where[name] = path

    def names(self) -> list[str]:
        """Tensor names in file order (the index's order for shards)."""
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def _load_pickle(self, path: Path) -> dict[str, Any]:
        if path not in self._pickled:
            import torch

            self._pickled[path] = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return self._pickled[path]

    def _header(self, path: Path) -> tuple[int, dict[str, Any]]:
        if path not in self._headers:
            self._headers[path] = read_header(path)
        return self._headers[path]

    def shape(self, name: str) -> tuple[int, ...]:
        if self.pickled:
            return tuple(self._load_pickle(self._where[name])[name].shape)
        return tuple(self._header(self._where[name])[1][name]["shape"])

    def nbytes(self, name: str) -> int:
        """Stored size of one tensor in bytes."""
        if self.pickled:
            tensor = self._load_pickle(self._where[name])[name]
            return tensor.numel() * tensor.element_size()
        begin, end = self._header(self._where[name])[1][name]["data_offsets"]
        return end - begin

    def dtype(self, name: str) -> str:
        """The stored dtype's torch name (`float16`, ...)."""
        if self.pickled:
            return str(self._load_pickle(self._where[name])[name].dtype).replace("torch.", "")
        return DTYPE_NAMES[self._header(self._where[name])[1][name]["dtype"]]

    def locate(self, name: str) -> tuple[Path, int, int]:
        """(file, byte offset, byte length) of a stored safetensors tensor."""
        if name not in self._where:
            raise MergeguardError(
                f"tensor {name} is missing from {self.folder}", hint="check the model's files"
            )
        path = self._where[name]
        start, header = self._header(path)
        begin, end = header[name]["data_offsets"]
        return path, start + begin, end - begin

    def span(self, name: str) -> tuple[int, int, int]:
        """(open file descriptor, byte offset, byte length) of a stored tensor, for positional reads."""
        path, offset, nbytes = self.locate(name)
        with self._lock:  # kernels in two threads ask at once
            if path not in self._handles:
                self._handles[path] = os.open(path, os.O_RDONLY)
            fd = self._handles[path]
        if offset + nbytes > os.fstat(fd).st_size:
            raise MergeguardError(f"{path} is truncated at tensor {name}", hint="download the model again")
        return fd, offset, nbytes

    def raw(self, name: str) -> memoryview:
        """One safetensors tensor's bytes: big ones memory-mapped one by one (`_mapped`), small ones read.

        Never one mapping of a whole file: its pages would stay resident in the process (and count in its
        RSS) until unmapped, whereas a tensor's own mapping goes with the tensor.
        """
        fd, offset, nbytes = self.span(name)  # checked: a mapping past the end of the file would crash
        if nbytes >= _MAP_MIN and hasattr(mmap, "MAP_POPULATE"):
            return _mapped(fd, offset, nbytes)
        return _read(fd, offset, nbytes)

    def get(self, name: str) -> Any:
        """One tensor as a torch tensor (pickled weights too)."""
        import torch

        if self.pickled:
            if name not in self._where:
                raise MergeguardError(
                    f"tensor {name} is missing from {self.folder}", hint="check the model's files"
                )
            return self._load_pickle(self._where[name])[name]
        data = self.raw(name)
        dtype = _TORCH_DTYPES[self._header(self._where[name])[1][name]["dtype"]]
        if not data.nbytes:
            return torch.empty(self.shape(name), dtype=dtype)
        return torch.frombuffer(data, dtype=dtype).reshape(self.shape(name))

    def close(self) -> None:
        for fd in self._handles.values():
            os.close(fd)
        self._handles.clear()
        self._pickled.clear()


def read_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(data start, {name: entry}) from a safetensors header, names in data order, without reading data."""
    with path.open("rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    header.pop("__metadata__", None)
    ordered = dict(sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]))
    return 8 + size, ordered


class ShardWriter:
    """Writes tensors into numbered safetensors shards as they arrive, then the index.

    Each shard is written with a header reserved up front from the planned sizes, so a tensor's bytes go
    straight to disk when it is done. `plan` is the ordered list of (name, dtype, shape, nbytes).
    """

    def __init__(
        self, out_dir: Path, plan: list[tuple[str, str, tuple[int, ...], int]], shard_size: int
    ) -> None:
        self.out_dir = out_dir
        self.shards: list[list[tuple[str, str, tuple[int, ...], int]]] = []
        current: list[tuple[str, str, tuple[int, ...], int]] = []
        size = 0
        for entry in plan:
            if current and size + entry[3] > shard_size:
                self.shards.append(current)
                current, size = [], 0
            current.append(entry)
            size += entry[3]
        if current:
            self.shards.append(current)
        total = len(self.shards)
        self.files = (
            ["model.safetensors"]
            if total == 1
            else [f"model-{i + 1:05d}-of-{total:05d}.safetensors" for i in range(total)]
        )
        self._shard_of = {e[0]: i for i, shard in enumerate(self.shards) for e in shard}
        self._offset: dict[str, int] = {}
        self._handles: dict[int, Any] = {}
        self._left = [len(s) for s in self.shards]
        self._lock = threading.Lock()
        self.bytes_written = 0

    def _open(self, shard: int) -> Any:
        with self._lock:
            if shard not in self._handles:
                self._handles[shard] = self._create(shard)
            return self._handles[shard]

    def _create(self, shard: int) -> Any:
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, dtype, shape, nbytes in self.shards[shard]:
            header[name] = {
                "dtype": _DTYPES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        handle = (self.out_dir / self.files[shard]).open("wb")
        handle.write(struct.pack("<Q", len(blob)) + blob)
        start = 8 + len(blob)
        for name, *_ in self.shards[shard]:
            self._offset[name] = start + header[name]["data_offsets"][0]
        handle.truncate(start + offset)
        handle.flush()
        return handle

    def target(self, name: str) -> tuple[Path, int]:
        """(shard file, byte offset) where `name`'s bytes go, for a producer writing them itself."""
        shard = self._shard_of[name]
        self._open(shard)
        return self.out_dir / self.files[shard], self._offset[name]

    def mark_written(self, name: str, nbytes: int) -> None:
        """Record that a producer wrote `name` (see `target`)."""
        self._done(self._shard_of[name], nbytes)

    def write(self, name: str, data: memoryview | bytes) -> None:
        """Write one finished tensor's raw bytes into its place in its shard."""
        shard = self._shard_of[name]
        handle = self._open(shard)
        handle.seek(self._offset[name])
        handle.write(data)
        self._done(shard, memoryview(data).nbytes)

    def copy(self, name: str, source: Path, offset: int, nbytes: int) -> None:
        """Write one tensor by copying `nbytes` at `offset` of `source` file to file (an unchanged tensor).

        `os.copy_file_range` copies inside the kernel (or shares the blocks, on filesystems that can), so
        the bytes never pass through this process.
        """
        shard = self._shard_of[name]
        handle = self._open(shard)
        handle.flush()
        target = self._offset[name]
        with source.open("rb") as src:
            done = 0
            while done < nbytes:
                try:
                    got = os.copy_file_range(
                        src.fileno(), handle.fileno(), nbytes - done, offset + done, target + done
                    )
                except (AttributeError, OSError):  # no copy_file_range here (or across these filesystems)
                    src.seek(offset + done)
                    handle.seek(target + done)
                    got = handle.write(src.read(nbytes - done))
                    handle.flush()
                if got <= 0:
                    raise MergeguardError(f"{source} is truncated at tensor {name}", hint="download it again")
                done += got
        self._done(shard, nbytes)

    def _done(self, shard: int, nbytes: int) -> None:
        self.bytes_written += nbytes
        self._left[shard] -= 1
        if self._left[shard] == 0:
            self._handles.pop(shard).close()

    def finish(self) -> None:
        """Close open shards and write the index when there is more than one shard."""
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        if any(self._left):
            missing = [e[0] for s, shard in enumerate(self.shards) if self._left[s] for e in shard][:3]
            raise MergeguardError(f"merge finished without writing {', '.join(missing)}")
        if len(self.files) > 1:
            total = sum(e[3] for shard in self.shards for e in shard)
            index = {
                "metadata": {"total_size": total},
                "weight_map": {e[0]: self.files[i] for i, shard in enumerate(self.shards) for e in shard},
            }
            (self.out_dir / SAFE_INDEX).write_text(json.dumps(index, indent=2), encoding="utf-8")
