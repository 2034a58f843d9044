"""Shared fixtures: the real data folder, and a factory of tiny real models (see `mergeguard.tiny`)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mergeguard import tiny
from mergeguard.merge.sanity import sample_text

REQUIRE_DATA_ENV = "MERGEGUARD_REQUIRE_SHARED_DATA"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

warnings.filterwarnings("ignore", message=".*TRANSFORMERS_CACHE.*")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(autouse=True)
def _private_user_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, _session_cache: Path) -> None:
    """Keep tests out of the user's database; share one benchmark index cache across the session."""
    monkeypatch.setenv("MERGEGUARD_DB", str(tmp_path / "mergeguard-test.db"))
    monkeypatch.setenv("MERGEGUARD_CACHE", str(_session_cache))


@pytest.fixture(scope="session")
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mergeguard-cache")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data`: real benchmark test sets and corpora. Skips when absent, unless CI requires it."""
    if (SHARED_DATA / "hf").is_dir():
        return SHARED_DATA
    if os.environ.get(REQUIRE_DATA_ENV):
        pytest.fail(f"{SHARED_DATA} is missing but {REQUIRE_DATA_ENV} says it must be there")
    pytest.skip(f"real data not found at {SHARED_DATA}")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One locally trained tokenizer, shared by every tiny model of the session."""
    return tiny.train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


class ModelFactory:
    """Builds tiny models into a session folder and caches them by their arguments."""

    def __init__(self, root: Path, tokenizer_dir: Path) -> None:
        self.root = root
        self.tokenizer_dir = tokenizer_dir
        self._built: dict[tuple[Any, ...], Path] = {}

    def base(self, arch: str = "llama", *, seed: int = 0, sharded: bool = False, **kwargs: Any) -> Path:
        """A seeded random model; `sharded=True` splits it into several safetensors files with an index."""
        key = ("base", arch, seed, sharded, tuple(sorted(kwargs.items())))
        if key not in self._built:
            name = f"{arch}-s{seed}{'-sharded' if sharded else ''}-{len(self._built)}"
            self._built[key] = tiny.build_model(
                self.root / name,
                arch,
                seed=seed,
                tokenizer_dir=self.tokenizer_dir,
                shard_size="200KB" if sharded else None,
                **kwargs,
            )
        return self._built[key]

    def finetune(
        self, base: Path, *, seed: int, scale: float = 0.01, card: dict[str, Any] | None = None
    ) -> Path:
        """Base plus small seeded deltas, in the same file layout; `card` writes a model card."""
        key = ("ft", str(base), seed, scale, repr(card))
        if key not in self._built:
            out = self.root / f"{base.name}-ft{seed}-{len(self._built)}"
            self._built[key] = tiny.finetune_variant(base, out, seed=seed, scale=scale, card=card)
        return self._built[key]


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> ModelFactory:
    """The tiny model factory: `models.base("qwen2")`, `models.finetune(base, seed=1, card={...})`."""
    return ModelFactory(tmp_path_factory.mktemp("models"), tokenizer_dir)


@pytest.fixture
def write_card() -> Callable[..., Path]:
    """Give a model folder a model card: `write_card(folder, datasets=[...], base_model=...)`."""
    return tiny.write_card


INSTRUCTION_TEXTS = [
    "Instruction: list three colours. Response: red, green and blue.",
    "Instruction: name a large animal. Response: the elephant is a very large animal.",
    "Instruction: add two and three. Response: two plus three is five.",
    "Instruction: write a greeting. Response: hello, it is good to see you today.",
]


@pytest.fixture(scope="session")
def trained(models: ModelFactory, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny llamas trained for real on CPU (about 30 s in all): `base` (pre-trained on plain English),
    `ft_a`/`ft_b` (two fine-tunes of it) and `independent` (another init trained on the same English)."""
    root = tmp_path_factory.mktemp("trained")
    english = sample_text().split("\n\n") + tiny.training_corpus()
    base = tiny.train_finetune(
        models.base("llama", seed=0, num_layers=2), root / "base", english, 300, 0, 3e-3
    )
    other = models.base("llama", seed=1, num_layers=2)
    return {
        "base": base,
        "ft_a": tiny.train_finetune(base, root / "ft_a", tiny.training_corpus(), 200, 1, 3e-4),
        "ft_b": tiny.train_finetune(base, root / "ft_b", INSTRUCTION_TEXTS, 200, 2, 3e-4),
        "independent": tiny.train_finetune(other, root / "independent", english, 60, 3, 3e-3),
    }
