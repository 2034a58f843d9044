"""How one benchmark row (a dict in the Hugging Face schema) becomes an `Item`.

An item keeps the parts apart (question, choices, gold answer text) so that detection can tell "question and
answer leaked" from "question only". One small function per row format; `CONVERTERS` maps a format name to it.
The row schemas are those `datasets.load_dataset` returns for each hub id in `registry.py` (field names
checked against lm-evaluation-harness 0.4.13's task configs and the datasets' cards).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mergeguard.benchmarks.registry import REGISTRY
from mergeguard.errors import BenchmarkError

# Bump when a converter changes what it produces: the auditor's cache is keyed on a hash that includes it.
ITEMS_VERSION = "2"
SOURCE_WORDS = 30  # lines before a question's last holding this many words are a reading passage
SOURCE_PARAGRAPH_WORDS = 60  # a paragraph after an instruction holding this many words is quoted text


@dataclass(frozen=True)
class Item:
    """One benchmark question, normalized: what a leak of it into training data would show."""

    benchmark: str
    split: str
    index: int
    item_id: str | None
    question: str
    choices: tuple[str, ...]
    answer: str
    subset: str | None = None
    short_answer: str = ""  # the bare final answer where the gold text is a worked solution (gsm8k, math)
    source: str = ""  # the part of `question` that is shared source text, not the test (`source_text`)

    def text(self) -> str:
        """Question, choices and answer joined by newlines (the answer once, even when it is a choice)."""
        parts = [self.question, *self.choices]
        if self.answer and self.answer not in self.choices:
            parts.append(self.answer)
        return "\n".join(part for part in parts if part)

    @property
    def key(self) -> str:
        """A stable name for the item: `bench/split[/subset]#index`."""
        subset = f"/{self.subset}" if self.subset and self.subset != self.split else ""
        return f"{self.benchmark}/{self.split}{subset}#{self.index}"


@dataclass(frozen=True)
class RowContext:
    """Where a row sits, passed to every converter alongside the row."""

    benchmark: str
    split: str
    index: int
    subset: str | None = None


Converter = Callable[[Mapping[str, Any], RowContext], Item]


def _lines_before_last(question: str) -> str:
    """MMLU: the lines before the question's last one, when they hold a reading passage (several items
    ask about one passage; the last line is the item's own question)."""
    lines = [line for line in question.splitlines() if line.strip()]
    if len(lines) < 2 or len(" ".join(lines[:-1]).split()) < SOURCE_WORDS:
        return ""
    return "\n".join(lines[:-1])


def _paragraphs(question: str) -> str:
    """IFEval: the long paragraphs after the first (the instruction), i.e. the text the prompt quotes to be
    summarised or rewritten."""
    paragraphs = [p for p in re.split(r"\n\s*\n", question) if p.strip()]
    return "\n\n".join(p for p in paragraphs[1:] if len(p.split()) >= SOURCE_PARAGRAPH_WORDS)


SOURCE_RULES: dict[str, Callable[[str], str]] = {
    "lines_before_last": _lines_before_last,
    "paragraphs": _paragraphs,
}


def source_text(benchmark: str, question: str) -> str:
    """The shared source text inside an item's question, by the registry's `source_text` rule ("" none)."""
    spec = REGISTRY.get(benchmark)
    rule = SOURCE_RULES.get(spec.source_text) if spec is not None else None
    return rule(question) if rule else ""


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def _item(
    ctx: RowContext,
    question: Any,
    choices: Sequence[Any] = (),
    answer: Any = "",
    *,
    item_id: Any = None,
    subset: str | None = None,
    short_answer: Any = "",
) -> Item:
    question = _str(question)
    return Item(
        benchmark=ctx.benchmark,
        split=ctx.split,
        index=ctx.index,
        item_id=None if item_id is None or item_id == "" else str(item_id),
        question=question,
        choices=tuple(_str(choice) for choice in choices),
        answer=_str(answer),
        subset=subset if subset is not None else ctx.subset,
        short_answer=_str(short_answer),
        source=source_text(ctx.benchmark, question),
    )


def _pick(choices: Sequence[Any], index: Any, ctx: RowContext) -> str:
    """choices[index] with a clear error for a gold index that does not fit (a malformed row)."""
    try:
        position = int(index)
        if position < 0:
            raise IndexError(position)
        return _str(choices[position])
    except (TypeError, ValueError, IndexError):
        raise BenchmarkError(
            f"{ctx.benchmark} row {ctx.index}: gold answer {index!r} does not index its "
            f"{len(choices)} choices",
            hint="check the data file is the benchmark's hub schema",
        ) from None


def arc(row: Mapping[str, Any], ctx: RowContext) -> Item:
    """allenai/ai2_arc: the gold text is the choice whose label equals answerKey (labels are A-E or 1-5)."""
    texts, labels = list(row["choices"]["text"]), list(row["choices"]["label"])
    key = _str(row["answerKey"])
    if key not in labels:
        raise BenchmarkError(f"{ctx.benchmark} row {ctx.index}: answerKey {key!r} is not among {labels}")
    return _item(ctx, row["question"], texts, texts[labels.index(key)], item_id=row.get("id"))


def hellaswag(row: Mapping[str, Any], ctx: RowContext) -> Item:
    """Rowan/hellaswag: question = ctx, answer = endings[int(label)]; the activity label is the subset."""
    endings = list(row["endings"])
    return _item(
        ctx,
        row.get("ctx") or f"{_str(row.get('ctx_a'))} {_str(row.get('ctx_b'))}".strip(),
        endings,
        _pick(endings, row["label"], ctx),
        item_id=row.get("ind"),
        subset=_str(row.get("activity_label")) or None,
    )


def mmlu(row: Mapping[str, Any], ctx: RowContext) -> Item:
    """cais/mmlu: answer is an index 0-3 into choices; subject is the subset."""
    choices = list(row["choices"])
    return _item(ctx, row["question"], choices, _pick(choices, row["answer"], ctx), subset=row.get("subject"))


def truthfulqa_mc(row: Mapping[str, Any], ctx: RowContext) -> Item:
    """truthfulqa/truthful_qa multiple_choice: mc1_targets holds exactly one choice labelled 1."""
    targets = row["mc1_targets"]
    choices, labels = list(targets["choices"]), list(targets["labels"])
    answer = choices[labels.index(1)] if 1 in labels else ""
    return _item(ctx, row["question"], choices, answer)


def winogrande(row: Mapping[str, Any], ctx: RowContext) -> Item:
    """allenai/winogrande: the sentence has a `_` blank; answer "1"/"2" names option1/option2."""
    options = [row["option1"], row["option2"]]
    answer = _pick(options, int(row["answer"]) - 1, ctx) if _str(row.get("answer")) else ""
    return _item(ctx, row["sentence"], options, answer)


_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$", re.S)


def gsm8k_final_answer(solution: str) -> str:
    """The number after `####` in a GSM8K solution ("" when absent)."""
    match = _GSM8K_FINAL.search(solution)
    return match.group(1).replace(",", "").strip() if match else ""


def gsm8k(row: Mapping[str, Any], ctx: RowContext) -> Item:
    """openai/gsm8k main: answer is the full worked solution; short_answer the final number."""
    answer = _str(row["answer"])
    return _item(ctx, row["question"], (), answer, short_answer=gsm8k_final_answer(answer))


def bbh(row: Mapping[str, Any], ctx: RowContext) -> Item:
    """SaylorTwift/bbh (= lukaemon/bbh): input / target; the subtask (config) is the subset."""
    return _item(ctx, row["input"], (), row["target"])


def ifeval(row: Mapping[str, Any], ctx: RowContext) -> Item:
    """google/IFEval: a prompt with verifiable instructions and no gold answer."""
    return _item(ctx, row["prompt"], (), "", item_id=row.get("key"))


def gpqa(row: Mapping[str, Any], ctx: RowContext) -> Item:
    """Idavidrein/gpqa: choices = correct answer then incorrect 1-3 (fixed order; lm-eval shuffles at
    eval time), each stripped as lm-eval's preprocess does; the subdomain is the subset."""
    correct = _str(row["Correct Answer"]).strip()
    wrong = [_str(row[f"Incorrect Answer {i}"]).strip() for i in (1, 2, 3)]
    return _item(
        ctx,
        _str(row["Question"]).strip(),
        [correct, *wrong],
        correct,
        item_id=row.get("Record ID"),
        subset=_str(row.get("Subdomain")) or None,
    )


def last_boxed(solution: str) -> str:
    r"""The content of the last `\boxed{...}` (or `\fbox{...}`) in a MATH solution, "" when none."""
    start = max(solution.rfind("\\boxed"), solution.rfind("\\fbox"))
    if start < 0:
        return ""
    brace = solution.find("{", start)
    if brace < 0:
        return ""
    depth = 0
    for position in range(brace, len(solution)):
        if solution[position] == "{":
            depth += 1
        elif solution[position] == "}":
            depth -= 1
            if depth == 0:
                return solution[brace + 1 : position]
    return ""


def math(row: Mapping[str, Any], ctx: RowContext) -> Item:
    """MATH (hendrycks): problem / full solution; short_answer = the `answer` field, else the last box."""
    solution = _str(row["solution"])
    short = _str(row.get("answer")) or last_boxed(solution)
    return _item(ctx, row["problem"], (), solution, subset=row.get("type"), short_answer=short)


def musr(row: Mapping[str, Any], ctx: RowContext) -> Item:
    """TAUR-Lab/MuSR: question = narrative + question; `choices` is a Python-literal list in a string,
    the gold is choices[answer_index] (answer_choice repeats it)."""
    raw = row["choices"]
    choices = list(ast.literal_eval(raw)) if isinstance(raw, str) else list(raw)
    index = row.get("answer_index")
    answer = _pick(choices, index, ctx) if index is not None else _str(row.get("answer_choice"))
    question = "\n\n".join(part for part in (_str(row.get("narrative")), _str(row["question"])) if part)
    return _item(ctx, question, choices, answer)


def mmlu_pro(row: Mapping[str, Any], ctx: RowContext) -> Item:
    """TIGER-Lab/MMLU-Pro: up to 10 options, answer_index into them (answer is the letter); category is
    the subset; `src` (e.g. "ori_mmlu-...") tells which items came from MMLU."""
    options = list(row["options"])
    index = row.get("answer_index")
    if index is None:
        index = ord(_str(row["answer"]).strip().upper()[:1] or "?") - ord("A")
    return _item(
        ctx,
        row["question"],
        options,
        _pick(options, index, ctx),
        item_id=row.get("question_id"),
        subset=row.get("category"),
    )


CONVERTERS: dict[str, Converter] = {
    "arc": arc,
    "hellaswag": hellaswag,
    "mmlu": mmlu,
    "truthfulqa_mc": truthfulqa_mc,
    "winogrande": winogrande,
    "gsm8k": gsm8k,
    "bbh": bbh,
    "ifeval": ifeval,
    "gpqa": gpqa,
    "math": math,
    "musr": musr,
    "mmlu_pro": mmlu_pro,
}


def converter(row_format: str) -> Converter:
    """The converter for a registry row format."""
    try:
        return CONVERTERS[row_format]
    except KeyError:
        raise BenchmarkError(
            f"unknown row format {row_format!r}", hint=f"use one of: {', '.join(CONVERTERS)}"
        ) from None
