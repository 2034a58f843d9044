"""Sanity check: does a (merged) model still behave like a language model?

A merge can finish without error and still produce nonsense. Before anyone uploads or evaluates it, we scan
its weights for NaN/inf (tensor by tensor, streaming), then load it with transformers, measure perplexity on
a small English sample shipped with the tool (bounded by `max_tokens`) and the degenerate repetition of
greedy continuations of a few fixed prompts, and compare both with the parents measured the same way.

Verdicts (factors calibrated in tests/test_sanity.py, see the README "Sanity check"):
- `broken`: NaN/inf weights, a non-finite perplexity, a perplexity worse than guessing uniformly over the
  vocabulary, more than `BROKEN_FACTOR` times the worst parent's, or extreme repetition the parents lack;
- `degraded`: perplexity more than `DEGRADED_FACTOR` times the worst parent's, or clearly more repetitive
  than every parent;
- the same two factors apply against the merge's base model when it is known: fine-tunes that drifted far
  from their base would otherwise excuse a merge that is much worse than the base it started from;
- `ok` otherwise.
"""

from __future__ import annotations

import functools
import gc
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors import safe_open

from mergeguard.errors import MergeguardError
from mergeguard.merge.io import tensor_index
from mergeguard.progress import ProgressCallback, step
from mergeguard.refs import require_no_custom_code

# Evidence (tests/test_sanity.py models, README "Sanity check"): an average of two real fine-tunes scored
# 0.36x the worst parent's perplexity; weights scaled x1.25 1.4x, x1.5 4.1x, x2 152x, x10 1e21x.
DEGRADED_FACTOR = 1.5
BROKEN_FACTOR = 10.0
BROKEN_REPETITION = 0.9  # 1 - distinct/total trigrams: a loop of at most ~4 tokens over 48 new tokens
REPETITION_MARGIN = 0.3  # how much more repetitive than the most repetitive parent counts as a regression
DEGRADED_REPETITION = 0.5  # ... provided it is at least this repetitive (the good merge in the tests: 0.34)
NEW_TOKENS = 48
WINDOW = 256  # perplexity is scored in windows of this many tokens (or the model's context, if shorter)
PROMPTS = (
    "The river begins high in the hills,",
    "Once upon a time, in a small village,",
    "Question: What is two plus three?\nAnswer:",
    "To bake a simple loaf of bread,",
)
VERDICTS = ("ok", "degraded", "broken")
VERDICT_EXIT_CODES = {"ok": 0, "degraded": 3, "broken": 4}
SAMPLE_TEXT = Path(__file__).with_name("sanity_text.txt")


@dataclass
class SanityReport:
    """What the sanity check found for one model, with its parents' figures for comparison."""

    model: str
    verdict: str
    perplexity: float
    parent_perplexities: dict[str, float]
    repetition: float
    nonfinite_tensors: list[str]
    samples: list[str]
    reasons: list[str]
    parent_repetitions: dict[str, float] = field(default_factory=dict)
    tokens: int = 0
    device: str = "cpu"

    @property
    def exit_code(self) -> int:
        return VERDICT_EXIT_CODES[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        """Plain data; non-finite floats become None so the result is strict JSON."""
        return json_finite(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def summary(self) -> str:
        """One line for the database and `history`: perplexity against the parents, and why."""
        parents = ", ".join(f"{v:.2f}" for v in self.parent_perplexities.values())
        text = f"perplexity {self.perplexity:.2f}" + (f" (parents {parents})" if parents else "")
        return text + (f"; {'; '.join(self.reasons)}" if self.reasons else "")


@dataclass
class Measurement:
    """One model's perplexity on the sample and repetition of its greedy continuations."""

    perplexity: float
    repetition: float
    samples: list[str]
    tokens: int
    vocab_size: int


def json_finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_finite(v) for v in value]
    return value


def sample_text() -> str:
    """The English sample perplexity is measured on (a few plain paragraphs shipped with mergeguard)."""
    return SAMPLE_TEXT.read_text(encoding="utf-8")


def scan_nonfinite(model: Path, progress: ProgressCallback | None = None) -> list[str]:
    """Names of floating tensors holding NaN or inf, read one tensor at a time (never the whole model)."""
    import torch

    index = tensor_index(Path(model))
    bad: list[str] = []
    with step(progress, f"scan {Path(model).name}", len(index)) as scanned:
        for path in sorted(set(index.values())):
            with safe_open(path, framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118
                    tensor = handle.get_tensor(name)
                    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                        bad.append(name)
                    del tensor
                    scanned.advance()
    return bad


def repetition(token_ids: Sequence[int], n: int = 3) -> float:
    """1 - distinct n-grams / n-grams: 0 for text that never repeats, near 1 for a one-token loop."""
    grams = [tuple(token_ids[i : i + n]) for i in range(len(token_ids) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def tokenizer_folder(model: Path, fallbacks: Sequence[Path]) -> Path:
    """The model's own folder if it holds a tokenizer, else the first fallback that does (merges of
    fine-tunes share their base's tokenizer)."""
    for folder in (model, *fallbacks):
        if (Path(folder) / "tokenizer.json").is_file() or (Path(folder) / "tokenizer_config.json").is_file():
            return Path(folder)
    raise MergeguardError(
        f"no tokenizer in {model}", hint="copy the base model's tokenizer files into the folder"
    )


def _resolve_device(device: str) -> str:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MergeguardError(f"device {device} is not available", hint="use --device cpu")
    return device


def measure(
    model: Path,
    *,
    device: str = "cpu",
    max_tokens: int = 512,
    tokenizer_dir: Path | None = None,
    progress: ProgressCallback | None = None,
    trust_remote_code: bool = False,
) -> Measurement:
    """Load `model`, score perplexity on at most `max_tokens` tokens of the sample, generate from PROMPTS."""
    import torch

    tokenizer, lm = _load(model, tokenizer_dir or model, device, trust_remote_code)
    config = lm.config
    name = Path(model).name
    with torch.no_grad():
        perplexity, scored = _perplexity(
            lm, tokenizer, device, max_tokens, step_name=f"perplexity {name}", progress=progress
        )
        samples, repeats = _generations(
            lm, tokenizer, device, step_name=f"generate {name}", progress=progress
        )
    vocab = int(getattr(config, "vocab_size", 0) or lm.get_output_embeddings().weight.shape[0])
    del lm
    gc.collect()
    return Measurement(perplexity, sum(repeats) / len(repeats), samples, scored, vocab)


def _load(model: Path, tokenizer_dir: Path, device: str, trust_remote_code: bool) -> tuple[Any, Any]:
    """The tokenizer and the model on `device`, in eval mode; custom code refused before transformers could
    prompt for it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for folder in {Path(model), Path(tokenizer_dir)}:
        require_no_custom_code(folder, trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=trust_remote_code)
    try:
        lm = AutoModelForCausalLM.from_pretrained(model, dtype="auto", trust_remote_code=trust_remote_code)
        return tokenizer, lm.to(device).eval()
    except (OSError, ValueError) as error:
        raise MergeguardError(
            f"transformers cannot load {model} ({type(error).__name__}: {str(error).splitlines()[0]})",
            hint="check that the folder holds config.json and safetensors weights",
        ) from error


def _perplexity(
    lm: Any,
    tokenizer: Any,
    device: str,
    max_tokens: int,
    *,
    step_name: str,
    progress: ProgressCallback | None,
) -> tuple[float, int]:
    """(perplexity, tokens scored) on the sample, scored in windows of the model's context at most."""
    import torch

    config = lm.config
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 1024
    window = max(2, min(WINDOW, int(context)))
    ids = tokenizer(sample_text(), return_tensors="pt")["input_ids"][0][: max(2, max_tokens)]
    chunks = [ids[i : i + window] for i in range(0, len(ids), window)]
    chunks = [c for c in chunks if len(c) > 1]
    total_nll, scored = 0.0, 0
    with step(progress, step_name, len(chunks)) as done:
        for chunk in chunks:
            batch = chunk.unsqueeze(0).to(device)
            logits = lm(input_ids=batch).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, batch[0, 1:], reduction="sum")
            total_nll += float(nll)
            scored += len(chunk) - 1
            done.advance()
    perplexity = math.exp(total_nll / scored) if scored and math.isfinite(total_nll) else math.inf
    return (math.inf if math.isnan(perplexity) else perplexity), scored


def _generations(
    lm: Any, tokenizer: Any, device: str, *, step_name: str, progress: ProgressCallback | None
) -> tuple[list[str], list[float]]:
    """The greedy continuation of each prompt (prompt included) and its repetition."""
    samples, repeats = [], []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with step(progress, step_name, len(PROMPTS)) as done:
        for prompt in PROMPTS:
            encoded = tokenizer(prompt, return_tensors="pt").to(device)
            out = lm.generate(
                **encoded,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=pad,
            )
            new = out[0, encoded["input_ids"].shape[1] :].tolist()
            repeats.append(repetition(new))
            samples.append(prompt + tokenizer.decode(new, skip_special_tokens=True))
            done.advance()
    return samples, repeats


def judge(
    perplexity: float,
    repetition: float,
    parent_perplexities: dict[str, float],
    parent_repetitions: dict[str, float],
    *,
    vocab_size: int,
    nonfinite_tensors: Sequence[str] = (),
    base: str | None = None,
) -> tuple[str, list[str]]:
    """The verdict and its reasons, from the figures alone (no model needed: easy to test and reuse)."""
    broken: list[str] = []
    degraded: list[str] = []
    if nonfinite_tensors:
        shown = ", ".join(list(nonfinite_tensors)[:3]) + (" ..." if len(nonfinite_tensors) > 3 else "")
        broken.append(f"{len(nonfinite_tensors)} tensor(s) hold NaN/inf: {shown}")
    if not math.isfinite(perplexity):
        if not nonfinite_tensors:
            broken.append("perplexity is not finite")
    elif vocab_size and perplexity > vocab_size:
        broken.append(f"perplexity {perplexity:.4g} is worse than guessing among {vocab_size} tokens")
    finite_parents = [p for p in parent_perplexities.values() if math.isfinite(p)]
    if math.isfinite(perplexity) and finite_parents:
        worst = max(finite_parents)
        ratio = perplexity / worst
        if ratio > BROKEN_FACTOR:
            broken.append(f"perplexity {perplexity:.4g} is {ratio:.3g}x the worst parent's ({worst:.4g})")
        elif ratio > DEGRADED_FACTOR:
            degraded.append(f"perplexity {perplexity:.4g} is {ratio:.3g}x the worst parent's ({worst:.4g})")
    base_ppl = parent_perplexities.get(base) if base is not None else None
    if math.isfinite(perplexity) and base_ppl is not None and math.isfinite(base_ppl) and base_ppl > 0:
        ratio = perplexity / base_ppl
        reason = f"perplexity {perplexity:.4g} is {ratio:.3g}x the base model's ({base_ppl:.4g})"
        if ratio > BROKEN_FACTOR:
            broken.append(reason)
        elif ratio > DEGRADED_FACTOR:
            degraded.append(reason)
    parent_rep = max(parent_repetitions.values(), default=0.0)
    if not nonfinite_tensors and repetition >= BROKEN_REPETITION and repetition - parent_rep >= 0.1:
        broken.append(f"generations are degenerate loops (repetition {repetition:.2f})")
    elif (
        parent_repetitions
        and repetition >= DEGRADED_REPETITION
        and repetition - parent_rep >= REPETITION_MARGIN
    ):
        degraded.append(f"generations repeat more than the parents' ({repetition:.2f} vs {parent_rep:.2f})")
    if broken:
        return "broken", broken + degraded
    if degraded:
        return "degraded", degraded
    return "ok", []


def sanity_check(
    model: Path,
    against: Sequence[Path] = (),
    *,
    device: str = "cpu",
    max_tokens: int = 512,
    progress: ProgressCallback | None = None,
    trust_remote_code: bool = False,
    base: Path | None = None,
) -> SanityReport:
    """Check `model` (NaN/inf scan, perplexity, repetition) and compare it with the models in `against`
    and with `base` (the merge's base model, measured too when not among `against`).

    A model with NaN/inf weights is `broken` without being loaded. The tokenizer comes from the model's
    folder, or from the first parent that has one. `progress` receives each step's progress.
    """
    if max_tokens < 2:
        raise MergeguardError(f"--max-tokens {max_tokens} is too small", hint="give at least 2 (default 512)")
    model = Path(model)
    parents = [Path(p) for p in against]
    if base is not None and Path(base) not in parents:
        parents.append(Path(base))
    device = _resolve_device(device)
    nonfinite = scan_nonfinite(model, progress)
    if nonfinite:
        verdict, reasons = judge(math.inf, 0.0, {}, {}, vocab_size=0, nonfinite_tensors=nonfinite)
        return SanityReport(str(model), verdict, math.inf, {}, 0.0, nonfinite, [], reasons, device=device)
    measured = functools.partial(
        measure, device=device, max_tokens=max_tokens, progress=progress, trust_remote_code=trust_remote_code
    )
    mine = measured(model, tokenizer_dir=tokenizer_folder(model, parents))
    theirs = {str(p): measured(p, tokenizer_dir=tokenizer_folder(p, [model])) for p in parents}
    parent_ppl = {name: m.perplexity for name, m in theirs.items()}
    parent_rep = {name: m.repetition for name, m in theirs.items()}
    verdict, reasons = judge(
        mine.perplexity,
        mine.repetition,
        parent_ppl,
        parent_rep,
        vocab_size=mine.vocab_size,
        base=str(Path(base)) if base is not None else None,
    )
    return SanityReport(
        model=str(model),
        verdict=verdict,
        perplexity=mine.perplexity,
        parent_perplexities=parent_ppl,
        repetition=mine.repetition,
        nonfinite_tensors=[],
        samples=mine.samples,
        reasons=reasons,
        parent_repetitions=parent_rep,
        tokens=mine.tokens,
        device=device,
    )
