"""A content fingerprint of a model's weights that reads kilobytes, not gigabytes.

It hashes every safetensors file's name, size and JSON header (tensor names, dtypes, shapes, offsets) and
a fixed number of byte ranges spread evenly over the tensor data. Two folders with the same fingerprint hold
the same weights unless they differ only between sampled ranges, which no real fine-tune or merge does.
The same header walk gives the parameter count and dtype without loading any tensor.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from mergeguard.merge.io import read_header

SAMPLES_PER_FILE = 16
SAMPLE_BYTES = 4096
VERSION = "fp1"


@dataclass(frozen=True)
class WeightsInfo:
    """What the headers say: a fingerprint, the parameter count and the dominant dtype."""

    fingerprint: str
    param_count: int
    dtype: str | None


def weight_files(folder: Path) -> list[Path]:
    """The folder's safetensors files, sorted by name (index order does not change the content)."""
    return sorted(Path(folder).glob("*.safetensors"))


def _header(handle: BinaryIO, path: Path) -> tuple[bytes, dict[str, Any]]:
    """The header's raw bytes (length prefix included) and its JSON."""
    raw_len = handle.read(8)
    if len(raw_len) != 8:
        raise ValueError(f"{path} is too short to be a safetensors file")
    (length,) = struct.unpack("<Q", raw_len)
    if length > 100_000_000:
        raise ValueError(f"{path} has an implausible safetensors header length")
    header = handle.read(length)
    return raw_len + header, json.loads(header)


def weights_info(folder: Path) -> WeightsInfo | None:
    """Fingerprint, parameter count and dtype of a local model folder; None when it has no safetensors."""
    files = weight_files(folder)
    if not files:
        return None
    digest = hashlib.sha256(VERSION.encode())
    params = 0
    dtypes: Counter[str] = Counter()

    for path in files:
        read_header(path)  # checked first: a FIFO, a link loop or a malformed header is a one-line error
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with path.open("rb") as handle:
            header_bytes, header = _header(handle, path)
            digest.update(header_bytes)
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                count = 1
                for dim in entry.get("shape", []):
                    count *= int(dim)
                params += count
                dtypes[str(entry.get("dtype"))] += count
            start = len(header_bytes)
            span = max(size - start, 0)
            for i in range(SAMPLES_PER_FILE):
                offset = start + (span * i) // SAMPLES_PER_FILE
                handle.seek(offset)
                digest.update(handle.read(SAMPLE_BYTES))
            handle.seek(max(start, size - SAMPLE_BYTES))
            digest.update(handle.read(SAMPLE_BYTES))
    dtype = dtypes.most_common(1)[0][0] if dtypes else None
    return WeightsInfo(fingerprint=f"{VERSION}:{digest.hexdigest()[:32]}", param_count=params, dtype=dtype)
