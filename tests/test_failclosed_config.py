"""Fail closed on merge configs (issue 20, items 7, 8 and 10): parameters finite and in range, YAML bounded
in size, nesting and alias expansion, wrongly typed keys refused when the config is parsed. Each case is the
input that broke it, run through the CLI: one `error: ...; <fix>` line, exit 1, no output, inputs intact."""

from __future__ import annotations

import hashlib
import os
import time
import tracemalloc
from pathlib import Path

import pytest

from mergeguard.errors import ConfigError
from mergeguard.merge import load_config

SLERP = """
models:
  - model: {base}
  - model: {ft}
merge_method: slerp
base_model: {base}
parameters:
  t: {t}
"""


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def pair(models) -> tuple[Path, Path]:
    base = models.base("llama", seed=0)
    return base, models.finetune(base, seed=1)


def _refused(tmp_path: Path, text: str | bytes, capsys: pytest.CaptureFixture[str], inputs=()) -> str:
    """Run `mergeguard merge` on the config; assert exit 1, one error line, nothing written, inputs intact.
    Returns the error line."""
    from mergeguard.cli import main

    config = tmp_path / "merge.yml"
    if isinstance(text, bytes):
        config.write_bytes(text)
    else:
        config.write_text(text, encoding="utf-8")
    before = {folder: _digest(folder) for folder in inputs}
    config_digest = hashlib.sha256(config.read_bytes()).hexdigest()
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(["merge", str(config), str(out), "--no-audit", "--quiet"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert len(lines) == 1 and lines[0].startswith("error: ") and "; " in lines[0], captured.err
    assert "Traceback" not in captured.err + captured.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merge.yml"]  # no output, no temp folder
    assert {folder: _digest(folder) for folder in inputs} == before
    assert hashlib.sha256(config.read_bytes()).hexdigest() == config_digest
    return lines[0]


# item 7: parameters finite and in range


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "'nan'", "1e999"])
def test_non_finite_weight_is_refused(pair, tmp_path, capsys, value: str) -> None:
    base, ft = pair
    text = f"""
models:
  - model: {base}
    parameters: {{weight: 0.5}}
  - model: {ft}
    parameters: {{weight: {value}}}
merge_method: linear
"""
    line = _refused(tmp_path, text, capsys, [base, ft])
    assert "parameter `weight` = " in line and "is not a finite number; write a finite number" in line


def test_nan_slerp_t_is_refused(pair, tmp_path, capsys) -> None:
    base, ft = pair
    line = _refused(tmp_path, SLERP.format(base=base, ft=ft, t=".nan"), capsys, [base, ft])
    assert line == "error: parameter `t` = nan is not a finite number; write a finite number"
    line = _refused(tmp_path, SLERP.format(base=base, ft=ft, t="[0, .inf, 1]"), capsys, [base, ft])
    assert "parameter `t` = inf is not a finite number" in line


@pytest.mark.parametrize("density", ["-0.5", "0", "2", "1.0000001"])
def test_density_outside_zero_one_is_refused(pair, tmp_path, capsys, density: str) -> None:
    base, ft = pair
    text = f"""
models:
  - model: {ft}
    parameters: {{weight: 1.0, density: [{{filter: mlp, value: {density}}}, {{value: 0.5}}]}}
merge_method: ties
base_model: {base}
"""
    line = _refused(tmp_path, text, capsys, [base, ft])
    assert line == f"error: parameter `density` = {density} is out of range; use a value in (0, 1]"


def test_nan_density_and_other_ranges(pair, tmp_path, capsys) -> None:
    base, ft = pair
    ties = f"models:\n  - model: {ft}\n    parameters: {{weight: 1, density: .nan}}\n"
    ties += f"merge_method: ties\nbase_model: {base}\n"
    assert "parameter `density` = nan is not a finite number" in _refused(tmp_path, ties, capsys)
    sce = f"models:\n  - model: {ft}\nmerge_method: sce\nbase_model: {base}\nparameters: {{select_topk: 0}}\n"
    assert "`select_topk` = 0 is out of range; use a value in (0, 1]" in _refused(tmp_path, sce, capsys)
    della = ties.replace("density: .nan", "density: 0.5, epsilon: 1").replace("ties", "della")
    assert "`epsilon` = 1 is out of range; use a value in [0, 1)" in _refused(tmp_path, della, capsys)
    della = della.replace("epsilon: 1", "epsilon: 0.15").replace("density: 0.5", "density: 0.9")
    assert _refused(
        tmp_path, della, capsys, [base, ft]
    ) == (  # checked in the plan, before any weight is read
        "error: della: density 0.9 +/- epsilon 0.15 must stay inside (0, 1);"
        " lower `epsilon` or move `density` away from 0 and 1"
    )
    karcher = f"models:\n  - model: {base}\n  - model: {ft}\nmerge_method: karcher\n"
    line = _refused(tmp_path, karcher + "parameters: {max_iter: 1000000000}\n", capsys)
    assert "`max_iter` = 1000000000 is out of range; use a value in [0, 1000]" in line
    line = _refused(
        tmp_path, karcher.replace("karcher", "linear") + "parameters: {weight: 1.0e+308}\n", capsys
    )
    assert line.endswith("`weight` = 1e+308 is out of range; use a value between -1e+06 and 1e+06")
    assert "`normalize` = 2 is not a bool" in _refused(
        tmp_path, karcher.replace("karcher", "linear") + "parameters: {normalize: 2, weight: 1}\n", capsys
    )


@pytest.mark.parametrize("layers", ["[0.5, 1.5]", "[0, 2.0]", "[true, 2]", "[0, 2, 4]", "'0-2'", "[0]"])
def test_layer_range_must_be_two_integers(pair, tmp_path, capsys, layers: str) -> None:
    base, _ = pair
    text = f"slices:\n  - sources:\n      - model: {base}\n        layer_range: {layers}\n"
    text += "merge_method: passthrough\n"
    line = _refused(tmp_path, text, capsys, [base])
    assert "in slices[0].sources[0] must be two integers [start, end]; write whole layer numbers" in line


def test_layer_range_beyond_the_model_is_refused(pair, tmp_path, capsys) -> None:
    base, _ = pair
    text = f"slices:\n  - sources:\n      - model: {base}\n        layer_range: [2, 9]\n"
    line = _refused(tmp_path, text + "merge_method: passthrough\n", capsys, [base])
    assert "out of bounds" in line and "has 4 layers; use an end of at most 4" in line


def test_duplicate_keys_are_refused_naming_the_key(pair, tmp_path, capsys) -> None:
    base, ft = pair
    text = f"""
models:
  - model: {base}
    parameters: {{weight: 0.5}}
  - model: {ft}
    parameters:
      weight: 0.5
      weight: .nan
merge_method: linear
"""
    line = _refused(tmp_path, text, capsys, [base, ft])
    assert line == (
        "error: duplicate key `weight` at line 8 of the config; keep one of them (YAML would silently keep"
        " the last)"
    )
    top = f"merge_method: linear\nmodels: [{base}, {ft}]\nparameters: {{weight: 1}}\nmerge_method: slerp\n"
    assert "duplicate key `merge_method` at line 4" in _refused(tmp_path, top, capsys)


def test_merge_keys_may_be_overridden_but_a_model_not_listed_twice(pair) -> None:
    base, ft = pair
    text = f"""
models:
  - model: {base}
    parameters: &w {{weight: 0.5}}
  - model: {ft}
    parameters: {{<<: *w, weight: 0.25}}
merge_method: linear
"""
    config = load_config(text)
    assert [m.parameters for m in config.models] == [{"weight": 0.5}, {"weight": 0.25}]
    twice = (
        f"models: [{{model: {base}, parameters: {{weight: 1}}}}, {{model: {base}}}]\nmerge_method: linear\n"
    )
    with pytest.raises(ConfigError, match="is listed twice in models; list each model once"):
        load_config(twice)


# item 8: bounded YAML


def _laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + f"\nmerge_method: linear\nmodels: [./a]\nparameters:\n  weight: *a{levels}\n"


def test_billion_laughs_fails_fast_in_bounded_memory(tmp_path, capsys) -> None:
    text = _laughs()
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_config(text)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 2 and peak < 20 * 2**20, (seconds, peak)
    assert str(info.value).startswith("config expands to more than 1,000,000 YAML nodes (line ")
    assert "expands to more than 1,000,000 YAML nodes" in _refused(tmp_path, text, capsys)
    # a few aliases of a shared block stay fine
    load_config(
        "models: [{model: ./a, parameters: &p {weight: 1}}, {model: ./b, parameters: *p}]\n"
        "merge_method: linear\n"
    )


def test_alias_cycle_and_deep_nesting(tmp_path, capsys) -> None:
    cycle = "merge_method: linear\nmodels: [./a]\nparameters: {weight: &w [1, *w]}\n"
    assert "contains itself through an alias (line 3)" in _refused(tmp_path, cycle, capsys)
    for depth in (100, 990, 100_000):  # 100_000: libyaml's own limit (1000) answers, in one line
        deep = "merge_method: linear\nmodels: [./a]\nparameters: {weight: " + "[" * depth + "1"
        deep += "]" * depth + "}\n"
        line = _refused(tmp_path, deep, capsys)
        assert "nested more than 64 levels deep" in line or "exceeded maximum nesting depth" in line, line
    block = "merge_method: linear\nmodels: [./a]\nparameters:\n" + "".join(
        " " * (2 * i + 2) + f"k{i}:\n" for i in range(200)
    )
    assert "nested more than 64 levels deep" in _refused(tmp_path, block + " " * 402 + "1\n", capsys)


def test_invalid_utf8_names_the_file_and_line(tmp_path, capsys) -> None:
    text = b"merge_method: linear\nmodels:\n  - model: ./caf\xe9\n"
    line = _refused(tmp_path, text, capsys)
    assert line == (
        f"error: config file {tmp_path / 'merge.yml'} is not valid UTF-8 (line 3); save it as UTF-8 text"
    )


def test_oversized_fifo_and_garbage_configs(tmp_path, capsys) -> None:
    big = "merge_method: linear\nmodels: [./a]\n# " + "x" * (1 << 20) + "\n"
    assert "is larger than 1 MiB" in _refused(tmp_path, big, capsys)
    with pytest.raises(ConfigError, match="config is larger than 1 MiB"):
        load_config(big)
    assert "config is not valid YAML at line 1: " in _refused(tmp_path, b"merge_method: \x00\x01\x02", capsys)
    line = _refused(tmp_path, bytes(range(256)) * 4, capsys)
    assert line.endswith("is not valid UTF-8 (line 2); save it as UTF-8 text")
    fifo = tmp_path / "fifo.yml"
    os.mkfifo(fifo)  # opening it would block forever
    with pytest.raises(ConfigError, match=r"fifo.yml is not a regular file; give the path of a YAML file"):
        load_config(fifo)
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_config(tmp_path)
    if Path("/proc/self/mem").exists():  # a regular file whose read fails (EIO), as an unreadable one would
        with pytest.raises(ConfigError, match=r"/proc/self/mem cannot be read \(.*\); check its permissions"):
            load_config(Path("/proc/self/mem"))


def test_huge_keys_and_values_give_short_messages(tmp_path, capsys) -> None:
    key = "k" * 500_000
    line = _refused(tmp_path, f"merge_method: linear\nmodels: [./a]\n? {key}\n: 1\n", capsys)  # a long key
    assert line.startswith("error: unknown key `kkkk") and len(line) < 400
    line = _refused(
        tmp_path, f"merge_method: linear\nmodels: [{{model: ./a, parameters: {{weight: '{key}'}}}}]\n", capsys
    )
    assert "parameter `weight` = 'kkk" in line and len(line) < 400


def test_twenty_thousand_models_answer_quickly(tmp_path, capsys) -> None:
    text = "merge_method: linear\nmodels:\n" + "".join(
        f"  - model: ./m{i}\n    parameters: {{weight: 1.0}}\n" for i in range(20_000)
    )
    start = time.perf_counter()
    line = _refused(tmp_path, text, capsys)
    assert time.perf_counter() - start < 15
    assert line == (
        "error: config lists 20000 model entries; mergeguard merges at most 1024;"
        " merge in stages: merge groups of models, then merge the results"
    )


def test_plan_is_linear_in_the_number_of_models(pair, tmp_path) -> None:
    from mergeguard.merge.engine import MergeOptions, _open_models
    from mergeguard.merge.methods import get_method
    from mergeguard.merge.plan import build_plan

    base, _ = pair
    seconds = {}
    for count in (64, 1024):
        refs = []
        for i in range(count):
            link = tmp_path / f"m{i}"
            if not link.exists():
                link.symlink_to(base)
            refs.append(f"  - model: {link}\n    parameters: {{weight: 1.0}}\n")
        config = load_config("merge_method: linear\nmodels:\n" + "".join(refs))
        models = _open_models(config, MergeOptions(), lambda: tmp_path / "scratch", tmp_path / "out")
        start = time.perf_counter()
        plan = build_plan(config, get_method("linear"), models)
        seconds[count] = time.perf_counter() - start
        assert len(plan.tasks[0].inputs) == count
        for model in models.values():
            model.reader.close()
    assert seconds[1024] < 5 and seconds[1024] < 100 * seconds[64], seconds  # linear: 16x, quadratic: 256x


# item 10: wrongly typed keys refused when the config is parsed, before any model is read


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("chat_template: 123", "`chat_template` must be a string, not 123; write `chat_template: <text>`"),
        ("chat_template: [a]", "`chat_template` must be a string, not ['a']"),
        ("chat_template: chatmll", "chat_template `chatmll` is neither a Jinja template nor a known name"),
        ("dtype: 16", "`dtype` must be a string, not 16"),
        ("out_dtype: {a: 1}", "`out_dtype` must be a string"),
        ("tokenizer_source: 1", "`tokenizer_source` must be a string, not 1"),
        ("tokenizer: {source: [x]}", "`tokenizer.source` must be a string"),
        ("name: [1]", "`name` must be a string"),
        ("base_model: 5", "the model of base_model is 5, not a folder or hub id"),
        ("parameters: [1]", "`parameters` in the top-level parameters must be a mapping"),
    ],
)
def test_wrong_top_level_types_are_refused_before_any_model_is_read(
    pair, tmp_path, capsys, extra: str, message: str
) -> None:
    base, ft = pair
    missing = tmp_path / "no-such-model"  # read first, it would be the error: the config is checked before
    text = f"models:\n  - model: {missing}\n    parameters: {{weight: 1}}\nmerge_method: linear\n{extra}\n"
    assert message in _refused(tmp_path, text, capsys)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("merge_method: [linear]\nmodels: [./a]\n", "`merge_method` must be a string"),
        ("merge_method: linear\nmodels: [{model: 5}]\n", "the model of models[0] is 5"),
        ("merge_method: linear\nmodels: [{model: ./a, revision: [1]}]\n", "`revision` in models[0] must be"),
        ("merge_method: passthrough\nslices: [{sources: ./a}]\n", "`sources` of slices[0] must be a list"),
        ("merge_method: passthrough\nslices: [{sources: [./a]}]\n", "slices[0].sources[0] must be a mapping"),
        (
            "merge_method: linear\nmodels: [{model: ./a, parameters: {weight: [{filter: 1, value: 1}]}}]\n",
            "`weight` filter 1 in models[0] is not a string",
        ),
        (
            "merge_method: passthrough\nslices: [{sources: [{model: ./a, layer_range: [0, 1]}],"
            " residual_weight: .nan}]\n",
            "parameter `residual_weight` = nan is not a finite number",
        ),
    ],
)
def test_wrong_nested_types_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(text)
    assert message in str(info.value)


def test_lineage_reads_configs_with_the_same_bounds(tmp_path) -> None:
    """A model folder's `mergekit_config.yml` (hostile when downloaded) is read with the same bounds, even
    where the merge parser refuses it and lineage falls back to reading only the model names."""
    from mergeguard.auditor.lineage import config_inputs
    from mergeguard.errors import MergeguardError

    config = tmp_path / "mergekit_config.yml"
    config.write_text(_laughs(), encoding="utf-8")
    with pytest.raises(MergeguardError, match="expands to more than 1,000,000 YAML nodes"):
        config_inputs(config)
    config.write_text("models: " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    with pytest.raises(MergeguardError, match="not valid YAML at line 1: exceeded maximum nesting depth"):
        config_inputs(config)
    config.write_text("models: [./a, {model: ./b}]\nmerge_method: frankenstein\n", encoding="utf-8")
    assert config_inputs(config) == ["./a", "./b"]  # unknown method: names still read
