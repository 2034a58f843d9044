"""Reading input weights lazily and writing output shards as tensors finish.

The reader memory-maps safetensors files and hands out one tensor at a time; the writer appends each
finished tensor to the current shard file and starts a new shard when `shard_size` would be exceeded, so
peak memory is a few tensors, never a shard or a model.

Nothing is read before it is checked (fail closed): only regular files (a FIFO would block), only files
inside the model folder (a shard index entry such as `../../other/model.safetensors` or `/etc/passwd`, or a
link out of the folder, is refused), and safetensors headers validated as the safetensors library does, so
every offset used afterwards lies inside its file. Each problem is a `ModelFileError`: one line and a fix.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import stat
import struct
import threading
from pathlib import Path, PurePosixPath
from typing import Any

from mergeguard.errors import ConfigError, MergeguardError, ModelFileError

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

ITEM_SIZES = {
    "F64": 8,
    "I64": 8,
    "F32": 4,
    "I32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
"""Bytes per element of each dtype mergeguard reads (safetensors' other dtypes, e.g. F8_E4M3, are refused)."""

FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64"})

MAX_HEADER = 100_000_000
"""The largest safetensors header accepted: the safetensors library's own limit (MAX_HEADER_SIZE)."""

MAX_JSON = 64 * 2**20
"""The largest JSON side file (a shard index) read: real ones are kilobytes."""


def open_regular(path: Path) -> int:
    """A read-only descriptor of `path`, refused unless it is a regular file.

    Opened non-blocking and checked with fstat (not stat-then-open), so a FIFO, a device or a socket in
    place of a weights file is refused at once instead of blocking forever or never ending.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as error:
        raise ModelFileError(
            f"cannot open {path} ({error.strerror or error})", hint="check the model folder's files and links"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ModelFileError(f"{path} is not a regular file", hint="replace it with the model's real file")
    return fd


def _pread_all(fd: int, nbytes: int, offset: int) -> bytes:
    """Up to `nbytes` bytes at `offset` (fewer only at the end of the file)."""
    parts, done = [], 0
    while done < nbytes:
        chunk = os.pread(fd, min(nbytes - done, 1 << 26), offset + done)
        if not chunk:
            break
        parts.append(chunk)
        done += len(chunk)
    return b"".join(parts)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object hook: a key given twice is an error, not "the last one wins"."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"JSON with the key {key!r} twice")
        found[key] = value
    return found


def _no_constant(name: str) -> Any:
    raise ValueError(f"not valid JSON ({name} is not a JSON value)")


def parse_json(data: bytes) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity. Raises ValueError with a short reason."""
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except UnicodeDecodeError as error:
        raise ValueError(f"not UTF-8 text (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise ValueError(
            f"not valid JSON ({error.msg} at line {error.lineno} column {error.colno})"
        ) from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def read_json(path: Path, *, hint: str = "fix or replace the file") -> Any:
    """A JSON side file of a model (shard index), read strictly and bounded; every problem is one line."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size > MAX_JSON:
            raise ModelFileError(f"{path} is {size} bytes, too large for a JSON side file", hint=hint)
        data = _pread_all(fd, size, 0)
    finally:
        os.close(fd)
    try:
        return parse_json(data)
    except ValueError as error:
        raise ModelFileError(f"{path} is {error}", hint=hint) from None


def weights_root(folder: Path) -> Path:
    """The folder a model's weight files must resolve into: the model folder itself, or, for a Hugging Face
    cache snapshot (`models--org--name/snapshots/<rev>`, whose files link to `../../blobs/`), its repo folder.
    """
    folder = folder.resolve()
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent
    return folder


def confined(folder: Path, name: str, root: Path, source: Path) -> Path:
    """`folder/name`, refused when `name` (a shard index entry or a file found in the folder) is absolute,
    climbs out with `..`, or is a link that resolves outside `root` (another model, /etc/passwd)."""
    hint = "keep the model's weight files inside its folder (copy them there rather than linking)"
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not name or name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", name):
        raise ModelFileError(f"{source} names {name!r}, a file outside the model folder", hint=hint)
    path = folder / name
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as error:  # a symlink loop
        raise ModelFileError(
            f"cannot resolve {path} ({error})", hint="check the model folder's links"
        ) from None
    if not resolved.is_relative_to(root):
        raise ModelFileError(f"{path} links to {resolved}, outside the model folder", hint=hint)
    return path


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
        bins = sorted(folder.glob("*.bin"))
        if os.path.lexists(folder / SAFE_INDEX) or any(folder.glob("*.safetensors")) or not bins:
            self._where, self._headers = tensor_files(folder)
            if not self._where:
                raise MergeguardError(
                    f"no weights (*.safetensors) in {folder}", hint="check the model folder"
                )
            return
        if not allow_pickle:
            raise MergeguardError(
                f"{folder} has only pickled .bin weights, which can run code when loaded",
                hint="convert them to safetensors, or pass --allow-pickle if you trust the source",
            )
        self.pickled = True
        if os.path.lexists(folder / PICKLE_INDEX):
            self._where = read_index(folder, PICKLE_INDEX)
        else:
            for path in bins:
                path = confined(folder, path.name, weights_root(folder), folder)
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

            os.close(open_regular(path))  # a FIFO would block torch.load
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
                self._handles[path] = open_regular(path)
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
    """(data start, {name: entry}) from a safetensors header, names in data order, without reading data.

    Checked as the safetensors library checks it, so that no malformed file is read past: the header's
    length within the file and its limit, strict JSON (one object, no key twice), known dtypes, shapes, and
    `data_offsets` that tile the data exactly (in order, no gaps or overlaps, each tensor's span its shape
    times its dtype's size, ending at the end of the file).
    """
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        prefix = _pread_all(fd, 8, 0)
        if len(prefix) < 8:
            raise _invalid(path, f"{size} bytes, too short for a header")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER or 8 + length > size:
            raise _invalid(path, f"its header length {length} does not fit its {size} bytes")
        raw = _pread_all(fd, length, 8)
    finally:
        os.close(fd)
    if not raw.startswith(b"{"):
        raise _invalid(path, "its header is not a JSON object")
    try:
        header = parse_json(raw)
    except ValueError as error:
        raise _invalid(path, f"its header is {error}") from None
    if not isinstance(header, dict):
        raise _invalid(path, "its header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _invalid(path, "its __metadata__ is not an object of strings")
    for name, entry in header.items():
        _check_entry(path, name, entry)
    ordered = dict(sorted(header.items(), key=lambda kv: tuple(kv[1]["data_offsets"])))
    end = 0
    for name, entry in ordered.items():
        begin, stop = entry["data_offsets"]
        if begin != end:
            raise _invalid(path, f"tensor {name}'s data_offsets {[begin, stop]} overlap or leave a gap")
        if stop - begin != math.prod(entry["shape"]) * ITEM_SIZES[entry["dtype"]]:
            raise _invalid(
                path, f"tensor {name}'s data_offsets {[begin, stop]} do not match its shape and dtype"
            )
        end = stop
    if 8 + length + end > size:
        raise _invalid(path, f"truncated: its tensors need {8 + length + end} bytes, the file has {size}")
    if 8 + length + end < size:
        raise _invalid(path, f"{size - 8 - length - end} stray bytes follow its last tensor")
    return 8 + length, ordered


def _invalid(path: Path, problem: str) -> ModelFileError:
    return ModelFileError(
        f"{path} is not a valid safetensors file: {problem}",
        hint="download the model again, or re-save it with safetensors",
    )


def _check_entry(path: Path, name: str, entry: Any) -> None:
    """One tensor's header entry: {dtype: known code, shape: [ints >= 0], data_offsets: [begin <= end]}."""
    if not isinstance(entry, dict):
        raise _invalid(path, f"tensor {name}'s entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")

    def counts(value: Any, length: int | None = None) -> bool:
        return (
            isinstance(value, list)
            and (length is None or len(value) == length)
            and all(type(v) is int and v >= 0 for v in value)
        )

    if not isinstance(dtype, str):
        raise _invalid(path, f"tensor {name} has no dtype")
    if dtype not in ITEM_SIZES:
        raise ModelFileError(
            f"{path}: tensor {name} has dtype {dtype}, which mergeguard does not merge",
            hint=f"convert the model to one of {', '.join(sorted(ITEM_SIZES))} (e.g. F16, BF16 or F32)",
        )
    if not counts(shape):
        raise _invalid(path, f"tensor {name}'s shape {shape!r} is not a list of sizes")
    if not counts(offsets, 2) or offsets[0] > offsets[1]:
        raise _invalid(path, f"tensor {name}'s data_offsets {offsets!r} are not [begin, end]")


def read_index(folder: Path, name: str = SAFE_INDEX) -> dict[str, Path]:
    """A shard index's `weight_map` as {tensor: file}, every file confined to the model folder."""
    path = folder / name
    hint = "fix the index, or download the model again"
    data = read_json(path, hint=hint)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelFileError(f"{path} has no `weight_map` object of tensor names to files", hint=hint)
    root = weights_root(folder)
    files: dict[str, Path] = {}
    for tensor, file in weight_map.items():
        if not isinstance(file, str):
            raise ModelFileError(f"{path}: `weight_map` entry {tensor!r} is not a file name", hint=hint)
        files[tensor] = confined(folder, file, root, path)
    return files


def tensor_index(folder: Path) -> dict[str, Path]:
    """Map each tensor name of a saved model to its safetensors file, reading (and checking) headers only."""
    return safetensors_weights(Path(folder))[0]


def safetensors_weights(folder: Path) -> tuple[dict[str, Path], dict[Path, tuple[int, dict[str, Any]]]]:
    """({tensor: file}, {file: checked header}) of a safetensors model; none is an error."""
    index, headers = tensor_files(folder)
    if not index:
        raise MergeguardError(
            f"no safetensors weights in {folder}", hint="give a model folder saved with safetensors"
        )
    return index, headers


def tensor_files(folder: Path) -> tuple[dict[str, Path], dict[Path, tuple[int, dict[str, Any]]]]:
    """({tensor: file}, {file: header}) of a safetensors model, every header read and checked.

    From the shard index when there is one (each tensor must be in the file it names), else from the
    folder's `*.safetensors` files (a tensor in two files is an error, not "the last file wins").
    """
    root = weights_root(folder)
    headers: dict[Path, tuple[int, dict[str, Any]]] = {}
    if os.path.lexists(folder / SAFE_INDEX):
        where = read_index(folder)
        for path in dict.fromkeys(where.values()):
            headers[path] = read_header(path)
        for tensor, path in where.items():
            if tensor not in headers[path][1]:
                raise ModelFileError(
                    f"{folder / SAFE_INDEX} puts tensor {tensor} in {path.name}, which does not hold it",
                    hint="fix the index, or download the model again",
                )
        return where, headers
    where = {}
    for path in sorted(folder.glob("*.safetensors")):
        path = confined(folder, path.name, root, folder)
        headers[path] = read_header(path)
        for tensor in headers[path][1]:
            if tensor in where:
                raise ModelFileError(
                    f"tensor {tensor} is in both {where[tensor].name} and {path.name} in {folder}",
                    hint="remove the stray weights file",
                )
            where[tensor] = path
    return where, headers


def check_input_dtypes(name: str, dtypes: dict[str, str]) -> None:
    """Refuse one output tensor whose inputs mix integer (or bool) storage with another dtype.

    An I32 tensor where another model has F32 is a corrupt or foreign file, not something to average;
    mergekit refuses it too (without `dtype:`; with it, mergekit casts it and merges, which we do not).
    """
    if len(set(dtypes.values())) > 1 and not set(dtypes.values()) <= FLOAT_DTYPES:
        listing = ", ".join(f"{ref}: {dtype}" for ref, dtype in dtypes.items())
        raise ConfigError(
            f"tensor {name} is stored as integers in some inputs and not in others ({listing})",
            hint="every input must store it the same way; fix or replace the odd model's weights",
        )


def agreed_buffer(name: str, tensors: list[Any]) -> Any:
    """The one value of a non-float tensor (a buffer such as position ids): copied as is when every input
    holds the same bytes, as mergekit does, and an error when they differ (integers cannot be averaged)."""
    import torch

    first = tensors[0]
    if any(t.dtype != first.dtype or not torch.equal(t, first) for t in tensors[1:]):
        raise ConfigError(
            f"non-float tensor {name} ({str(first.dtype).replace('torch.', '')}) differs between inputs",
            hint="integer tensors are copied only when every input agrees; make them equal before merging",
        )
    return first


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
