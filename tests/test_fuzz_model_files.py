"""Fuzz the merge with malformed model folders (issue 20): a few hundred seeded corruptions of a real tiny
model's safetensors files, headers and shard index, each merged through the CLI in process.

Whatever the corruption, the merge either succeeds (a flipped byte in the tensor data is still a valid
file) or stops with exit 1 and one line `error: ...; <fix>`: never a traceback, never an output or temp
folder left behind, never a changed input.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import struct
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mergekit_configs import weighted_config, write_config
from quiz_setup import quiz_args, quiz_benchmark

from mergeguard.cli import main

SEED = 20
CASES = 400
AUDITED = 20  # 2 cases in 20 (one sharded) also run the audit, which fingerprints the weights first

ODD_VALUES: list[Any] = [None, True, -1, 0, 2**63, 1.5, "x", [], {}, [1], [-1, 2], [2, 1], [0, 2**64], "F32"]
DTYPES = ["F32", "F16", "BF16", "I32", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "U64", "C64", "f32", "", "F33"]
FILE_NAMES = ["../x.safetensors", "/etc/passwd", "", ".", "missing.safetensors", "config.json", "a/../../b"]


def _split(raw: bytes) -> tuple[dict[str, Any], bytes]:
    (size,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + size]), raw[8 + size :]


def _join(header: Any, data: bytes) -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def flip_bytes(rng: random.Random, raw: bytes) -> bytes:
    """A few bytes flipped, half the time inside the header."""
    out = bytearray(raw)
    header_end = 8 + struct.unpack("<Q", raw[:8])[0]
    for _ in range(rng.randint(1, 8)):
        where = rng.randrange(header_end) if rng.random() < 0.5 else rng.randrange(len(out))
        out[where] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(rng: random.Random, raw: bytes) -> bytes:
    return raw[: rng.randrange(len(raw))]


def append(rng: random.Random, raw: bytes) -> bytes:
    return raw + rng.randbytes(rng.randint(1, 64))


def header_length(rng: random.Random, raw: bytes) -> bytes:
    (size,) = struct.unpack("<Q", raw[:8])
    new = rng.choice([0, 1, size - 1, size + 1, size + 8, len(raw), 2**31, 2**64 - 1])
    return struct.pack("<Q", new) + raw[8:]


def mutate_entry(rng: random.Random, raw: bytes) -> bytes:
    """One tensor's entry changed: dtype, shape, offsets, a key removed or added, or not an object."""
    header, data = _split(raw)
    name = rng.choice([n for n in header if n != "__metadata__"])
    entry = header[name]
    kind = rng.randrange(7)
    if kind == 0:
        entry["dtype"] = rng.choice(DTYPES + ODD_VALUES)
    elif kind == 1:
        entry["shape"] = rng.choice([[], [0], [1, 1], entry["shape"][::-1], [s * 2 for s in entry["shape"]]])
    elif kind == 2:
        begin, end = entry["data_offsets"]
        entry["data_offsets"] = rng.choice(
            [[end, begin], [begin, end + 1], [begin - 1, end], [0, end - begin]]
        )
    elif kind == 3:
        del entry[rng.choice(list(entry))]
    elif kind == 4:
        entry[rng.choice(["dtype", "shape", "data_offsets"])] = rng.choice(ODD_VALUES)
    elif kind == 5:
        header[name] = rng.choice(ODD_VALUES)
    else:
        header[rng.choice(["__metadata__", name + "x", ""])] = rng.choice(ODD_VALUES + [{"a": "b"}])
    return _join(header, data)


def mutate_json(rng: random.Random, raw: bytes) -> bytes:
    """The header replaced by other JSON: a list, a scalar, nested deep, a key twice, cut short."""
    header, data = _split(raw)
    text = json.dumps(header)
    blob = rng.choice(
        [
            b"[1, 2]",
            b"42",
            b"{}",
            b"[" * 5000 + b"]" * 5000,
            b'{"a": ' * 3000 + b"1" + b"}" * 3000,
            (text[:-1] + ", " + text[1:]).encode(),  # every key twice
            text[: rng.randrange(1, len(text))].encode(),
            text.encode() + b"\xff",
            b"{" + bytes(rng.randrange(256) for _ in range(32)),
        ]
    )
    return struct.pack("<Q", len(blob)) + blob + data


WEIGHT_MUTATIONS: list[Callable[[random.Random, bytes], bytes]] = [
    flip_bytes,
    truncate,
    append,
    header_length,
    mutate_entry,
    mutate_entry,
    mutate_json,
]


def mutate_index(rng: random.Random, raw: bytes) -> bytes:
    """The shard index broken: entries pointing elsewhere, weight_map of another type, cut short."""
    index = json.loads(raw)
    weight_map = index["weight_map"]
    kind = rng.randrange(5)
    if kind == 0:
        weight_map[rng.choice(list(weight_map))] = rng.choice(FILE_NAMES + sorted(set(weight_map.values())))
    elif kind == 1:
        weight_map[rng.choice(list(weight_map))] = rng.choice(ODD_VALUES)
    elif kind == 2:
        index["weight_map"] = rng.choice(ODD_VALUES)
    elif kind == 3:
        del weight_map[rng.choice(list(weight_map))]
    else:
        return raw[: rng.randrange(len(raw))]
    return json.dumps(index).encode()


def _hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def test_malformed_model_folders_never_crash(models, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = models.base("llama", seed=0)
    single = models.finetune(base, seed=1)
    sharded = models.base("llama", seed=0, sharded=True)
    before = {p: _hash(p) for p in (base, single, sharded)}
    bench = tmp_path / "bench"
    _, spec = quiz_benchmark(bench, 5)
    audit = quiz_args(spec, bench / "cache")
    rng = random.Random(SEED)
    outcomes: Counter[str] = Counter()
    for case in range(CASES):
        folder = tmp_path / f"case{case}"
        source = sharded if case % 4 == 3 else single  # a sharded model: its index or one shard broken
        shutil.copytree(source, folder)
        if source is sharded and rng.random() < 0.5:
            target, how = folder / "model.safetensors.index.json", "index"
            target.write_bytes(mutate_index(rng, target.read_bytes()))
        else:
            target = rng.choice(sorted(folder.glob("*.safetensors")))
            mutation = rng.choice(WEIGHT_MUTATIONS)
            how = mutation.__name__
            target.write_bytes(mutation(rng, target.read_bytes()))
        what = f"case {case} ({how} of {target.name})"
        reference = sharded if source is sharded else base
        config = write_config(tmp_path / "merge.yml", weighted_config([reference, folder]))
        out = tmp_path / "out"
        mutated = _hash(folder)
        try:
            extra = audit if case % AUDITED in (0, 7) else ["--no-audit"]
            code = main(["merge", str(config), str(out), "--quiet", "--random-seed", "0", *extra])
        except Exception:  # noqa: BLE001 - what the fuzz is for
            pytest.fail(f"{what} raised:\n{traceback.format_exc()}")
        captured = capsys.readouterr()
        assert "Traceback" not in captured.out + captured.err, what
        assert code in (0, 2), f"{what}: exit {code}: {captured.err}"
        if code == 2:
            lines = captured.err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: ") and "; " in lines[0], f"{what}: {lines}"
            assert not out.exists(), what
        assert _hash(folder) == mutated, f"{what} changed its input"
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
        assert not leftovers, f"{what} left {leftovers}"
        outcomes["merged" if code == 0 else "refused"] += 1
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(folder)
    assert {p: _hash(p) for p in before} == before
    assert outcomes["refused"] > CASES // 2  # most corruptions must be caught, not merged
