"""Config parsing and validation (no weights read), and parameter resolution against hand-written values."""

from __future__ import annotations

import pytest

from mergeguard.errors import ConfigError
from mergeguard.merge import config_models, load_config
from mergeguard.merge.methods.base import REQUIRED
from mergeguard.merge.params import MISSING, evaluate, resolve

LINEAR = """
models:
  - model: ./a
    parameters: {weight: 0.5}
  - model: ./b
    parameters: {weight: 0.5}
merge_method: linear
"""


def _error(text: str, *, strict: bool = False) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(text, strict=strict)
    return str(info.value)


def test_valid_config_parses_with_no_warnings() -> None:
    config = load_config(LINEAR + "dtype: bf16\n")
    assert config.merge_method == "linear"
    assert [m.model for m in config.models] == ["./a", "./b"]
    assert config.dtype == "bfloat16" and config.warnings == []


def test_unknown_key_suggests_the_right_one() -> None:
    assert "unknown key `dype`" in _error(LINEAR + "dype: float16\n")
    assert "did you mean `dtype`?" in _error(LINEAR + "dype: float16\n")
    message = _error(LINEAR.replace("{weight: 0.5}", "{wieght: 0.5}", 1))
    assert "`wieght`" in message and "did you mean `weight`?" in message


def test_missing_config_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))


def test_unknown_method_and_dtype() -> None:
    assert "tiess" in _error(LINEAR.replace("linear", "tiess"))
    message = _error(LINEAR + "dtype: float8\n")
    assert "unknown dtype `float8`" in message


def test_missing_required_parameter() -> None:
    text = "models:\n  - model: ./a\n  - model: ./b\n    parameters: {weight: 1}\nmerge_method: linear\n"
    assert "has no `weight`" in _error(text)
    assert "requires parameter `t`" in _error(
        "models:\n  - model: ./a\n  - model: ./b\nmerge_method: slerp\nbase_model: ./a\n"
    )
    assert "needs a `base_model`" in _error(
        "models:\n  - model: ./a\n    parameters: {weight: 1}\nmerge_method: ties\n"
    )


def test_layer_ranges_and_slices() -> None:
    empty = (
        "slices:\n  - sources:\n      - model: ./a\n        layer_range: [3, 3]\nmerge_method: passthrough\n"
    )
    assert "empty" in _error(empty)
    unequal = """
    slices:
      - sources:
          - model: ./a
            layer_range: [0, 4]
          - model: ./b
            layer_range: [0, 2]
    merge_method: slerp
    base_model: ./a
    parameters: {t: 0.5}
    """
    assert "unequal layer counts (2, 4)" in _error(unequal)
    assert "exactly one of" in _error(LINEAR + "slices:\n  - sources: [{model: ./a, layer_range: [0, 1]}]\n")


def test_misplaced_and_unused_settings_warn_and_strict_refuses() -> None:
    text = """
    models:
      - model: ./a
        density: 0.5
        parameters: {weight: 0.5, density: 0.3}
      - model: ./b
        parameters: {weight: 0.5}
    base_model: ./a
    merge_method: task_arithmetic
    select_topk: 0.2
    parameters:
      dtype: float16
    """
    warnings = load_config(text).warnings
    assert len(warnings) == 3
    assert any("`density` in models[0] is ignored" in w for w in warnings)
    assert any("`select_topk` in the config is ignored" in w for w in warnings)
    assert any("`dtype` under `parameters`" in w and "top level" in w for w in warnings)
    assert "(--strict)" in _error(text, strict=True)
    sce = "models:\n  - model: ./a\n    parameters: {density: 0.5}\nbase_model: ./a\nmerge_method: sce\n"
    assert any("not used by merge_method `sce`" in w for w in load_config(sce).warnings)
    method_level = LINEAR.replace("{weight: 0.5}", "{weight: 0.5, normalize: false}", 1)
    assert any("method-level parameter" in w for w in load_config(method_level).warnings)


def test_yaml_as_people_write_it() -> None:
    text = """
        models:
          - model: C:\\models\\a
            parameters: {weight: 1}
          - model: ./b
            parameters: {weight: "1e-1"}
        merge_method: linear
        parameters:
          normalize: 1.0
        tokenizer_source: base
    """
    config = load_config(text)
    assert config.models[0].model == "C:\\models\\a"
    assert (
        evaluate(config.models[1].parameters["weight"], tensor_name="x", t=0, kind=float, name="weight")
        == 0.1
    )
    assert evaluate(config.parameters["normalize"], tensor_name="x", t=0, kind=bool, name="normalize") is True
    assert config.tokenizer_source == "base"
    assert "is not a float" in _error(LINEAR.replace("{weight: 0.5}", "{weight: heavy}", 1))


def test_modules_form_and_config_models() -> None:
    text = """
    modules:
      default:
        slices:
          - sources:
              - model: ./a
                layer_range: [0, 2]
              - model: ./b
                layer_range: [0, 2]
        parameters: {t: 0.3}
    merge_method: slerp
    base_model: ./base
    """
    config = load_config(text)
    assert len(config.slices) == 1 and config.module_parameters == {"t": 0.3}
    assert config_models(config) == ["./base", "./a", "./b"]
    assert "both `tokenizer_source` and `tokenizer`" in _error(
        LINEAR + "tokenizer_source: base\ntokenizer: {source: base}\n"
    )


def test_gradients_interpolate_piecewise_linearly() -> None:
    # [0, 1, 0.5] spans t in [0, 0.5] then [0.5, 1]: t=0.25 -> 0.5, t=0.75 -> 0.75
    cases = [(0.0, 0.0), (0.25, 0.5), (0.5, 1.0), (0.75, 0.75), (1.0, 0.5)]
    for t, expected in cases:
        assert evaluate([0, 1, 0.5], tensor_name="x", t=t, kind=float, name="w") == pytest.approx(expected)
    assert evaluate([True, False], tensor_name="x", t=0.9, kind=bool, name="b") is True
    assert evaluate([True, False], tensor_name="x", t=1.0, kind=bool, name="b") is False


def test_filters_first_match_wins_and_fallback() -> None:
    setting = [{"filter": "mlp", "value": 0.1}, {"filter": "mlp.up", "value": 0.2}, {"value": [0.0, 1.0]}]
    assert evaluate(setting, tensor_name="layers.0.mlp.up_proj", t=0.5, kind=float, name="w") == 0.1
    assert evaluate(setting, tensor_name="layers.0.self_attn.q", t=0.5, kind=float, name="w") == 0.5
    assert evaluate([{"filter": "mlp", "value": 1}], tensor_name="attn", t=0, kind=float, name="w") is MISSING


def test_precedence_per_model_over_slice_over_global() -> None:
    own, slice_, global_ = {"w": 0.1}, {"w": 0.2, "d": 0.5}, {"w": 0.3, "d": 0.6, "e": 0.7}
    scopes = [own, slice_, global_]
    assert resolve("w", float, scopes, tensor_name="x", t=0) == 0.1
    assert resolve("d", float, scopes, tensor_name="x", t=0) == 0.5
    assert resolve("e", float, scopes, tensor_name="x", t=0) == 0.7
    # a filter that does not match falls through to the next scope
    assert resolve("w", float, [{"w": [{"filter": "mlp", "value": 9}]}, global_], tensor_name="x", t=0) == 0.3
    assert REQUIRED is not None
