"""The mergekit YAML config: parse it as people write it, validate it fully before any weights are read.

`load_config` checks everything the text alone can tell (keys, method, parameter names, types, finite values
in their declared ranges, dtypes, layer ranges); `merge.plan` checks what needs the models' headers
(architectures, layer counts, tensors). Reading is bounded (file size, nesting, alias expansion, entries), so
a hostile file costs a one-line error, not memory or a traceback.
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
from mergeguard.merge import methods
from mergeguard.merge.methods.base import REQUIRED
from mergeguard.merge.params import cast, shown
from mergeguard.merge.tokenizer import CHAT_TEMPLATES, TokenizerSpec, check_references, parse_tokens

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
MAX_CONFIG_BYTES = 1 << 20
"""A config is a few KiB: a bigger file is a mistake (or an attack), refused before it is read."""
MAX_YAML_NODES = 1_000_000
"""Nodes after alias expansion: a billion-laughs config is refused before anything is built from it."""
MAX_YAML_DEPTH = 64
"""Nesting depth: mergekit's deepest form (a filtered gradient under a slice source) needs about 12."""
MAX_REF_CHARS = 4096
MAX_INPUTS = 1024
"""Model entries (or slice sources) in one config: far above real merges, far below a file-handle limit."""


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
    tokenizer_source: str | None = None  # `tokenizer_source`, or `tokenizer.source`
    tokenizer: TokenizerSpec | None = None  # set whenever either form is: the vocabulary is rebuilt
    chat_template: str | None = None
    text: str = ""
    warnings: list[str] = field(default_factory=list)
    unknown_keys: list[str] = field(default_factory=list)  # let through by `allow_unknown_keys` (recorded)

    def inputs(self) -> list[InputModel]:
        """Every model entry / slice source, in config order."""
        if self.models is not None:
            return list(self.models)
        return [src for sl in self.slices or [] for src in sl.sources]


def config_models(config: MergeConfig) -> list[str]:
    """Every input model reference (base included), each once, in config order."""
    refs = [config.base_model, *[s.base_model for s in config.slices or []]]
    return list(dict.fromkeys(ref for ref in [*refs, *(i.model for i in config.inputs())] if ref))


def _suggest(word: str, choices: Any) -> str | None:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return match[0] if match else None


def _unknown(word: str, where: str, choices: Any) -> ConfigError:
    guess = _suggest(word[:100], choices)
    hint = f"did you mean `{guess}`?" if guess else f"known keys: {', '.join(sorted(choices))}"
    return ConfigError(f"unknown key `{_clip(word)}` in {where}", hint=hint)


def _clip(text: str, limit: int = 80) -> str:
    """A name for an error message: a config's key or reference can be megabytes long."""
    return text if len(text) <= limit else text[:limit] + "..."


def _read_text(source: str | Path) -> str:
    """The config's text: from a path (or a one-line string naming a .yml or existing file), else as given."""
    if isinstance(source, Path):
        return _read_file(source)
    text = str(source)
    if "\n" not in text and len(text) < 4096:
        try:
            path = Path(text).expanduser()
        except RuntimeError:  # `~nobody/x.yml`: no such user
            path = Path(text)
        if path.suffix.lower() in (".yml", ".yaml") or path.is_file():
            return _read_file(path)
    if len(text.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config is larger than {MAX_CONFIG_BYTES >> 20} MiB", hint="a merge config is a few KiB"
        )
    return text


def _read_file(path: Path) -> str:
    """A regular file of at most MAX_CONFIG_BYTES, decoded as UTF-8 (a FIFO or a device is never opened)."""
    if not path.exists():
        raise ConfigError(f"config file {path} not found", hint="check the path")
    if not path.is_file():
        raise ConfigError(f"config {path} is not a regular file", hint="give the path of a YAML file")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:  # unreadable: permissions, an I/O error
        raise ConfigError(
            f"config file {path} cannot be read ({error.strerror})", hint="check its permissions"
        ) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB",
            hint="a merge config is a few KiB; check the path",
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError(
            f"config file {path} is not valid UTF-8 (line {line})", hint="save it as UTF-8 text"
        ) from None


def _check_tree(root: yaml.Node) -> None:
    """Check the composed YAML before anything is built from it, without expanding its aliases.

    Refuses duplicate keys (YAML keeps the last one silently), alias cycles (`&a [*a]`), nesting deeper than
    MAX_YAML_DEPTH and more than MAX_YAML_NODES nodes once aliases are expanded (the billion-laughs attack).
    An alias is the very node it names, so sizes are computed once per node: linear in the file's size.
    """
    size: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, depth), aliases expanded
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            open_nodes.discard(key)
            nodes = 1 + sum(size[id(child)][0] for child in children)
            depth = 1 + max((size[id(child)][1] for child in children), default=0)
            size[key] = (nodes, depth)
            line = node.start_mark.line + 1
            if nodes > MAX_YAML_NODES:
                raise ConfigError(
                    f"config expands to more than {MAX_YAML_NODES:,} YAML nodes (line {line})",
                    hint="write the config without nested `&anchor`/`*alias` repetition",
                )
            if depth > MAX_YAML_DEPTH:
                raise ConfigError(
                    f"config is nested more than {MAX_YAML_DEPTH} levels deep (line {line})",
                    hint="a merge config is a few levels deep; check the brackets and the aliases",
                )
        elif key not in size:
            if key in open_nodes:
                raise ConfigError(
                    f"config contains itself through an alias (line {node.start_mark.line + 1})",
                    hint="an `*alias` cannot point into its own `&anchor`",
                )
            open_nodes.add(key)
            _check_duplicates(node)
            stack.append((node, True))
            stack.extend((child, False) for child in children)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_duplicates(node: yaml.Node) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    seen: set[tuple[str, str]] = set()
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *defaults` may be overridden by the keys beside it
        if (key.tag, key.value) in seen:
            raise ConfigError(
                f"duplicate key `{_clip(key.value)}` at line {key.start_mark.line + 1} of the config",
                hint="keep one of them (YAML would silently keep the last)",
            )
        seen.add((key.tag, key.value))


def _parse_yaml(text: str) -> dict[str, Any]:
    """Safe YAML (libyaml when present: faster), bounded: see `_check_tree`."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(textwrap.dedent(text.expandtabs(2)))
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_tree(node)
        data = None if node is None else loader.construct_document(node)
    except yaml.reader.ReaderError as error:  # binary data: NUL and other control characters
        line = text.count("\n", 0, error.position) + 1
        raise ConfigError(
            f"config is not valid YAML at line {line}: {error.reason}", hint="a merge config is plain text"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or ""
        raise ConfigError(
            f"config is not valid YAML{where}" + (f": {_clip(problem)}" if problem else ""),
            hint="check the indentation and the colons",
        ) from None
    except RecursionError:  # PyYAML's pure-Python composer recurses once per level of nesting
        raise ConfigError("config is nested too deeply", hint="a merge config is a few levels deep") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError("config must be a YAML mapping", hint="start with `merge_method:` and `models:`")
    return data


def _ref(value: Any, where: str) -> str:
    if isinstance(value, dict) and "model" in value:  # mergekit's long form {model: {path: ...}}
        inner = value["model"]
        value = inner.get("path") if isinstance(inner, dict) else inner
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ConfigError(f"{where} has no model", hint="write `model: <folder or org/name>`")
    if not isinstance(value, str) or len(value) > MAX_REF_CHARS:
        raise ConfigError(
            f"the model of {where} is {shown(value)}, not a folder or hub id",
            hint="write `model: <folder or org/name>`",
        )
    return value.strip()


def _string(value: Any, key: str) -> str | None:
    """A top-level setting that must be text (or absent): `chat_template: 123` is refused here, not later."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"`{key}` must be a string, not {shown(value)}", hint=f"write `{key}: <text>`")
    return value


def _chat_template(value: Any) -> str | None:
    """`auto`, a known template name, or a Jinja template: checked before any weights are read."""
    template = _string(value, "chat_template")
    named = template in ("auto", *CHAT_TEMPLATES)
    if template and not named and "{{" not in template and "{%" not in template:
        raise ConfigError(
            f"chat_template `{_clip(template)}` is neither a Jinja template nor a known name",
            hint=f"write the template itself, or one of: auto, {', '.join(CHAT_TEMPLATES)}",
        )
    return template


class _Validator:
    """Walks the raw mapping once, building the dataclasses and collecting warnings."""

    def __init__(self, method: Any, methods: Any, *, allow_unknown: bool = False) -> None:
        self.method = method
        self.methods = methods
        self.warnings: list[str] = []
        self.config_keys = set(TOP_KEYS)
        self.allow_unknown = allow_unknown
        self.unknown_keys: list[str] = []
        # (entry, param, value, where) of non-base values, checked once the entry's base is known
        self.deferred: list[tuple[InputModel, Any, Any, str]] = []

    def unknown(self, word: str, where: str, choices: Any) -> None:
        """An unknown key: the did-you-mean error, or (with `allow_unknown_keys`) a warning, recorded."""
        if not self.allow_unknown:
            raise _unknown(word, where, choices)
        self.unknown_keys.append(f"{_clip(word)} ({where})")
        guess = _suggest(word[:100], choices)
        self.warnings.append(
            f"unknown key `{_clip(word)}` in {where} is ignored (--allow-unknown-keys)"
            + (f"; did you mean `{guess}`?" if guess else "")
        )

    def check_deferred(self, base_of: Any) -> None:
        """Check the values of non-base parameters (a TIES `weight`) now that each entry's base is known:
        the base's own value is never used and mergekit never reads it, so it is dropped unread (configs
        commonly give the base a weight: no warning, which `--strict` would make an error)."""
        for item, param, value, where in self.deferred:
            if item.model == base_of(item):
                del item.parameters[param.name]
            else:
                self.check_value(param, value, where)

    def params(self, raw: Any, where: str, *, owner: InputModel | None = None) -> dict[str, Any]:
        """The `parameters:` of `where`, each checked; `owner`: the model entry they belong to (None: a
        slice's, the module's or the top level's)."""
        per_model = owner is not None
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
                self.unknown(name, f"parameters of {where}", self.methods.ALL_PARAM_NAMES)
                continue
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
            if owner is not None and param.non_base:
                self.deferred.append((owner, param, value, where))
            else:
                self.check_value(param, value, where)
            out[name] = value
        return out

    def check_value(self, param: Any, value: Any, where: str) -> None:
        """Cast every leaf once now, so a bad value (wrong type, NaN, out of the declared range) fails before
        any weights are read. A gradient interpolates between its leaves, so checked leaves suffice."""
        name = param.name
        if isinstance(value, dict):
            value = [value]
        if isinstance(value, list):
            for entry in value:
                if isinstance(entry, dict):
                    extra = sorted(map(str, set(entry) - {"filter", "value"}))
                    if extra:
                        raise _unknown(extra[0], f"`{name}` filter entry in {where}", ["filter", "value"])
                    if "value" not in entry:
                        raise ConfigError(
                            f"`{name}` filter entry in {where} has no `value`",
                            hint="write `{filter: <part of a tensor name>, value: <number>}`",
                        )
                    if entry.get("filter") is not None and not isinstance(entry["filter"], str):
                        raise ConfigError(
                            f"`{name}` filter {shown(entry['filter'])} in {where} is not a string",
                            hint="write part of a tensor name, e.g. `filter: self_attn`",
                        )
                    self.check_value(param, entry["value"], where)
                else:
                    cast(entry, param.kind, name, param.valid)
        elif value is not None:
            cast(value, param.kind, name, param.valid)

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
            self.unknown(key, where, allowed)

    def model(self, raw: Any, where: str, *, slice_source: bool) -> InputModel:
        if isinstance(raw, str) and not slice_source:
            return InputModel(model=_ref(raw, where))
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{where} must be a mapping with `model:`",
                hint="write `- model: <folder or org/name>`"
                + (" with `layer_range: [start, end]`" if slice_source else ""),
            )
        self.misplaced(raw, SOURCE_KEYS if slice_source else MODEL_KEYS, where)
        revision = raw.get("revision")
        if revision is not None and not isinstance(revision, (str, int)):
            raise ConfigError(
                f"`revision` in {where} must be a branch, tag or commit, not {shown(revision)}",
                hint="write `revision: main` or a commit hash",
            )
        item = InputModel(
            model=_ref(raw.get("model"), where), revision=None if revision is None else str(revision)
        )
        item.parameters = self.params(raw.get("parameters"), where, owner=item)
        if slice_source:
            item.layer_range = _layer_range(raw.get("layer_range"), where)
        return item


def _layer_range(raw: Any, where: str) -> tuple[int, int]:
    """Two integers `[start, end)`: `[0.5, 1.5]` is refused, not truncated (the plan checks the end)."""
    if raw is None:
        raise ConfigError(f"{where} has no `layer_range`", hint="write `layer_range: [start, end]`")
    if not (
        isinstance(raw, list)
        and len(raw) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in raw)
    ):
        raise ConfigError(
            f"`layer_range: {shown(raw)}` in {where} must be two integers [start, end]",
            hint="write whole layer numbers, e.g. `layer_range: [0, 16]`",
        )
    start, end = raw
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


def read_yaml(source: str | Path) -> dict[str, Any]:
    """The config's raw mapping, read with every bound of `load_config` but none of its validation (for
    readers such as lineage that only need the model names of a config mergeguard cannot merge)."""
    return _parse_yaml(_read_text(source))


def load_config(source: str | Path, *, strict: bool = False, allow_unknown_keys: bool = False) -> MergeConfig:
    """Parse and validate a mergekit config (a path or the YAML text). Raises ConfigError on the first error.

    The returned config's `warnings` lists settings that have no effect; `strict=True` raises on them.
    An unknown key is an error with a suggestion; `allow_unknown_keys=True` (mergekit ignores them silently)
    makes it a warning and lists it in `unknown_keys`, which the merge records in the model card.
    """
    text = _read_text(source)
    raw = _parse_yaml(text)
    method = _method(raw, methods, allow_unknown_keys)
    check = _Validator(method, methods, allow_unknown=allow_unknown_keys)
    check.misplaced(raw, TOP_KEYS, "the config")
    body, module_params = _body(raw, check)
    config = MergeConfig(merge_method=method.name, module_parameters=module_params, text=text)
    if body.get("models"):
        if not isinstance(body["models"], list):
            raise ConfigError("`models` must be a list", hint="write one `- model: ...` entry per model")
        _check_count(len(body["models"]))
        config.models = [
            check.model(m, f"models[{i}]", slice_source=False) for i, m in enumerate(body["models"])
        ]
        _listed_once(config.models, "models")
    else:
        config.slices = _slices(body["slices"], check)
    _top_level(config, raw, check)
    _check_method_needs(config, method)
    config.warnings = check.warnings
    config.unknown_keys = check.unknown_keys
    if strict and config.warnings:
        raise ConfigError(f"{config.warnings[0]} (--strict)", hint="fix the config or drop --strict")
    return config


def _method(raw: dict[str, Any], methods: Any, allow_unknown_keys: bool) -> Any:
    """The merge method, once the top-level keys and text settings are known good: the method decides
    which parameter names the rest of the config may use."""
    for key in raw:
        if str(key) not in TOP_KEYS and str(key) not in methods.ALL_PARAM_NAMES and not allow_unknown_keys:
            raise _unknown(str(key), "the config", TOP_KEYS)
    for key in ("merge_method", "dtype", "out_dtype", "tokenizer_source", "name"):
        _string(raw.get(key), key)
    if not raw.get("merge_method"):
        raise ConfigError("config has no `merge_method`", hint=f"choose one of {', '.join(methods.METHODS)}")
    return methods.get_method(_clip(raw["merge_method"].strip()))


def _body(raw: dict[str, Any], check: _Validator) -> tuple[dict[str, Any], dict[str, Any]]:
    """The mapping holding `models:` or `slices:` (the config, or its single module) and the module's
    parameters: mergekit's three forms reduce to one here."""
    forms = [k for k in ("models", "slices", "modules") if raw.get(k)]
    if len(forms) != 1:
        raise ConfigError(
            "config needs exactly one of `models`, `slices` or `modules`"
            + (f" (it has {', '.join(forms)})" if forms else ""),
            hint="list the models to merge under `models:`",
        )
    if forms[0] != "modules":
        return raw, {}
    modules = raw["modules"]
    if not isinstance(modules, dict) or len(modules) != 1:
        raise ConfigError(
            "only a single module (`modules: {default: ...}`) is supported",
            hint="merge multi-module models one module at a time",
        )
    ((module_name, body),) = modules.items()
    where = f"module `{_clip(str(module_name))}`"
    if not isinstance(body, dict):
        raise ConfigError(
            f"{where} must be a mapping with `slices:` or `models:`", hint="list the models under it"
        )
    check.misplaced(body, MODULE_KEYS, where)
    module_params = check.params(body.get("parameters"), where)
    inner = [k for k in ("models", "slices") if body.get(k)]
    if len(inner) != 1:
        raise ConfigError(
            f"{where} needs exactly one of `models` or `slices`", hint="keep one of them under the module"
        )
    return body, module_params


def _slices(raw: Any, check: _Validator) -> list[OutputSlice]:
    """The `slices:` list, each slice's sources checked together (listed once, equal layer counts)."""
    if not isinstance(raw, list):
        raise ConfigError("`slices` must be a list", hint="write one `- sources: [...]` entry per slice")
    listed = [sl.get("sources") for sl in raw if isinstance(sl, dict)]
    _check_count(sum(len(s) for s in listed if isinstance(s, list)))
    slices = []
    for i, sl in enumerate(raw):
        where = f"slices[{i}]"
        if not isinstance(sl, dict) or not sl.get("sources"):
            raise ConfigError(f"{where} has no `sources`", hint="write `- sources: [{model, layer_range}]`")
        check.misplaced(sl, SLICE_KEYS, where)
        if not isinstance(sl["sources"], list):
            raise ConfigError(
                f"`sources` of {where} must be a list", hint="write `- sources: [{model, layer_range}]`"
            )
        if sl.get("residual_weight") is not None:
            cast(sl["residual_weight"], float, "residual_weight")
        sources = [
            check.model(s, f"{where}.sources[{j}]", slice_source=True) for j, s in enumerate(sl["sources"])
        ]
        _listed_once(sources, f"the sources of {where}")
        lengths = {s.layer_range[1] - s.layer_range[0] for s in sources if s.layer_range}
        if len(lengths) > 1:
            raise ConfigError(
                f"the sources of {where} have unequal layer counts ({', '.join(map(str, sorted(lengths)))})",
                hint="give every source of a slice a layer_range of the same length",
            )
        base = _ref(sl["base_model"], f"{where}.base_model") if sl.get("base_model") else None
        slices.append(
            OutputSlice(
                sources=sources,
                parameters=check.params(sl.get("parameters"), where),
                base_model=base,
            )
        )
    return slices


def _top_level(config: MergeConfig, raw: dict[str, Any], check: _Validator) -> None:
    """The settings outside the model list (base, parameters, dtypes, chat template, tokenizer), read
    once the entries exist: the deferred non-base values need each entry's base."""
    config.base_model = _ref(raw["base_model"], "base_model") if raw.get("base_model") else None
    slice_base = {id(src): sl.base_model for sl in config.slices or [] for src in sl.sources}
    check.check_deferred(lambda item: slice_base.get(id(item)) or config.base_model)
    config.parameters = check.params(raw.get("parameters"), "the top-level parameters")
    config.dtype = _dtype(raw.get("dtype"), "dtype")
    config.out_dtype = _dtype(raw.get("out_dtype"), "out_dtype")
    config.chat_template = _chat_template(raw.get("chat_template"))
    config.tokenizer = _tokenizer(raw, check)
    config.tokenizer_source = config.tokenizer.source if config.tokenizer else None
    if config.tokenizer is not None:
        check_references(config.tokenizer, config_models(config))


def _check_count(entries: int) -> None:
    if entries > MAX_INPUTS:
        raise ConfigError(
            f"config lists {entries} model entries; mergeguard merges at most {MAX_INPUTS}",
            hint="merge in stages: merge groups of models, then merge the results",
        )


def _listed_once(items: list[InputModel], where: str) -> None:
    """mergekit keys a slice's inputs by model, so a model listed twice counts once there: refuse it."""
    seen: set[str] = set()
    for item in items:
        if item.model in seen:
            raise ConfigError(
                f"model {_clip(item.model)} is listed twice in {where}",
                hint="list each model once (mergekit would silently count it once)",
            )
        seen.add(item.model)


def _tokenizer(raw: dict[str, Any], check: _Validator) -> TokenizerSpec | None:
    """`tokenizer_source: X` or the `tokenizer:` section (source defaults to `union`, as in mergekit)."""
    if raw.get("tokenizer_source") is not None and raw.get("tokenizer") is not None:
        raise ConfigError("config sets both `tokenizer_source` and `tokenizer`", hint="keep one of them")
    if raw.get("tokenizer") is None:
        source = _string(raw.get("tokenizer_source"), "tokenizer_source")
        return TokenizerSpec(source.strip()) if source is not None else None
    section = raw["tokenizer"]
    if not isinstance(section, dict):
        raise ConfigError("`tokenizer` must be a mapping", hint="write `tokenizer: {source: base}`")
    check.misplaced(section, TOKENIZER_KEYS, "the tokenizer section")
    source = _string(section.get("source", "union"), "tokenizer.source") or "union"
    pad = section.get("pad_to_multiple_of")
    if pad is not None and (not isinstance(pad, int) or isinstance(pad, bool) or not 1 <= pad <= 1 << 20):
        raise ConfigError(
            f"`tokenizer.pad_to_multiple_of` = {shown(pad)} is not a whole number from 1 to {1 << 20}",
            hint="write e.g. `pad_to_multiple_of: 64`",
        )
    return TokenizerSpec(source.strip(), parse_tokens(section.get("tokens")), pad)


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
                f" in {where}, got {count}",
                hint="list more models (with `base_model:`, the base counts too)",
            )
        if method.max_models is not None and count > method.max_models:
            raise ConfigError(
                f"merge_method `{method.name}` takes at most {method.max_models} models"
                f" in {where}, got {count}",
                hint="list fewer models, or choose a method that merges more",
            )
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
