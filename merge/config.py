"""The mergekit YAML config: parse it as people write it, validate it fully before any weights are read.

`load_config` checks everything the text alone can tell (keys, method, parameter names, types, dtypes,
layer ranges); `merge.plan` checks what needs the models' headers (architectures, layer counts, tensors).
Mistakes mergekit silently ignores are errors (unknown keys) or warnings (keys in the wrong place, known
parameters the method does not use); `strict=True` turns the warnings into errors.
"""

from __future__ import annotations

import difflib
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mergeguard.errors import ConfigError

TOP_KEYS = (
    "models",
    "slices",
    "modules",
    "merge_method",
    "base_model",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
    "name",
)
MODEL_KEYS = ("model", "parameters", "revision")
SOURCE_KEYS = ("model", "layer_range", "parameters", "revision")
SLICE_KEYS = ("sources", "parameters", "base_model", "residual_weight")
MODULE_KEYS = ("slices", "models", "parameters")
TOKENIZER_KEYS = ("source", "tokens", "pad_to_multiple_of")
DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float64": "float64",
}


@dataclass
class InputModel:
    """One model entry (`models:`) or slice source (`slices:`): a reference, its parameters, its layers."""

    model: str
    parameters: dict[str, Any] = field(default_factory=dict)
    layer_range: tuple[int, int] | None = None
    revision: str | None = None


@dataclass
class OutputSlice:
    """One output slice: sources merged layer by layer, with slice-level parameters and base."""

    sources: list[InputModel]
    parameters: dict[str, Any] = field(default_factory=dict)
    base_model: str | None = None


@dataclass
class MergeConfig:
    """A validated config. Exactly one of `models` / `slices` is set (`modules: default:` becomes one)."""

    merge_method: str
    models: list[InputModel] | None = None
    slices: list[OutputSlice] | None = None
    base_model: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    module_parameters: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    chat_template: str | None = None
    text: str = ""
    warnings: list[str] = field(default_factory=list)

    def inputs(self) -> list[InputModel]:
        """Every model entry / slice source, in config order."""
        if self.models is not None:
            return list(self.models)
        return [src for sl in self.slices or [] for src in sl.sources]


def config_models(config: MergeConfig) -> list[str]:
    """Every input model reference (base included), each once, in config order."""
    refs: list[str] = []
    for ref in [config.base_model, *[s.base_model for s in config.slices or []]]:
        if ref and ref not in refs:
            refs.append(ref)
    for item in config.inputs():
        if item.model not in refs:
            refs.append(item.model)
    return refs


def _methods() -> Any:
    from mergeguard.merge import methods

    return methods


def _suggest(word: str, choices: Any) -> str | None:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return match[0] if match else None


def _unknown(word: str, where: str, choices: Any) -> ConfigError:
    guess = _suggest(word, choices)
    hint = f"did you mean `{guess}`?" if guess else f"known keys: {', '.join(sorted(choices))}"
    return ConfigError(f"unknown key `{word}` in {where}", hint=hint)


def _read_text(source: str | Path) -> str:
    if isinstance(source, Path):
        if not source.is_file():
            raise ConfigError(f"config file {source} not found", hint="check the path")
        return source.read_text(encoding="utf-8")
    text = str(source)
    if "\n" not in text and len(text) < 4096:
        path = Path(text).expanduser()
        if path.suffix.lower() in (".yml", ".yaml") or path.is_file():
            if not path.is_file():
                raise ConfigError(f"config file {text} not found", hint="check the path")
            return path.read_text(encoding="utf-8")
    return text


def _parse_yaml(text: str) -> dict[str, Any]:
    text = textwrap.dedent(text.expandtabs(2)).strip("\n")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"config is not valid YAML{where}", hint="check the indentation and the colons"
        ) from error
    if not isinstance(data, dict):
        raise ConfigError("config must be a YAML mapping", hint="start with `merge_method:` and `models:`")
    return data


def _ref(value: Any, where: str) -> str:
    if isinstance(value, dict) and "model" in value:  # mergekit's long form {model: {path: ...}}
        inner = value["model"]
        value = inner.get("path") if isinstance(inner, dict) else inner
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ConfigError(f"{where} has no model", hint="write `model: <folder or org/name>`")
    return str(value).strip()


class _Validator:
    """Walks the raw mapping once, building the dataclasses and collecting warnings."""

    def __init__(self, method: Any, methods: Any) -> None:
        self.method = method
        self.methods = methods
        self.warnings: list[str] = []
        self.config_keys = set(TOP_KEYS)

    def params(self, raw: Any, where: str, *, per_model: bool) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise ConfigError(f"`parameters` in {where} must be a mapping", hint="write `name: value` pairs")
        out: dict[str, Any] = {}
        for name, value in raw.items():
            name = str(name)
            param = self.method.param(name)
            if name in self.config_keys:
                self.warnings.append(
                    f"`{name}` under `parameters` in {where} is ignored;"
                    " move it to the top level of the config"
                )
                continue
            if name not in self.methods.ALL_PARAM_NAMES:
                raise _unknown(name, f"parameters of {where}", self.methods.ALL_PARAM_NAMES)
            if param is None:
                self.warnings.append(
                    f"parameter `{name}` in {where} is not used by merge_method `{self.method.name}`"
                    f" (it takes: {', '.join(p.name for p in self.method.params) or 'no parameters'})"
                )
                continue
            if per_model and not param.per_model:
                self.warnings.append(
                    f"`{name}` is a method-level parameter and is ignored in {where};"
                    " put it under the slice's or the top-level `parameters:`"
                )
                continue
            self.check_value(name, value, param.kind, where)
            out[name] = value
        return out

    def check_value(self, name: str, value: Any, kind: type, where: str) -> None:
        """Cast every leaf once now, so a bad value fails before any weights are read."""
        from mergeguard.merge.params import cast

        if isinstance(value, dict):
            value = [value]
        if isinstance(value, list):
            for entry in value:
                if isinstance(entry, dict):
                    extra = set(entry) - {"filter", "value"}
                    if extra:
                        raise _unknown(
                            sorted(extra)[0], f"`{name}` filter entry in {where}", ["filter", "value"]
                        )
                    if "value" not in entry:
                        raise ConfigError(f"`{name}` filter entry in {where} has no `value`")
                    self.check_value(name, entry["value"], kind, where)
                else:
                    cast(entry, kind, name)
        elif value is not None:
            cast(value, kind, name)

    def misplaced(self, raw: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
        for key in raw:
            key = str(key)
            if key in allowed:
                continue
            if key in self.methods.ALL_PARAM_NAMES:
                self.warnings.append(
                    f"`{key}` in {where} is ignored (mergekit ignores it too); move it under `parameters:`"
                )
                continue
            raise _unknown(key, where, allowed)

    def model(self, raw: Any, where: str, *, slice_source: bool) -> InputModel:
        if isinstance(raw, str):
            return InputModel(model=raw.strip())
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a mapping with `model:`")
        self.misplaced(raw, SOURCE_KEYS if slice_source else MODEL_KEYS, where)
        item = InputModel(
            model=_ref(raw.get("model"), where),
            parameters=self.params(raw.get("parameters"), where, per_model=True),
            revision=str(raw["revision"]) if raw.get("revision") is not None else None,
        )
        if slice_source:
            item.layer_range = _layer_range(raw.get("layer_range"), where)
        return item


def _layer_range(raw: Any, where: str) -> tuple[int, int]:
    if raw is None:
        raise ConfigError(f"{where} has no `layer_range`", hint="write `layer_range: [start, end]`")
    try:
        start, end = (int(v) for v in raw)
    except (TypeError, ValueError):
        raise ConfigError(f"`layer_range` in {where} must be two integers [start, end]") from None
    if start < 0 or end <= start:
        raise ConfigError(
            f"`layer_range: [{start}, {end}]` in {where} is empty or negative",
            hint="the end is exclusive and must be greater than the start",
        )
    return start, end


def _dtype(value: Any, key: str) -> str | None:
    if value is None:
        return None
    name = str(value).lower().replace("torch.", "")
    if name not in DTYPES:
        guess = _suggest(name, DTYPES)
        raise ConfigError(
            f"unknown {key} `{value}`",
            hint=f"did you mean `{guess}`?" if guess else "use float32, float16 or bfloat16",
        )
    return DTYPES[name]


def load_config(source: str | Path, *, strict: bool = False) -> MergeConfig:
    """Parse and validate a mergekit config (a path or the YAML text). Raises ConfigError on the first error.

    The returned config's `warnings` lists settings that have no effect; `strict=True` raises on them.
    """
    text = _read_text(source)
    raw = _parse_yaml(text)
    methods = _methods()
    for key in raw:
        if str(key) not in TOP_KEYS and str(key) not in methods.ALL_PARAM_NAMES:
            raise _unknown(str(key), "the config", TOP_KEYS)
    if not raw.get("merge_method"):
        raise ConfigError("config has no `merge_method`", hint=f"choose one of {', '.join(methods.METHODS)}")
    method = methods.get_method(str(raw["merge_method"]).strip())
    check = _Validator(method, methods)
    check.misplaced(raw, TOP_KEYS, "the config")

    module_params: dict[str, Any] = {}
    forms = [k for k in ("models", "slices", "modules") if raw.get(k)]
    if len(forms) != 1:
        raise ConfigError(
            "config needs exactly one of `models`, `slices` or `modules`"
            + (f" (it has {', '.join(forms)})" if forms else ""),
            hint="list the models to merge under `models:`",
        )
    body = raw
    if forms[0] == "modules":
        modules = raw["modules"]
        if not isinstance(modules, dict) or len(modules) != 1:
            raise ConfigError(
                "only a single module (`modules: {default: ...}`) is supported",
                hint="merge multi-module models one module at a time",
            )
        ((module_name, body),) = modules.items()
        where = f"module `{module_name}`"
        if not isinstance(body, dict):
            raise ConfigError(f"{where} must be a mapping with `slices:` or `models:`")
        check.misplaced(body, MODULE_KEYS, where)
        module_params = check.params(body.get("parameters"), where, per_model=False)
        inner = [k for k in ("models", "slices") if body.get(k)]
        if len(inner) != 1:
            raise ConfigError(f"{where} needs exactly one of `models` or `slices`")

    config = MergeConfig(merge_method=method.name, module_parameters=module_params, text=text)
    if body.get("models"):
        if not isinstance(body["models"], list):
            raise ConfigError("`models` must be a list of `- model: ...` entries")
        config.models = [
            check.model(m, f"models[{i}]", slice_source=False) for i, m in enumerate(body["models"])
        ]
    else:
        if not isinstance(body["slices"], list):
            raise ConfigError("`slices` must be a list of `- sources: ...` entries")
        config.slices = []
        for i, sl in enumerate(body["slices"]):
            where = f"slices[{i}]"
            if not isinstance(sl, dict) or not sl.get("sources"):
                raise ConfigError(
                    f"{where} has no `sources`", hint="write `- sources: [{model, layer_range}]`"
                )
            check.misplaced(sl, SLICE_KEYS, where)
            sources = [
                check.model(s, f"{where}.sources[{j}]", slice_source=True)
                for j, s in enumerate(sl["sources"])
            ]
            lengths = {s.layer_range[1] - s.layer_range[0] for s in sources if s.layer_range}
            if len(lengths) > 1:
                raise ConfigError(
                    f"the sources of {where} have unequal layer counts"
                    f" ({', '.join(map(str, sorted(lengths)))})",
                    hint="give every source of a slice a layer_range of the same length",
                )
            base = _ref(sl["base_model"], f"{where}.base_model") if sl.get("base_model") else None
            config.slices.append(
                OutputSlice(
                    sources=sources,
                    parameters=check.params(sl.get("parameters"), where, per_model=False),
                    base_model=base,
                )
            )
    config.base_model = _ref(raw["base_model"], "base_model") if raw.get("base_model") else None
    config.parameters = check.params(raw.get("parameters"), "the top-level parameters", per_model=False)
    config.dtype = _dtype(raw.get("dtype"), "dtype")
    config.out_dtype = _dtype(raw.get("out_dtype"), "out_dtype")
    config.chat_template = raw.get("chat_template")
    config.tokenizer_source = _tokenizer_source(raw, check)
    _check_method_needs(config, method)
    config.warnings = check.warnings
    if strict and config.warnings:
        raise ConfigError(f"{config.warnings[0]} (--strict)", hint="fix the config or drop --strict")
    return config


def _tokenizer_source(raw: dict[str, Any], check: _Validator) -> str | None:
    if raw.get("tokenizer_source") is not None and raw.get("tokenizer") is not None:
        raise ConfigError("config sets both `tokenizer_source` and `tokenizer`", hint="keep one of them")
    if raw.get("tokenizer") is not None:
        section = raw["tokenizer"]
        if not isinstance(section, dict):
            raise ConfigError("`tokenizer` must be a mapping with `source:`")
        check.misplaced(section, TOKENIZER_KEYS, "the tokenizer section")
        if section.get("tokens") or section.get("pad_to_multiple_of"):
            raise ConfigError(
                "`tokenizer.tokens` and `tokenizer.pad_to_multiple_of` are not supported yet",
                hint="remove them, or merge with mergekit",
            )
        return str(section.get("source", "union"))
    source = raw.get("tokenizer_source")
    return None if source is None else str(source)


def _check_method_needs(config: MergeConfig, method: Any) -> None:
    """Base model and model-count requirements, and required parameters that nothing sets."""
    slices = config.slices or [OutputSlice(sources=config.models or [])]
    for i, sl in enumerate(slices):
        where = f"slices[{i}]" if config.slices else "models"
        base = sl.base_model or config.base_model
        if method.requires_base and not base:
            raise ConfigError(
                f"merge_method `{method.name}` needs a `base_model`", hint="add `base_model: <model>`"
            )
        count = len(sl.sources) + (
            1 if base and config.models and base not in [s.model for s in sl.sources] else 0
        )
        if count < method.min_models:
            raise ConfigError(
                f"merge_method `{method.name}` needs at least {method.min_models} models"
                f" in {where}, got {count}"
            )
        if method.max_models is not None and count > method.max_models:
            raise ConfigError(
                f"merge_method `{method.name}` takes at most {method.max_models} models"
                f" in {where}, got {count}"
            )
        from mergeguard.merge.methods.base import REQUIRED

        scopes = [sl.parameters, config.module_parameters, config.parameters]
        for param in method.params:
            if param.default is not REQUIRED:
                continue
            if param.per_model:
                for src in sl.sources:
                    if src.model == base and getattr(param, "non_base", False):
                        continue
                    if not any(param.name in s for s in [src.parameters, *scopes]):
                        raise ConfigError(
                            f"model {src.model} in {where} has no `{param.name}`,"
                            f" which `{method.name}` requires",
                            hint=f"add `{param.name}:` under its `parameters:`",
                        )
            elif not any(param.name in s for s in scopes):
                raise ConfigError(
                    f"merge_method `{method.name}` requires parameter `{param.name}`",
                    hint=f"add `{param.name}:` under `parameters:`",
                )
