"""Family check: are the models of a merge related in weight space?

Two models can share architecture, layer count and every tensor shape and still come from independent
pre-training runs (a Llama fine-tune beside a Mistral fine-tune); averaging them produces gibberish.
Fine-tunes of one base stay nearly parallel to it: the centred cosine between their weights is close to 1,
while for independently initialised models it is close to 0. We measure it on a few sampled tensors read
lazily (rows of the embedding matrix, one attention and one MLP weight from a middle layer), so the check
costs a few megabytes of reads even for large models.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from mergeguard.errors import RefusalError
from mergeguard.merge.io import (
    DTYPE_NAMES,
    FLOAT_DTYPES,
    read_header,
    safetensors_weights,
)
from mergeguard.merge.kernels.floats import STORAGE, widen
from mergeguard.refs import ModelRef, parse_model_ref, resolve_model

# Calibrated on real training runs of the tiny fixtures (tests/conftest.py `trained`, README "Family check"):
# fine-tunes (AdamW, lr 3e-4, 200 steps) measured 0.97-0.99 against their base and each other; an extreme
# one (lr 1e-2, 300 steps, which wrecks the model: perplexity 9.2 -> 56149) still 0.58; independently
# initialised models of the same shapes |s| <= 0.02, also after training both on the same text. 0.2 is ten
# times that noise (which shrinks further with real models' larger tensors) and far below any fine-tune.
CALIBRATED = 0.2

ROW_BLOCKS = 8  # contiguous blocks of rows read from each sampled tensor
ROWS_PER_BLOCK = 8

_EMBEDDING = re.compile(r"(embed_tokens|wte|word_embeddings|embed_in|tok_embeddings)\.weight$")
_LAYER = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")
_ATTENTION = ("q_proj", "query", "qkv", "c_attn", "attn", "attention")
_MLP = ("up_proj", "gate_up_proj", "fc1", "c_fc", "gate_proj", "w1", "mlp", "feed_forward", "ffn")


class UnrelatedModelsError(RefusalError):
    """Merge inputs that do not descend from one base: their weights are not parallel."""

    def __init__(self, pair: PairSimilarity, threshold: float) -> None:
        super().__init__(
            f"models {pair.a} and {pair.b} look unrelated: weight similarity {pair.similarity:.3f} is below "
            f"{threshold:g} (fine-tunes of one base measure close to 1)",
            hint="merge fine-tunes of one base model, or pass --allow-unrelated to merge them anyway",
        )
        self.pair = pair
        self.threshold = threshold


@dataclass
class PairSimilarity:
    """The centred cosine similarity of two models on the sampled tensors (mean over `tensors`)."""

    a: str
    b: str
    similarity: float
    tensors: list[str]
    related: bool
    per_tensor: dict[str, float] = field(default_factory=dict)
    note: str = ""


@dataclass
class FamilyReport:
    """Every compared pair; `related` is False when any pair falls below `threshold`."""

    pairs: list[PairSimilarity]
    threshold: float
    related: bool
    base: str | None = None

    def unrelated_pairs(self) -> list[PairSimilarity]:
        """The pairs below the threshold, least similar first."""
        return sorted((p for p in self.pairs if not p.related), key=lambda p: p.similarity)

    def raise_if_unrelated(self) -> None:
        """Raise `UnrelatedModelsError` for the least similar pair, if any pair is unrelated."""
        bad = self.unrelated_pairs()
        if bad:
            raise UnrelatedModelsError(bad[0], self.threshold)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _shapes(index: dict[str, Path]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(set(index.values())):
        header = read_header(path)[1]
        shapes.update({name: tuple(header[name]["shape"]) for name in header if index.get(name) == path})
    return shapes


def _pick(names: list[str], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        for name in names:
            if key in name:
                return name
    return None


def sample_tensor_names(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """The tensors the family check reads: the embedding, one attention and one MLP weight mid-depth."""
    matrices = sorted(n for n, s in shapes.items() if len(s) == 2 and n.endswith("weight"))
    chosen = [n for n in matrices if _EMBEDDING.search(n)][:1]
    if not chosen:
        chosen = [n for n in matrices if "embed" in n][:1]
    layers = sorted({int(m.group(1)) for n in matrices if (m := _LAYER.search(n))})
    if layers:
        middle = layers[len(layers) // 2]
        in_layer = [n for n in matrices if (m := _LAYER.search(n)) and int(m.group(1)) == middle]
        for keys in (_ATTENTION, _MLP):
            name = _pick([n for n in in_layer if n not in chosen], keys)
            if name:
                chosen.append(name)
    if len(chosen) < 2:  # an unfamiliar layout: fall back to the largest matrices
        chosen += [n for n in sorted(matrices, key=lambda n: -math.prod(shapes[n])) if n not in chosen]
    return chosen[:3]


def _row_blocks(rows: int) -> list[tuple[int, int]]:
    """Evenly spaced row ranges, identical for every model with at least `rows` rows."""
    if rows <= ROW_BLOCKS * ROWS_PER_BLOCK:
        return [(0, rows)]
    step = rows // ROW_BLOCKS
    return [(i * step, i * step + ROWS_PER_BLOCK) for i in range(ROW_BLOCKS)]


class _Sampler:
    """Reads (and caches) the sampled rows of one model's tensors: only those rows' bytes, with numpy."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.index, self._headers = safetensors_weights(self.folder)
        self.shapes = {n: tuple(self._headers[p][1][n]["shape"]) for n, p in self.index.items()}
        self._cache: dict[tuple[str, int], Any] = {}

    def floating(self, name: str) -> bool:
        """Whether `name` is stored as floats (only those are compared: an integer tensor is no weight)."""
        return DTYPE_NAMES[self._headers[self.index[name]][1][name]["dtype"]] in FLOAT_DTYPES

    def rows(self, name: str, rows: int) -> Any:
        key = (name, rows)
        if key not in self._cache:
            path = self.index[name]
            start, header = self._headers[path]  # checked: every row read below lies inside the file
            entry = header[name]
            dtype = entry["dtype"]
            storage = STORAGE.get(DTYPE_NAMES[dtype]) or np.dtype(DTYPE_NAMES[dtype])
            row_bytes = math.prod(entry["shape"][1:]) * storage.itemsize
            offset = start + entry["data_offsets"][0]
            parts = []
            with path.open("rb") as handle:
                for first, stop in _row_blocks(rows):
                    handle.seek(offset + first * row_bytes)
                    raw = np.frombuffer(handle.read((stop - first) * row_bytes), dtype=storage)
                    wide = np.empty(raw.size, np.float32)
                    parts.append(widen(raw, DTYPE_NAMES[dtype], wide, np.empty(raw.size, np.uint32)))
            self._cache[key] = np.concatenate(parts).astype(np.float64)
        return self._cache[key]


def centred_cosine(x: Any, y: Any) -> float:
    """Cosine of the mean-centred vectors (Pearson correlation); 0.0 when either is constant."""
    x = x - x.mean()
    y = y - y.mean()
    norm = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y) / norm if norm > 0 else 0.0


def compare(a: _Sampler, b: _Sampler, names: list[str], threshold: float) -> PairSimilarity:
    """Similarity of two models on `names`; tensors missing or shaped differently in one are skipped.

    Embeddings may differ in their number of rows (a fine-tune that added tokens): we compare the rows both
    have. A pair with nothing comparable is left to the merge engine's shape checks (related, with a note).
    """
    per_tensor: dict[str, float] = {}
    for name in names:
        if name not in a.shapes or name not in b.shapes or not (a.floating(name) and b.floating(name)):
            continue
        sa, sb = a.shapes[name], b.shapes[name]
        if sa[1:] != sb[1:] or (sa[0] != sb[0] and not _EMBEDDING.search(name) and "embed" not in name):
            continue
        rows = min(sa[0], sb[0])
        per_tensor[name] = centred_cosine(a.rows(name, rows), b.rows(name, rows))
    similarity = sum(per_tensor.values()) / len(per_tensor) if per_tensor else 0.0
    return PairSimilarity(
        a=str(a.folder),
        b=str(b.folder),
        similarity=similarity,
        tensors=list(per_tensor),
        related=similarity >= threshold if per_tensor else True,
        per_tensor=per_tensor,
        note="" if per_tensor else "no sampled tensor has the same name and shape in both (not compared)",
    )


def family_check(
    models: list[Path], base: Path | None = None, *, threshold: float = CALIBRATED
) -> FamilyReport:
    """Compare each model with `base` (or every pair when there is no base) on a few sampled tensors.

    The same folder given twice (a passthrough of one model with itself) is not compared with itself.
    """
    folders = list(dict.fromkeys(Path(m).resolve() for m in models))
    base_folder = Path(base).resolve() if base is not None else None
    samplers = {folder: _Sampler(folder) for folder in folders}
    if not folders:
        return FamilyReport(pairs=[], threshold=threshold, related=True)
    if base_folder is not None:
        samplers.setdefault(base_folder, _Sampler(base_folder))
        reference = samplers[base_folder]
        pairs_of = [(reference, samplers[f]) for f in folders if f != base_folder]
    else:
        reference = samplers[folders[0]]
        pairs_of = [(samplers[x], samplers[y]) for x, y in combinations(folders, 2)]
    names = sample_tensor_names(reference.shapes)
    pairs = [compare(a, b, names, threshold) for a, b in pairs_of]
    return FamilyReport(
        pairs=pairs,
        threshold=threshold,
        related=all(p.related for p in pairs),
        base=str(base_folder) if base_folder else None,
    )


def config_family_check(
    config: Any, *, threshold: float = CALIBRATED, local_files_only: bool = False
) -> FamilyReport:
    """The family check of a merge config's inputs against its base model (pairwise without one).

    LoRA adapters (`model+adapter`) are ignored: the check compares the models they apply to.
    """

    def folder(ref: str, revision: str | None = None) -> Path:
        parsed = parse_model_ref(ref)
        target = ModelRef(parsed.name, revision or parsed.revision)
        return resolve_model(target, local_files_only=local_files_only)

    base = config.base_model or next((s.base_model for s in config.slices or [] if s.base_model), None)
    inputs = [folder(item.model, item.revision) for item in config.inputs()]
    return family_check(inputs, folder(base) if base else None, threshold=threshold)
