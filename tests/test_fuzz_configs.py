"""Fuzzing merge configs (issue 20): hundreds of seeded mutations of valid configs (wrong types, NaN and
infinities, out-of-range numbers, missing and unknown keys, huge lists, deep nesting, alias bombs, binary
garbage, truncated or scrambled text), each run through the parser and `mergeguard merge`.

Every run ends in one of two documented ways: exit 0 with a complete output folder (the mutant is still a
valid config), or exit 1 with one `error: ...; <fix>` line and nothing written. Never a traceback, never a
partial or temporary folder left behind, never a changed input.
"""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from mergeguard.errors import MergeguardError
from mergeguard.merge import load_config

MUTANTS = 480

HOSTILE: list[Any] = [
    math.nan,
    math.inf,
    -math.inf,
    -1,
    -0.5,
    0,
    2,
    1e308,
    10**30,
    "",
    None,
    [],
    {},
    "x" * 5000,
    True,
    [[[1]]],
    {"filter": 1},
    {"value": math.nan},
    [{"filter": "mlp"}],
    "nan",
    "1e999",
    b"\x00\xff",
    "../../etc/passwd",
    [0.5, math.inf],
]
HOSTILE_REFS: list[Any] = ["", None, 5, [], {}, "./no-such-model", "/dev/null", "/etc", "/" + "x" * 5000]
REF_KEYS = {"model", "base_model", "tokenizer_source", "source"}


def _seeds(base: Path, ft: Path) -> list[dict[str, Any]]:
    """Valid configs covering each form and most methods (every one merges as written)."""
    listed, sliced = _model_list_seeds(str(base), str(ft)), _slice_seeds(str(base), str(ft))
    return [*listed[:3], sliced[0], *listed[3:], sliced[1]]  # the order the fuzz corpus was drawn from


def _model_list_seeds(a: str, b: str) -> list[dict[str, Any]]:
    """Configs in the `models:` form."""
    return [
        {
            "models": [
                {"model": a, "parameters": {"weight": 0.3}},
                {"model": b, "parameters": {"weight": 0.7}},
            ],
            "merge_method": "linear",
            "parameters": {"normalize": True},
            "dtype": "float32",
        },
        {
            "models": [{"model": b, "parameters": {"weight": 1.0, "density": [0.3, 0.8]}}],
            "merge_method": "ties",
            "base_model": a,
            "parameters": {"normalize": True, "int8_mask": True},
        },
        {
            "models": [{"model": a}, {"model": b}],
            "merge_method": "slerp",
            "base_model": a,
            "parameters": {"t": [{"filter": "self_attn", "value": [0, 0.5, 1]}, {"value": 0.5}]},
            "chat_template": "chatml",
        },
        {
            "models": [{"model": b, "parameters": {"weight": 0.5, "density": 0.5, "epsilon": 0.1}}],
            "merge_method": "della_linear",
            "base_model": a,
            "parameters": {"lambda": 1.0},
            "tokenizer_source": "base",
        },
        {
            "models": [{"model": a}, {"model": b}],
            "merge_method": "karcher",
            "parameters": {"max_iter": 5, "tol": 1e-6},
        },
    ]


def _slice_seeds(a: str, b: str) -> list[dict[str, Any]]:
    """Configs in the `slices:` and `modules:` forms."""
    both = [{"model": a, "layer_range": [0, 4]}, {"model": b, "layer_range": [0, 4]}]
    return [
        {
            "slices": [
                {"sources": [{"model": a, "layer_range": [0, 2]}]},
                {"sources": [{"model": b, "layer_range": [2, 4]}]},
            ],
            "merge_method": "passthrough",
        },
        {
            "modules": {"default": {"slices": [{"sources": both, "parameters": {"t": 0.3}}]}},
            "merge_method": "slerp",
            "base_model": a,
        },
    ]


def _places(data: Any, path: tuple = ()) -> list[tuple]:
    """Every (path to a value) in the config, containers included."""
    places = [path]
    if isinstance(data, dict):
        for key, value in data.items():
            places += _places(value, (*path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            places += _places(value, (*path, i))
    return places


def _set(data: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    parent = data
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return data


def _get(data: Any, path: tuple) -> Any:
    for step in path:
        data = data[step]
    return data


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1 << 16)


def _laughs(target: str) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * 10) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\n" + target.replace("normalize: true", "normalize: *a9")


def mutant(seed_configs: list[dict[str, Any]], index: int) -> str | bytes:
    """The `index`-th malformed config: deterministic, so a failure names a reproducible input."""
    import copy

    rng = random.Random(index)
    data = copy.deepcopy(seed_configs[index % len(seed_configs)])
    kind = index % 12
    places = _places(data)
    path = rng.choice(places[1:])
    if kind in (0, 1, 2):  # a hostile value anywhere
        pool = HOSTILE_REFS if path and path[-1] in REF_KEYS else HOSTILE
        data = _set(data, path, copy.deepcopy(rng.choice(pool)))
    elif kind == 3:  # a key removed
        parent = _get(data, path[:-1])
        if isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
    elif kind == 4:  # an unknown key
        mappings = [p for p in places if isinstance(_get(data, p), dict)]
        _get(data, rng.choice(mappings))[rng.choice(["wieght", "densty", "layer_rnage", "x", "1"])] = 1
    elif kind == 5:  # a container's type changed
        value = _get(data, path)
        swapped = list(value.items()) if isinstance(value, dict) else {"a": value}
        data = _set(data, path, swapped)
    elif kind == 6:  # a huge list
        value = _get(data, path)
        data = _set(data, path, [value] * rng.choice([2, 3000, 30_000]))
    elif kind == 7:  # deep nesting
        value = _get(data, path)
        for _ in range(rng.choice([70, 150])):
            value = [value] if rng.random() < 0.5 else {"value": value}
        data = _set(data, path, value)
    text = _dump(data)
    if kind == 8:  # an alias bomb, or a cycle
        return _laughs(text) if rng.random() < 0.5 else text + "name: &c [1, *c]\n"
    if kind == 9:  # binary garbage, or valid text with garbage spliced in
        noise = bytes(rng.randrange(256) for _ in range(rng.choice([1, 16, 2000])))
        cut = rng.randrange(len(text))
        return noise if rng.random() < 0.3 else text.encode()[:cut] + noise + text.encode()[cut:]
    if kind == 10:  # truncated
        return text[: rng.randrange(len(text))]
    if kind == 11:  # scrambled: YAML's special characters inserted, lines duplicated
        chars = list(text)
        for _ in range(rng.choice([1, 3, 10])):
            chars.insert(rng.randrange(len(chars)), rng.choice("&*[]{}:-!|>'\"#%@`\t,?"))
        lines = "".join(chars).splitlines(keepends=True)
        line = rng.randrange(len(lines))
        return "".join(lines[: line + 1] + lines[line:])
    return text


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            digest.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return digest.hexdigest()


def _finite(folder: Path) -> bool:
    import numpy as np
    from safetensors.numpy import load_file

    return all(np.isfinite(t).all() for f in folder.glob("*.safetensors") for t in load_file(f).values())


@pytest.fixture(scope="module")
def inputs(models) -> tuple[Path, Path]:
    base = models.base("llama", seed=0)
    return base, models.finetune(base, seed=1)


def test_seeds_are_valid(inputs) -> None:
    for seed in _seeds(*inputs):
        load_config(_dump(seed))


def test_fuzzed_configs_fail_closed(inputs, tmp_path: Path, capsys, monkeypatch) -> None:
    from huggingface_hub import constants

    from mergeguard.cli import main

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # a mutated reference never waits on the network
    seeds = _seeds(*inputs)
    before = [_digest(folder) for folder in inputs]
    outcomes = {0: 0, 2: 0}
    for index in range(MUTANTS):
        text = mutant(seeds, index)
        work = tmp_path / str(index)
        work.mkdir()
        config = work / "merge.yml"
        config.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        try:
            load_config(config)
            parsed = True
        except MergeguardError as error:
            parsed = False
            assert "\n" not in str(error) and len(str(error)) < 1000, (index, str(error)[:2000])
        out = work / "out"
        capsys.readouterr()
        code = main(["merge", str(config), str(out), "--no-audit", "--quiet"])
        captured = capsys.readouterr()
        assert code in outcomes, (index, code, captured)
        assert "Traceback" not in captured.out + captured.err, (index, captured)
        left = sorted(p.name for p in work.iterdir())
        if code == 0:
            assert parsed and left == ["merge.yml", "out"], (index, left)
            assert (out / "config.json").is_file() and list(out.glob("*.safetensors")), index
            assert _finite(out), (index, text)  # a merge that succeeds is a usable model
        else:
            error_lines = captured.err.strip().splitlines()
            assert len(error_lines) == 1 and error_lines[0].startswith("error: "), (index, captured.err)
            assert "; " in error_lines[0], (index, error_lines[0])
            assert left == ["merge.yml"], (index, left)  # no output, no temporary folder
        outcomes[code] += 1
    assert [_digest(folder) for folder in inputs] == before
    assert outcomes[2] >= MUTANTS // 2, outcomes  # most mutants are refused; the rest merge completely
