"""The demo's steps: train, audit, refuse, merge, evaluate, rank; each one a call to the library.

`run_demo` does the work and reports each step through a `say` object (the CLI prints with rich; tests can
collect). Everything lands in one working folder: models, datasets, the benchmark, the database.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mergeguard import tiny
from mergeguard.auditor import AuditOptions, audit_models
from mergeguard.benchmarks import load_benchmark
from mergeguard.db import (
    history,
    leaderboard,
    lineage,
    open_db,
    render_history,
    render_leaderboard,
    render_lineage,
)
from mergeguard.demo.data import (
    QuizItem,
    arithmetic_instructions,
    contaminated_instructions,
    quiz_items,
    write_jsonl,
    write_quiz_benchmark,
    write_quiz_spec,
    writing_instructions,
)
from mergeguard.demo.quiet import quiet_libraries
from mergeguard.evaluation import run_eval
from mergeguard.guardrails import ContaminatedInputsError, GuardOptions, guarded_merge
from mergeguard.merge import MergeOptions
from mergeguard.merge.sanity import sample_text

if TYPE_CHECKING:
    from rich.console import RenderableType
    from sqlite_utils import Database

REAL_BENCHMARK = "gsm8k"  # planted too when real test sets are given with --benchmarks-dir
REAL_PLANTED = 12


class Reporter(Protocol):
    """Where the demo tells what it does: a heading per step, then tables and lines."""

    def step(self, number: int, title: str) -> None: ...
    def line(self, text: str) -> None: ...
    def audit(self, report: dict[str, Any]) -> None: ...
    def refused(self, message: str) -> None: ...
    def table(self, renderable: RenderableType) -> None: ...


@dataclass
class DemoOptions:
    workdir: Path | None = None
    benchmarks_dir: Path | None = None
    fast: bool = False  # fewer training steps and eval items: the tests' mode, same code path


@dataclass
class DemoResult:
    workdir: Path
    db_path: Path
    models: dict[str, Path]
    audit: dict[str, Any]
    refusal: str
    merged: Path
    scores: dict[str, dict[str, float]] = field(default_factory=dict)


def _steps(fast: bool) -> tuple[int, int]:
    """(pre-training steps, fine-tuning steps): enough for the leaky fine-tune to learn the quiz's answers
    (about 65% fast, 85% in full, against the others' 20-30%: a lead nobody can miss)."""
    return (60, 300) if fast else (300, 500)


FINETUNE_LR = 3e-3
BLOCK = 96  # tokens a training window sees: a whole question with its answer


def training_text(row: dict[str, str]) -> str:
    """An instruction row as the fine-tunes see it, in the quiz's own prompt format (how leaked test items
    do their damage: the model learns the answer right where the benchmark will ask for it)."""
    return f"Question: {row['instruction']}\nAnswer: {row['output']}"


def _write_config(path: Path, base: Path, models: list[Path]) -> Path:
    lines = ["merge_method: ties", f"base_model: {base}", "parameters:", "  normalize: true", "models:"]
    for model in models:
        lines += [f"  - model: {model}", "    parameters:", "      weight: 0.5", "      density: 0.7"]
    lines.append("dtype: float32")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _real_items(benchmarks_dir: Path) -> list[dict[str, str]]:
    """A few real test items, copied the way a careless fine-tune does: question in, answer out."""
    loaded = load_benchmark(REAL_BENCHMARK, benchmarks_dir)
    return [
        {"instruction": item.question, "input": "", "output": item.answer}
        for item in loaded.items[:REAL_PLANTED]
    ]


def run_demo(options: DemoOptions, say: Reporter) -> DemoResult:
    """Run the whole story in `options.workdir` (a new temporary folder when None), the libraries'
    progress bars, logs and warnings silenced for its duration (see `quiet_libraries`)."""
    with quiet_libraries():
        return _run_demo(options, say)


def _run_demo(options: DemoOptions, say: Reporter) -> DemoResult:
    """The five steps, each reported through `say`."""
    work = Path(options.workdir or tempfile.mkdtemp(prefix="mergeguard-demo-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    db_path = work / "mergeguard.db"

    say.step(1, "Train a tiny base model and three fine-tunes (for real, on CPU)")
    quiz = quiz_items(20 if options.fast else 40)
    spec = write_quiz_spec(work / "benchmarks", write_quiz_benchmark(work / "benchmarks", quiz))
    models, datasets = _train_models(work, quiz, options, say)

    say.step(2, "Audit the fine-tunes' declared datasets against the benchmark test sets")
    benchmarks = ["demo_quiz"] + ([REAL_BENCHMARK] if options.benchmarks_dir is not None else [])
    audit_options = AuditOptions(
        benchmarks=benchmarks,
        benchmarks_dir=options.benchmarks_dir,
        custom_specs=[spec],
        cache_dir=work / "cache",
    )
    fine_tunes = [str(models[n]) for n in datasets]
    report = audit_models(fine_tunes, audit_options).to_json()
    say.audit(report)

    say.step(3, "Merge all three with TIES: refused, one input is contaminated")
    refusal = _merge_models(work, models, list(datasets), audit_options, db_path, say)

    say.step(4, f"Evaluate every model with lm-eval on the same quiz ({len(quiz)} items each)")
    db = open_db(db_path)
    scores = _evaluate_models(db, work, models, ["base", *datasets, "merge-clean"], spec, say)
    say.line(_lead(scores, len(quiz)))

    say.step(5, "The leaderboard, the merge's lineage, and the history with the refused merge")
    _show_records(db, models["merge-clean"], say)
    return DemoResult(work, db_path, models, report, refusal, models["merge-clean"], scores)


def _train_models(
    work: Path, quiz: list[QuizItem], options: DemoOptions, say: Reporter
) -> tuple[dict[str, Path], dict[str, Path]]:
    """Step 1: the datasets written, a tokenizer and a base pre-trained on a little English, and three
    fine-tunes of it (one on leaked quiz items). Returns (models by name, each fine-tune's dataset)."""
    pretrain_steps, finetune_steps = _steps(options.fast)
    data = work / "data"
    leaked = contaminated_instructions(quiz, writing_instructions(60, seed=3))
    if options.benchmarks_dir is not None:
        leaked += _real_items(options.benchmarks_dir)
    datasets = {
        "ft-math": write_jsonl(data / "math.jsonl", arithmetic_instructions(120, seed=1)),
        "ft-writing": write_jsonl(data / "writing.jsonl", writing_instructions(120, seed=2)),
        "ft-leaky": write_jsonl(data / "leaky.jsonl", leaked),
    }
    models_dir = work / "models"
    tokenizer = tiny.train_tokenizer(models_dir / "tokenizer")
    initial = tiny.build_model(models_dir / "init", "llama", seed=0, num_layers=2, tokenizer_dir=tokenizer)
    english = sample_text().split("\n\n") + tiny.training_corpus()
    pretrain = data / "pretrain.txt"
    pretrain.write_text("\n".join(english) + "\n", encoding="utf-8")
    base = tiny.train_finetune(initial, models_dir / "base", english, pretrain_steps, 0, 3e-3)
    tiny.write_card(base, datasets=[str(pretrain)], body="# demo base\n\nPre-trained on a little English.")
    models: dict[str, Path] = {"base": base}
    for seed, (name, path) in enumerate(datasets.items(), start=1):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        texts = [training_text(r) for r in rows] + english  # replayed: the fine-tunes keep their English
        card = {"datasets": [str(path)], "base_model": str(base)}
        models[name] = tiny.train_finetune(
            base, models_dir / name, texts, finetune_steps, seed, FINETUNE_LR, card, block_size=BLOCK
        )
        say.line(f"{name}: fine-tuned on {len(rows)} examples from {path.name}")
    shutil.rmtree(initial, ignore_errors=True)
    return models, datasets


def _merge_models(
    work: Path,
    models: dict[str, Path],
    fine_tunes: list[str],
    audit_options: AuditOptions,
    db_path: Path,
    say: Reporter,
) -> str:
    """Step 3: all fine-tunes merged (the guard refuses: one is contaminated), then the two clean ones;
    `models` gains "merge-clean". Returns the refusal's message."""
    base = models["base"]
    guard = GuardOptions(audit=audit_options, db_path=db_path)
    config_all = _write_config(work / "merge-all.yml", base, [models[n] for n in fine_tunes])
    refusal = ""
    try:
        guarded_merge(config_all, work / "models" / "merge-all", MergeOptions(quiet=True), guard)
    except ContaminatedInputsError as error:
        refusal = str(error)
        say.refused(refusal)
    clean = [models["ft-math"], models["ft-writing"]]
    config_clean = _write_config(work / "merge-clean.yml", base, clean)
    say.line("Merging the two clean fine-tunes instead:")
    merged = guarded_merge(config_clean, work / "models" / "merge-clean", MergeOptions(quiet=True), guard)
    models["merge-clean"] = merged.result.out_dir
    say.line(
        f"merge-clean: {merged.result.tensors} tensors in {merged.result.seconds:.1f} s, verdict "
        f"{merged.verdict} (audit {'reused' if merged.audit and merged.audit.reused else 'run'})"
    )
    return refusal


def _show_records(db: Database, merged: Path, say: Reporter) -> None:
    """Step 5: what the database now holds: the leaderboard, the merge's lineage, the history."""
    say.table(render_leaderboard(leaderboard(db), "table"))
    say.table(render_lineage(lineage(db, str(merged)), "tree"))
    say.table(render_history(history(db), "table"))


def _evaluate_models(
    db: Database, work: Path, models: dict[str, Path], names: list[str], spec: Path, say: Reporter
) -> dict[str, dict[str, float]]:
    """Step 4: each model evaluated with lm-eval on the quiz (its output silenced), scores stored."""
    scores: dict[str, dict[str, float]] = {}
    for name in names:
        with _silenced():
            summary = run_eval(
                db,
                models[name],
                custom_specs=[spec],
                output_dir=work / "evals",
                batch_size=16,
                bootstrap_iters=0,
            )
        scores[name] = summary.scores
        say.line(f"{name}: demo_quiz accuracy {summary.scores.get('demo_quiz', float('nan')) * 100:.1f}%")
    return scores


def _lead(scores: dict[str, dict[str, float]], items: int) -> str:
    """The story in one line: the contaminated fine-tune leads, and by how much."""
    quiz = {name: s.get("demo_quiz", 0.0) for name, s in scores.items()}
    best = max(quiz, key=lambda name: quiz[name])
    runner_up = max((v for name, v in quiz.items() if name != best), default=0.0)
    gap = round((quiz[best] - runner_up) * items)
    return (
        f"{best} leads by {(quiz[best] - runner_up) * 100:.0f} points ({gap} more of the {items} questions "
        f"right than any other model): it was trained on the quiz's answers"
    )


@contextmanager
def _silenced() -> Iterator[None]:
    """Hide library progress bars (lm-eval passes tqdm its own `disable`, so only stderr can stop them)."""
    with redirect_stderr(io.StringIO()):
        yield
