"""A model's training data: the datasets its card declares, `--dataset MODEL=REF` overrides, and what it
inherits from its parents (card `base_model`, or the inputs of a `mergekit_config.yml` in its folder),
recursively. Each dataset remembers which ancestor it came through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergeguard.errors import MergeguardError
from mergeguard.merge.config import config_models, load_config, read_yaml
from mergeguard.refs import read_model_card, resolve_model

MERGE_CONFIG = "mergekit_config.yml"
MAX_DEPTH = 16


@dataclass
class DeclaredDataset:
    """One dataset a model was trained on; `inherited_from` is None for the model's own."""

    ref: str
    declared_by: str  # the model whose card (or override) names it
    inherited_from: str | None
    source: str  # "card" | "override"


@dataclass
class Lineage:
    """A model, its resolved folder and every dataset in its lineage."""

    model: str
    folder: Path | None
    datasets: list[DeclaredDataset] = field(default_factory=list)
    ancestors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def config_inputs(path: Path) -> list[str]:
    """Every input model of a merge config (base included), via the merge engine's parser when it accepts
    the file, else a minimal read of `models`/`slices`/`base_model` (lineage only needs the names)."""
    try:
        return config_models(load_config(path, allow_unknown_keys=True))
    except MergeguardError:
        pass
    try:
        raw = read_yaml(Path(path))  # bounded as load_config is: size, nesting, aliases, UTF-8
    except OSError as error:
        raise MergeguardError(f"cannot read merge config {path} ({error})", hint="fix the YAML") from error
    refs: list[str] = []

    def add(value: Any) -> None:
        if isinstance(value, dict):
            value = value.get("model")
        if isinstance(value, str) and value and value not in refs:
            refs.append(value)

    if isinstance(raw, dict):
        add(raw.get("base_model"))
        for entry in raw.get("models") or []:
            add(entry)
        for piece in raw.get("slices") or []:
            if isinstance(piece, dict):
                add(piece.get("base_model"))
                for source in piece.get("sources") or []:
                    add(source)
    return refs


def _override_for(model: str, folder: Path | None, overrides: dict[str, list[str]]) -> list[str] | None:
    """The override datasets for a model, matched by the reference as written, its folder or its name."""
    for key, refs in overrides.items():
        if key == model:
            return refs
        if folder is not None:
            candidate = Path(key).expanduser()
            if candidate.exists() and candidate.resolve() == folder.resolve():
                return refs
            if key == folder.name:
                return refs
    return None


def _parents(folder: Path | None, card_bases: list[str]) -> list[str]:
    parents = list(card_bases)
    if folder is not None and (folder / MERGE_CONFIG).is_file():
        for ref in config_inputs(folder / MERGE_CONFIG):
            if ref not in parents:
                parents.append(ref)
    return parents


def resolve_lineage(
    model: str, overrides: dict[str, list[str]] | None = None, *, local_files_only: bool = False
) -> Lineage:
    """Collect the datasets of `model` and its ancestors. Unreachable parents become problems, not errors;
    the model itself must resolve."""
    overrides = overrides or {}
    lineage = Lineage(model=model, folder=None)
    seen: set[str] = set()
    known: set[str] = set()

    def visit(ref: str, via: str | None, depth: int) -> None:
        if ref in seen or depth > MAX_DEPTH:
            return
        seen.add(ref)
        try:
            folder = resolve_model(ref, local_files_only=local_files_only or via is not None)
        except MergeguardError as error:
            if via is None:
                raise
            folder = None
            lineage.problems.append(f"ancestor {ref} of {model} could not be read ({error.message})")
        if via is None:
            lineage.folder = folder
        else:
            lineage.ancestors.append(ref)
        card = read_model_card(folder) if folder is not None else None
        override = _override_for(ref, folder, overrides)
        if override is not None:
            refs, source = override, "override"
        else:
            refs, source = (card.datasets if card else []), "card"
        # Parents first: a merge's card repeats its inputs' datasets (the union), and each dataset belongs
        # to the deepest ancestor that declares it, so findings name the model that was really trained on it.
        for parent in _parents(folder, card.base_model if card else []):
            visit(parent, ref, depth + 1)
        for dataset in refs:  # an ancestor's dataset is marked with that ancestor
            if dataset not in known:
                known.add(dataset)
                lineage.datasets.append(DeclaredDataset(dataset, ref, None if via is None else ref, source))

    visit(model, None, 0)
    return lineage
