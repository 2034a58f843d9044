"""Merging models whose vocabularies differ: mergekit's `tokenizer_source` / `tokenizer:` semantics.

The output vocabulary is the base model's (`base`), the union of every model's (`union`), or one model's,
plus the tokens named under `tokenizer.tokens`. Every vocabulary-indexed tensor (embeddings, lm_head) of
every input, base included, is re-indexed to that vocabulary before the merge method sees it, so a task
vector subtracts the base's row of the same token. A row a model lacks gets, as in mergekit: the only
model that has the token, else the base's, else the mean over the models that have it (zero if none); a
token configured under `tokens:` takes its declared source (a model, one model's token, or zero) where a
model lacks it, or everywhere with `force: true`. `pad_to_multiple_of` appends rows holding the mean row.

Differences from mergekit 0.1.5, on purpose: tokens the union adds are ordered by each model's token id
(mergekit follows a hash map's order, which changes from run to run), and a model whose tokenizer cannot
be loaded is an error (mergekit assumes it equals the base's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mergeguard.errors import ConfigError

if TYPE_CHECKING:
    from mergeguard.merge.plan import SourceModel

CHAT_TEMPLATES = {
    # The names mergekit 0.1.5 knows, written here: chatml, llama3 and mistral render exactly what
    # mergekit's do (tested); alpaca and exaone render their formats without mergekit's stray whitespace
    # (its alpaca joins the last instruction and "### Response:" with no blank line).
    "alpaca": (
        "{% set ns = namespace(parts=[]) %}{% for message in messages %}"
        "{% if message['role'] == 'system' %}{% set ns.parts = ns.parts + [message['content'] | trim] %}"
        "{% elif message['role'] == 'user' %}"
        "{% set ns.parts = ns.parts + ['### Instruction:\n' + message['content'] | trim] %}"
        "{% elif message['role'] == 'user_context' %}"
        "{% set ns.parts = ns.parts + ['### Input:\n' + message['content'] | trim] %}"
        "{% elif message['role'] == 'assistant' %}"
        "{% set ns.parts = ns.parts + ['### Response:\n' + message['content'] | trim] %}{% endif %}"
        "{% endfor %}{{ ns.parts | join('\n\n') }}"
        "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}"
        "{{ '\n\n### Response:\n' if ns.parts else '### Response:\n' }}{% endif %}"
    ),
    "chatml": (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "exaone": (
        "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}{{ '[|system|][|endofturn|]\n' }}{% endif %}"
        "{{ '[|' + message['role'] + '|]' + message['content'] }}"
        "{{ '\n' if message['role'] == 'user' else '[|endofturn|]\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '[|assistant|]' }}{% endif %}"
    ),
    "llama3": (
        "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
        " + '<|eot_id|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "mistral": (
        "{% if messages and messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
        "{% set turns = messages[1:] %}{% else %}{% set turns = messages %}{% endif %}{{ bos_token }}"
        "{% for message in turns %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('After the optional system message, roles must alternate user/assistant') }}"
        "{% endif %}{% if message['role'] == 'user' %}"
        "{{ ' [INST] ' + (system + '\n\n' if loop.first and system is defined else '')"
        " + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
        "{% else %}{{ raise_exception('Only user and assistant roles are supported, after an optional"
        " system message') }}{% endif %}{% endfor %}"
    ),
}


TOKEN_KEYS = ("source", "force")
SOURCE_KEYS = ("kind", "model", "token", "token_id")


@dataclass(frozen=True)
class TokenSource:
    """Where a configured token's embedding comes from: `model` (its own row of that token, or of
    `token` / `token_id` when given), or zero when `zero` is set."""

    model: str | None = None
    token: str | None = None
    token_id: int | None = None
    zero: bool = False
    force: bool = False


@dataclass(frozen=True)
class TokenizerSpec:
    """The config's tokenizer settings: `source` is `base`, `union` or a model reference."""

    source: str
    tokens: dict[str, TokenSource] = field(default_factory=dict)
    pad_to_multiple_of: int | None = None


def parse_tokens(raw: Any) -> dict[str, TokenSource]:
    """`tokenizer.tokens` as mergekit writes it: `{token: {source: <model | {kind: ...}>, force: bool}}`."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("`tokenizer.tokens` must be a mapping", hint="write `<token>: {source: <model>}`")
    tokens: dict[str, TokenSource] = {}
    for token, entry in raw.items():
        where = f"`tokenizer.tokens` entry `{str(token)[:80]}`"
        entry = {} if entry is None else entry
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a mapping", hint="write `{source: <model>, force: false}`")
        extra = sorted(map(str, set(entry) - set(TOKEN_KEYS)))
        if extra:
            raise ConfigError(f"unknown key `{extra[0]}` in {where}", hint="use `source` and `force`")
        force = entry.get("force", False)
        if not isinstance(force, bool):
            raise ConfigError(f"`force` in {where} must be true or false", hint="write `force: true`")
        tokens[str(token)] = _token_source(entry.get("source"), force, where)
    return tokens


def _token_source(source: Any, force: bool, where: str) -> TokenSource:
    if source is None:
        if force:
            raise ConfigError(f"{where} forces a token without a `source`", hint="add `source: <model>`")
        return TokenSource()
    if isinstance(source, str):
        return TokenSource(model=source, force=force)
    if not isinstance(source, dict):
        raise ConfigError(f"`source` of {where} must be a model or a mapping", hint="write `source: <model>`")
    extra = sorted(map(str, set(source) - set(SOURCE_KEYS)))
    if extra:
        raise ConfigError(f"unknown key `{extra[0]}` in the source of {where}", hint="use kind, model, token")
    kind = source.get("kind")
    if kind == "zero":
        return TokenSource(zero=True, force=force)
    if kind != "model_token":
        raise ConfigError(
            f"`kind: {kind}` in the source of {where} is unknown",
            hint="use `kind: model_token` or `kind: zero`",
        )
    model, token, token_id = source.get("model"), source.get("token"), source.get("token_id")
    if not isinstance(model, str) or (token is None) == (token_id is None):
        raise ConfigError(
            f"the `model_token` source of {where} needs a `model` and one of `token` or `token_id`",
            hint="write `{kind: model_token, model: <model>, token: <text>}`",
        )
    if token_id is not None and (not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0):
        raise ConfigError(
            f"`token_id` in {where} must be a whole number >= 0", hint="write e.g. `token_id: 2`"
        )
    return TokenSource(
        model=model, token=None if token is None else str(token), token_id=token_id, force=force
    )


@dataclass
class Vocabulary:
    """The output tokenizer and, per input model, the row of each output token (-1: the model lacks it)."""

    tokenizer: Any  # a transformers PreTrainedTokenizerFast, saved into the output folder
    tokens: list[str]  # output tokens in id order
    rows: dict[str, np.ndarray]  # model ref -> int64 array, one entry per output token
    vocabs: dict[str, dict[str, int]]  # model ref -> its own token -> id (for `model_token` sources)
    spec: TokenizerSpec
    base: str

    @property
    def size(self) -> int:
        """Output rows: the vocabulary, padded up to `pad_to_multiple_of`."""
        size, multiple = len(self.tokens), self.spec.pad_to_multiple_of
        return -(-size // multiple) * multiple if multiple else size

    def align(self, name: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every input's rows re-indexed to the output vocabulary (axis 0), as float arrays."""
        refs = list(arrays)
        present = np.stack([self.rows[ref] >= 0 for ref in refs])
        configured = self.spec.tokens
        forced = np.zeros(len(self.tokens), bool)
        for token, cfg in configured.items():
            if cfg.force:
                forced[self.tokens.index(token)] = True
        needs = np.flatnonzero(forced | ~present.all(axis=0))
        shape = next(iter(arrays.values())).shape[1:]
        defaults = np.zeros((len(needs), *shape), next(iter(arrays.values())).dtype)
        for k, token_id in enumerate(needs.tolist()):
            defaults[k] = self._default_row(name, int(token_id), refs, present[:, token_id], arrays)
        out: dict[str, np.ndarray] = {}
        for i, ref in enumerate(refs):
            rows = self.rows[ref]
            new = np.zeros((self.size, *shape), arrays[ref].dtype)
            own = np.flatnonzero(present[i] & ~forced)
            new[own] = arrays[ref][rows[own]]
            new[needs] = np.where(
                (present[i, needs] & ~forced[needs]).reshape(-1, *[1] * len(shape)), new[needs], defaults
            )
            if self.size > len(self.tokens):  # padding rows: the mean token (Hewitt's vocabulary expansion)
                new[len(self.tokens) :] = new[: len(self.tokens)].mean(axis=0)
            out[ref] = new
        return out

    def _default_row(
        self, name: str, token_id: int, refs: list[str], has: np.ndarray, arrays: dict[str, np.ndarray]
    ) -> np.ndarray:
        """The embedding a model that lacks (or must replace) token `token_id` gets."""
        token = self.tokens[token_id]
        cfg = self.spec.tokens.get(token)
        if cfg is None or (cfg.model is None and not cfg.zero):  # mergekit's automatic choice
            holders = [ref for ref, h in zip(refs, has, strict=True) if h]
            if not holders:
                return np.zeros(arrays[refs[0]].shape[1:], arrays[refs[0]].dtype)
            if len(holders) == 1:
                return arrays[holders[0]][self.rows[holders[0]][token_id]]
            if self.base in holders:
                return arrays[self.base][self.rows[self.base][token_id]]
            return np.mean([arrays[r][self.rows[r][token_id]] for r in holders], axis=0)
        if cfg.zero:
            return np.zeros(arrays[refs[0]].shape[1:], arrays[refs[0]].dtype)
        model = cfg.model
        if model not in arrays:
            raise ConfigError(
                f"token {token!r} takes its embedding from {model}, which has no tensor {name} here",
                hint="name a model that is merged into this tensor",
            )
        if cfg.token is None and cfg.token_id is None:
            row = int(self.rows[model][token_id])
            if row < 0:
                raise ConfigError(
                    f"token {token!r} takes its embedding from {model}, whose vocabulary lacks it",
                    hint="use `{kind: model_token, model: ..., token: <a token it has>}`",
                )
            return arrays[model][row]
        row = cfg.token_id if cfg.token_id is not None else self.vocabs[model].get(str(cfg.token), -1)
        if row < 0 or row >= arrays[model].shape[0]:
            what = f"token_id {cfg.token_id}" if cfg.token_id is not None else f"token {cfg.token!r}"
            raise ConfigError(
                f"{what} (the source of {token!r}) is not in {model}'s vocabulary",
                hint="name a token or id the model has",
            )
        return arrays[model][row]


def check_references(spec: TokenizerSpec, refs: list[str]) -> None:
    """Every model the tokenizer settings name must be one of the config's models (`refs`)."""
    named = [("tokenizer source", spec.source)] if spec.source not in ("base", "union") else []
    named += [(f"the source of token {t!r}", c.model) for t, c in spec.tokens.items() if c.model]
    for what, ref in named:
        if ref not in refs:
            raise ConfigError(
                f"{what} `{ref[:80]}` is neither `base`, `union` nor a model of the config"
                if what == "tokenizer source"
                else f"{what[:120]} is {ref[:80]}, which is not a model of the config",
                hint="name one of the config's models, as written under `models:`",
            )


def vocab_size(model: SourceModel) -> int | None:
    """The embedding rows config.json declares (`vocab_size`, text_config's included)."""
    for scope in (model.config, model.config.get("text_config") or {}):
        if isinstance(scope, dict) and isinstance(scope.get("vocab_size"), int):
            return int(scope["vocab_size"])
    return None


def _plain_vocab(model: SourceModel) -> dict[str, int] | None:
    """token -> id from the model's tokenizer.json (added tokens included), read without transformers."""
    path = model.path / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        vocab = dict(data["model"]["vocab"])
        vocab.update({entry["content"]: entry["id"] for entry in data.get("added_tokens") or []})
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # an unusual file: the full path (transformers) decides
    return vocab if isinstance(vocab, dict) else None


def needs_alignment(spec: TokenizerSpec, models: dict[str, SourceModel]) -> bool:
    """False when the tokenizer setting changes nothing: every model has the same tokenizer.json vocabulary,
    one row per token (no padding rows), and no tokens or padding are configured. Then the tokenizer files
    are copied and the weights merged as they are, without loading transformers (README, Performance)."""
    if spec.tokens or spec.pad_to_multiple_of:
        return True
    vocabs = [_plain_vocab(model) for model in models.values()]
    first = vocabs[0]
    if first is None or any(v != first for v in vocabs[1:]):
        return True
    return any(vocab_size(model) != len(first) for model in models.values()) or sorted(
        first.values()
    ) != list(range(len(first)))


def _load(model: SourceModel) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model.path), use_fast=True, trust_remote_code=False)
    except Exception as error:  # noqa: BLE001 - any loader failure is the same problem to the user
        raise ConfigError(
            f"the tokenizer of {model.ref} cannot be loaded ({type(error).__name__}: {str(error)[:120]})",
            hint="give the model its tokenizer files, or merge without `tokenizer_source`",
        ) from None


def _stripped(model: SourceModel) -> Any:
    """The model's tokenizer without the tokens whose id has no embedding row (ids >= vocab_size)."""
    tokenizer = _load(model)
    size = vocab_size(model) or len(tokenizer.get_vocab())
    unused = {tok for tok, idx in tokenizer.get_vocab().items() if idx >= size}
    if not unused:
        return tokenizer
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    if data["model"].get("type") != "BPE":
        raise ConfigError(
            f"the tokenizer of {model.ref} has tokens beyond its {size} embedding rows and is not BPE",
            hint="merge it with `tokenizer_source` naming another model",
        )
    data["added_tokens"] = [entry for entry in data.get("added_tokens") or [] if entry["id"] < size]
    data["model"]["vocab"] = {t: i for t, i in data["model"]["vocab"].items() if t not in unused}

    def keep(merge: Any) -> bool:
        parts = merge.split(" ") if isinstance(merge, str) else merge
        return not any(part in unused for part in parts)

    data["model"]["merges"] = [m for m in data["model"].get("merges") or [] if keep(m)]
    rebuilt = type(tokenizer.backend_tokenizer)  # tokenizers.Tokenizer, without importing it for every config
    tokenizer._tokenizer = rebuilt.from_str(json.dumps(data))
    return tokenizer


def _union(base_tok: Any, tokenizers: dict[str, Any], models: dict[str, SourceModel], folder: Path) -> Any:
    """The base tokenizer plus every other model's tokens (ids below its vocab_size), in id order."""
    from transformers import AutoTokenizer

    regular: dict[str, None] = {}
    added: dict[str, Any] = {}
    for ref, tokenizer in tokenizers.items():
        size = vocab_size(models[ref]) or len(tokenizer.get_vocab())
        decoder = tokenizer.added_tokens_decoder
        special = {info.content for info in decoder.values()}
        for tok, idx in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
            if idx < size and tok not in special:
                regular.setdefault(tok, None)
        for idx, info in sorted(decoder.items()):
            if idx < size:
                added.setdefault(info.content, info)
    base_tok.save_pretrained(folder)  # a copy, so that the base's own tokenizer is never changed
    out = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    own = base_tok.get_vocab()
    for tok in regular:
        if tok not in added and tok not in own:
            out.add_tokens(tok)
    for info in added.values():
        out.add_tokens(info)
    return out


def build_vocabulary(
    spec: TokenizerSpec, models: dict[str, SourceModel], base: str, scratch: Path
) -> Vocabulary:
    """The output tokenizer and every model's row map; `scratch` is an empty folder for a copy."""
    base_tok = _stripped(models[base])
    tokenizers = {base: base_tok} | {ref: _load(m) for ref, m in models.items() if ref != base}
    if spec.source == "base":
        out = base_tok
    elif spec.source == "union":
        out = _union(base_tok, tokenizers, models, scratch)
    elif spec.source in models:
        out = _load(models[spec.source])
    else:
        raise ConfigError(
            f"tokenizer source `{spec.source[:80]}` is neither `base`, `union` nor a model of the config",
            hint="name one of the config's models",
        )
    existing = set(out.get_vocab())
    for token in spec.tokens:
        if token not in existing:
            out.add_tokens(token)
            existing.add(token)
    vocab = out.get_vocab()
    tokens = [""] * len(vocab)
    for tok, idx in vocab.items():
        if idx >= len(tokens):
            raise ConfigError(
                f"the output tokenizer's ids are not contiguous (token {tok!r} has id {idx})",
                hint="choose another tokenizer source",
            )
        tokens[idx] = tok
    rows: dict[str, np.ndarray] = {}
    vocabs = {ref: tok.get_vocab() for ref, tok in tokenizers.items()}
    for ref in models:
        own, size = vocabs[ref], vocab_size(models[ref]) or len(vocabs[ref])
        index = np.array([own.get(tok, -1) for tok in tokens], np.int64)
        index[index >= size] = -1
        rows[ref] = index
    return Vocabulary(out, tokens, rows, vocabs, spec, base)
