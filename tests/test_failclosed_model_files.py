"""Fail closed on model files (issue 20, items 6, 7, 8 and 10): every malformed, foreign or non-regular file
in an input model is refused with one line and exit 1, before anything is written, and no input changes.

Each test copies a real tiny model, breaks it the way the issue's hostile inputs did, and runs the merge
through the CLI in process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mergekit_configs import weighted_config, write_config

from mergeguard.cli import main

NORM = "model.norm.weight"


@pytest.fixture
def pair(models, tmp_path: Path) -> tuple[Path, Path]:
    """(base, a private copy of a fine-tune of it) that a test may break."""
    base = models.base("llama", seed=0)
    ft = tmp_path / "ft"
    shutil.copytree(models.finetune(base, seed=1), ft)
    return base, ft


@pytest.fixture
def sharded(models, tmp_path: Path) -> tuple[Path, Path]:
    """(sharded base, a private copy of it with its index) that a test may break."""
    base = models.base("llama", seed=0, sharded=True)
    copy = tmp_path / "sharded"
    shutil.copytree(base, copy)
    return base, copy


def _hashes(*folders: Path) -> dict[str, str]:
    """sha256 of every regular file under `folders` (links not followed: a link's target is not input)."""
    found = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _merge(tmp_path: Path, a: Path, b: Path, *extra: str, method: str = "linear") -> int:
    config = write_config(tmp_path / "merge.yml", weighted_config([a, b], method=method))
    return main(["merge", str(config), str(tmp_path / "out"), "--no-audit", "--quiet", *extra])


def refused(tmp_path: Path, capsys: Any, a: Path, b: Path, expected: str, *extra: str) -> str:
    """Merge a and b, expecting exit 2 with one line `error: ...expected...; <fix>`, no output, no
    temp folder and unchanged inputs. Returns the line."""
    before = _hashes(a, b)
    code = _merge(tmp_path, a, b, *extra)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "; " in lines[0], captured.err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in captured.out + captured.err
    assert not (tmp_path / "out").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert _hashes(a, b) == before
    return lines[0]


# --- safetensors files ---------------------------------------------------------------------------------


def _parts(path: Path) -> tuple[dict[str, Any], bytes]:
    """A valid safetensors file as (header, data)."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + size]), raw[8 + size :]


def _pack(header: dict[str, Any] | bytes, data: bytes) -> bytes:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def _by_offset(header: dict[str, Any]) -> list[str]:
    return sorted((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"][0])


def _reversed_offsets(header: dict[str, Any], data: bytes) -> bytes:
    header[NORM]["data_offsets"].reverse()
    return _pack(header, data)


def _overlapping_offsets(header: dict[str, Any], data: bytes) -> bytes:
    first, second = _by_offset(header)[:2]
    size = header[second]["data_offsets"][1] - header[second]["data_offsets"][0]
    header[second]["data_offsets"] = [0, size]  # shares bytes with `first`
    return _pack(header, data)


def _out_of_bounds(header: dict[str, Any], data: bytes) -> bytes:
    """The last tensor made twice as long (shape and offsets agreeing): its end lies past the file's."""
    entry = header[_by_offset(header)[-1]]
    begin, end = entry["data_offsets"]
    entry["shape"][0] *= 2
    entry["data_offsets"] = [begin, end + (end - begin)]
    return _pack(header, data)


def _shape_mismatch(header: dict[str, Any], data: bytes) -> bytes:
    header[NORM]["shape"] = [header[NORM]["shape"][0] // 2]
    return _pack(header, data)


def _f8(header: dict[str, Any], data: bytes) -> bytes:
    header[NORM]["dtype"] = "F8_E4M3"
    return _pack(header, data)


def _duplicate_key(header: dict[str, Any], data: bytes) -> bytes:
    text = json.dumps(header)[:-1] + f', "{NORM}": {json.dumps(header[NORM])}}}'
    return _pack(text.encode(), data)


def _metadata_not_strings(header: dict[str, Any], data: bytes) -> bytes:
    header["__metadata__"] = {"format": ["pt"]}
    return _pack(header, data)


BROKEN_FILES = {
    "empty": (lambda h, d: b"", "too short for a header"),
    "huge header length": (lambda h, d: struct.pack("<Q", 2**62) + b"{}", "does not fit"),
    "header longer than file": (lambda h, d: struct.pack("<Q", 10_000) + b'{"a": 1}', "does not fit"),
    "garbage": (lambda h, d: bytes(range(256)) * 8, "does not fit"),
    "garbage header": (lambda h, d: _pack(b"\x89PNG\r\n\x1a\n" * 4, d), "header is not a JSON object"),
    "json list": (lambda h, d: _pack(b"[1, 2]", d), "header is not a JSON object"),
    "invalid utf-8": (lambda h, d: _pack(b'{"\xff\xfe": 1}', d), "not UTF-8"),
    "not json": (lambda h, d: _pack(b"{not json", d), "not valid JSON"),
    "F8_E4M3": (_f8, "dtype F8_E4M3, which mergeguard does not merge"),
    "reversed offsets": (_reversed_offsets, "are not [begin, end]"),
    "overlapping offsets": (_overlapping_offsets, "overlap or leave a gap"),
    "offsets out of bounds": (_out_of_bounds, "truncated"),
    "offsets not matching shape": (_shape_mismatch, "do not match its shape and dtype"),
    "duplicate key": (_duplicate_key, f"its header is JSON with the key '{NORM}' twice"),
    "truncated data": (lambda h, d: _pack(h, d[:-100]), "truncated"),
    "trailing bytes": (lambda h, d: _pack(h, d + b"\0" * 64), "stray bytes"),
    "metadata not strings": (_metadata_not_strings, "__metadata__ is not an object of strings"),
}


@pytest.mark.parametrize("case", list(BROKEN_FILES))
def test_malformed_safetensors_is_refused(pair, tmp_path, capsys, case: str) -> None:
    base, ft = pair
    make, expected = BROKEN_FILES[case]
    header, data = _parts(ft / "model.safetensors")
    (ft / "model.safetensors").write_bytes(make(header, data))
    line = refused(tmp_path, capsys, base, ft, expected)
    assert str(ft / "model.safetensors") in line


def test_the_safetensors_library_agrees_with_each_refusal(pair) -> None:
    """Every file refused above is one the safetensors library refuses too, but for a key given twice,
    where it keeps the last silently: mergeguard is stricter there by design."""
    from safetensors import safe_open

    _, ft = pair
    header, data = _parts(ft / "model.safetensors")
    for case, (make, _) in BROKEN_FILES.items():
        if case == "duplicate key":
            continue
        path = ft / f"{case.replace(' ', '_')}.bin"
        path.write_bytes(make(json.loads(json.dumps(header)), data))
        with pytest.raises(Exception), safe_open(str(path), framework="pt") as handle:  # noqa: B017
            for name in handle.keys():  # noqa: SIM118
                handle.get_tensor(name)
        path.unlink()


def test_check_refuses_a_malformed_model_in_one_line(pair, capsys) -> None:
    _, ft = pair
    (ft / "model.safetensors").write_bytes(_pack(b"[1, 2]", b""))
    code = main(["check", str(ft), "--against", str(ft)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "header is not a JSON object" in err


# --- integer tensors -----------------------------------------------------------------------------------


def _with_tensor(folder: Path, name: str, tensor: Any) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    tensors[name] = tensor
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_an_integer_tensor_beside_float_ones_is_refused(pair, tmp_path, capsys) -> None:
    import torch

    base, ft = pair
    _with_tensor(ft, NORM, torch.arange(64, dtype=torch.int32))
    line = refused(tmp_path, capsys, base, ft, f"tensor {NORM} is stored as integers in some inputs")
    assert "int32" in line and "float32" in line


def test_integer_buffers_are_copied_when_equal_and_refused_when_not(pair, tmp_path, capsys) -> None:
    """mergekit's rule (copy_non_floating_buffer): a non-float tensor is copied verbatim when every input
    agrees, never averaged; inputs that differ are an error."""
    import torch
    from safetensors.torch import load_file

    _, ft = pair
    other = tmp_path / "other"
    shutil.copytree(ft, other)
    counter = "model.layers.0.self_attn.counter"
    _with_tensor(ft, counter, torch.arange(8, dtype=torch.int32))
    _with_tensor(other, counter, torch.arange(8, dtype=torch.int32))
    assert _merge(tmp_path, ft, other, "--random-seed", "0") == 0  # weights 0.5 + 0.5, normalised
    assert torch.equal(load_file(tmp_path / "out" / "model.safetensors")[counter], torch.arange(8).int())
    shutil.rmtree(tmp_path / "out")
    _with_tensor(other, counter, torch.arange(8, dtype=torch.int32) + 1)
    refused(tmp_path, capsys, ft, other, f"non-float tensor {counter} (int32) differs between inputs")


# --- shard indexes -------------------------------------------------------------------------------------


def _index(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "model.safetensors.index.json").read_text())


def _write_index(folder: Path, index: Any) -> None:
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def _other_model(tmp_path: Path, models) -> Path:
    other = tmp_path / "other"
    shutil.copytree(models.base("llama", seed=7), other)
    return other


@pytest.mark.parametrize(
    "entry", ["../other/model.safetensors", "../../other/model.safetensors", "/etc/passwd"]
)
def test_index_entries_outside_the_model_folder_are_refused(sharded, models, tmp_path, capsys, entry) -> None:
    base, copy = sharded
    _other_model(tmp_path, models)
    index = _index(copy)
    index["weight_map"][next(iter(index["weight_map"]))] = entry
    _write_index(copy, index)
    refused(tmp_path, capsys, base, copy, f"names {entry!r}, a file outside the model folder")


def test_an_index_entry_linking_outside_the_folder_is_refused(sharded, models, tmp_path, capsys) -> None:
    base, copy = sharded
    other = _other_model(tmp_path, models)
    (copy / "escape.safetensors").symlink_to(other / "model.safetensors")
    index = _index(copy)
    index["weight_map"][next(iter(index["weight_map"]))] = "escape.safetensors"
    _write_index(copy, index)
    refused(tmp_path, capsys, base, copy, "outside the model folder")


def test_a_weights_file_linking_outside_the_folder_is_refused(pair, models, tmp_path, capsys) -> None:
    base, ft = pair
    other = _other_model(tmp_path, models)
    (ft / "model.safetensors").unlink()
    (ft / "model.safetensors").symlink_to(other / "model.safetensors")
    refused(tmp_path, capsys, base, ft, "outside the model folder")


def test_a_hub_cache_snapshot_whose_files_link_to_its_blobs_still_merges(pair, tmp_path) -> None:
    """The Hugging Face cache keeps files in `models--org--name/blobs/` and links them from
    `snapshots/<rev>/`: links inside the repo's cache folder are the model's own files."""
    base, ft = pair
    repo = tmp_path / "hub" / "models--org--ft"
    snapshot = repo / "snapshots" / "0123abc"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, path in enumerate(sorted(ft.iterdir())):
        blob = repo / "blobs" / f"blob{i}"
        shutil.copy2(path, blob)
        (snapshot / path.name).symlink_to(Path("../../blobs") / blob.name)
    assert _merge(tmp_path, base, snapshot) == 0


BROKEN_INDEXES = {
    "not json": (b"{weight_map", "is not valid JSON"),
    "invalid utf-8": (b'{"weight_map": "\xff"}', "is not UTF-8"),
    "a list": (b"[1, 2]", "has no `weight_map` object"),
    "no weight_map": (b'{"metadata": {}}', "has no `weight_map` object"),
    "weight_map a list": (b'{"weight_map": ["model-00001-of-00012.safetensors"]}', "has no `weight_map`"),
    "entry not a string": (b'{"weight_map": {"model.norm.weight": 3}}', "is not a file name"),
    "duplicate key": (
        b'{"weight_map": {"model.norm.weight": "a.safetensors", "model.norm.weight": "b.safetensors"}}',
        "is JSON with the key 'model.norm.weight' twice",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_INDEXES))
def test_broken_shard_index_is_refused(sharded, tmp_path, capsys, case: str) -> None:
    base, copy = sharded
    content, expected = BROKEN_INDEXES[case]
    (copy / "model.safetensors.index.json").write_bytes(content)
    refused(tmp_path, capsys, base, copy, expected)


def test_an_index_naming_the_wrong_file_for_a_tensor_is_refused(sharded, tmp_path, capsys) -> None:
    base, copy = sharded
    index = _index(copy)
    names = list(index["weight_map"])
    files = sorted(set(index["weight_map"].values()))
    index["weight_map"][names[0]] = next(f for f in files if f != index["weight_map"][names[0]])
    _write_index(copy, index)
    refused(tmp_path, capsys, base, copy, f"puts tensor {names[0]} in")


def test_a_tensor_in_two_weight_files_is_refused(pair, tmp_path, capsys) -> None:
    base, ft = pair
    shutil.copy2(ft / "model.safetensors", ft / "extra.safetensors")
    refused(tmp_path, capsys, base, ft, "is in both extra.safetensors and model.safetensors")


# --- non-regular files and config.json ----------------------------------------------------------------


def test_a_fifo_as_weights_is_refused_without_blocking(pair, tmp_path) -> None:
    """Run in a child process with a timeout: before the fix this blocked forever (in the audit, too)."""
    base, ft = pair
    (ft / "model.safetensors").unlink()
    os.mkfifo(ft / "model.safetensors")
    config = write_config(tmp_path / "merge.yml", weighted_config([base, ft]))
    env = {**os.environ, "MERGEGUARD_DB": str(tmp_path / "mg.db")}
    from quiz_setup import quiz_args, quiz_benchmark

    _, spec = quiz_benchmark(tmp_path / "bench", 5)
    audit = quiz_args(spec, tmp_path / "cache")
    for extra in (["--no-audit"], audit):  # the audit fingerprints the weights first: it blocked there too
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "mergeguard",
                "merge",
                str(config),
                str(tmp_path / "out"),
                "--quiet",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip() == (
            f"error: {ft / 'model.safetensors'} is not a regular file; replace it with the model's real file"
        )
        assert not (tmp_path / "out").exists()


def test_a_symlink_loop_is_refused(pair, tmp_path, capsys) -> None:
    base, ft = pair
    (ft / "model.safetensors").unlink()
    (ft / "model.safetensors").symlink_to("model.safetensors")
    refused(tmp_path, capsys, base, ft, "model.safetensors")


def test_a_directory_named_like_weights_is_refused(pair, tmp_path, capsys) -> None:
    base, ft = pair
    (ft / "zz.safetensors").mkdir()
    refused(tmp_path, capsys, base, ft, "zz.safetensors is not a regular file")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"[1, 2]", "holds a JSON list, not an object"),
        (b'{"a": "\xff"}', "not UTF-8"),
        (b"{oops", "not valid JSON"),
    ],
)
def test_a_broken_config_json_is_refused(pair, tmp_path, capsys, content: bytes, expected: str) -> None:
    base, ft = pair
    (ft / "config.json").write_bytes(content)
    refused(tmp_path, capsys, base, ft, expected)


def test_a_malformed_lora_adapter_is_refused_before_peft_reads_it(pair, tmp_path, capsys) -> None:
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    base, ft = pair
    model = AutoModelForCausalLM.from_pretrained(base)
    adapter = tmp_path / "adapter"
    peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    (adapter / "adapter_model.safetensors").write_bytes(_pack(b"[1, 2]", b""))
    config = write_config(tmp_path / "merge.yml", weighted_config([f"{base}+{adapter}", ft]))
    code = main(["merge", str(config), str(tmp_path / "out"), "--no-audit", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {adapter / 'adapter_model.safetensors'} is not a valid safetensors file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "ft", "merge.yml"]


def test_a_pickle_index_outside_the_model_folder_is_refused(pair, tmp_path, capsys) -> None:
    """--allow-pickle reads `pytorch_model.bin.index.json`: its entries are confined the same way."""
    import torch
    from safetensors.torch import load_file

    base, ft = pair
    torch.save(load_file(ft / "model.safetensors"), ft / "pytorch_model.bin")
    (ft / "model.safetensors").unlink()
    (ft / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {NORM: "/etc/passwd"}}))
    refused(
        tmp_path, capsys, base, ft, "names '/etc/passwd', a file outside the model folder", "--allow-pickle"
    )
