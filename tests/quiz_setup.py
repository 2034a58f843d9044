"""The demo's quiz story, for the CLI and guard tests (test_cli_coherence, test_guardrails, the fail-closed
and fuzz tests): its custom benchmark and the options that name it, instruction data with and without its
items, a base whose card declares readable pre-training text, and merge configs over such models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mergekit_configs import weighted_config, write_config

from mergeguard import tiny
from mergeguard.demo.data import (
    arithmetic_instructions,
    contaminated_instructions,
    quiz_items,
    write_jsonl,
    write_quiz_benchmark,
    write_quiz_spec,
    writing_instructions,
)

if TYPE_CHECKING:
    from conftest import ModelFactory

PRETRAIN_TEXT = "Plain English text about the weather and the sea.\n"


def quiz_benchmark(folder: Path, count: int) -> tuple[list[dict[str, str]], Path]:
    """`count` quiz items and the custom spec of the `demo_quiz` benchmark that holds them, under `folder`."""
    items = quiz_items(count)
    return items, write_quiz_spec(folder, write_quiz_benchmark(folder, items))


def quiz_args(spec: Path, cache: Path) -> list[str]:
    """The CLI options that audit against the quiz benchmark, its index cached in `cache`."""
    return ["--benchmark-spec", str(spec), "--benchmark", "demo_quiz", "--cache-dir", str(cache)]


def leaky_jsonl(path: Path, items: list[dict[str, str]], padding: int) -> Path:
    """`items` hidden among `padding` clean writing instructions: the data of a contaminated fine-tune."""
    return write_jsonl(path, contaminated_instructions(items, writing_instructions(padding, seed=3)))


def carded_base(models: ModelFactory, pretrain: Path, *, seed: int) -> Path:
    """A 2-layer base whose card declares `pretrain`, plain text that reads completely: its own data audits
    clean, so what a fine-tune's lineage adds decides the verdict."""
    pretrain.write_text(PRETRAIN_TEXT, encoding="utf-8")
    base = models.base("llama", seed=seed, num_layers=2)
    tiny.write_card(base, datasets=[str(pretrain)])
    return base


def quiz_family_data(
    models: ModelFactory, root: Path, *, clean_rows: int, leaked: int, base_seed: int
) -> dict[str, Path]:
    """Under `root`: the 30-item quiz (`spec`), `clean_rows` math and writing instructions, leaky data with
    the quiz's first `leaked` items, and the carded base the fine-tunes of these start from."""
    items, spec = quiz_benchmark(root / "bench", 30)
    data = root / "data"
    return {
        "spec": spec,
        "math": write_jsonl(data / "math.jsonl", arithmetic_instructions(clean_rows, seed=1)),
        "writing": write_jsonl(data / "writing.jsonl", writing_instructions(clean_rows, seed=2)),
        "leaky": leaky_jsonl(data / "leaky.jsonl", items[:leaked], 20),
        "base": carded_base(models, data / "pretrain.txt", seed=base_seed),
    }


def merge_config(path: Path, base: Path, inputs: list[Path], method: str = "ties") -> Path:
    """A float32 merge of `inputs` onto `base`, each at weight 0.5 (TIES keeps a density of 0.8)."""
    density = 0.8 if method == "ties" else None
    return write_config(
        path, weighted_config(inputs, method=method, density=density, base=base, dtype="float32")
    )
