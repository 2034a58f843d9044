"""Generated data for the demo: instruction datasets and a small synthetic benchmark.

Everything is made from seeded templates so the demo runs offline and gives the same result every time.
The benchmark's items are invented multiple-choice questions about a fictional world; the instruction sets
use other templates, so only the dataset that copies benchmark items is contaminated.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

_SYLLABLES = [
    "ka",
    "lo",
    "mer",
    "vin",
    "tha",
    "sor",
    "el",
    "dru",
    "pa",
    "nim",
    "quo",
    "zet",
    "ri",
    "ban",
    "ost",
]
_THINGS = [
    ("river", "flows past"),
    ("mountain", "overlooks"),
    ("forest", "surrounds"),
    ("lake", "lies beside"),
    ("tower", "guards"),
    ("bridge", "connects to"),
]
_ROLES = ["merchant guild", "royal library", "harbor council", "weavers' hall", "observatory", "old mint"]


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


@dataclass(frozen=True)
class QuizItem:
    """One synthetic benchmark item: a question, four choices and the gold answer text."""

    question: str
    choices: tuple[str, str, str, str]
    answer: str


def quiz_items(count: int = 40, seed: int = 7) -> list[QuizItem]:
    """Invented multiple-choice questions; long enough (15+ words) for n-gram detection."""
    rng = random.Random(seed)
    items: list[QuizItem] = []
    seen: set[str] = set()
    while len(items) < count:
        realm, city = _name(rng), _name(rng)
        thing, verb = rng.choice(_THINGS)
        role = rng.choice(_ROLES)
        question = (
            f"In the realm of {realm}, travellers say that a famous {thing} {verb} the city of {city}, "
            f"where the {role} keeps its records. Which {thing} is it?"
        )
        if question in seen:
            continue
        seen.add(question)
        names = {_name(rng) for _ in range(8)}
        options = [f"The {n} {thing}" for n in sorted(names)[:4]]
        answer = options[rng.randrange(4)]
        items.append(QuizItem(question, (options[0], options[1], options[2], options[3]), answer))
    return items


def write_quiz_benchmark(folder: Path, items: list[QuizItem]) -> Path:
    """Write the quiz as `<folder>/demo_quiz/test.jsonl` and a custom benchmark spec beside it."""
    data = folder / "demo_quiz" / "test.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    with data.open("w", encoding="utf-8") as handle:
        for index, item in enumerate(items):
            row = {
                "id": f"quiz-{index}",
                "question": item.question,
                "choices": list(item.choices),
                "answer": item.choices.index(item.answer),
            }
            handle.write(json.dumps(row) + "\n")
    return data


def arithmetic_instructions(count: int, seed: int) -> list[dict[str, str]]:
    """Alpaca-style arithmetic instructions."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        op, result = rng.choice([("plus", a + b), ("minus", a - b), ("times", a * b)])
        rows.append(
            {"instruction": f"Compute {a} {op} {b}.", "input": "", "output": f"{a} {op} {b} is {result}."}
        )
    return rows


def writing_instructions(count: int, seed: int) -> list[dict[str, str]]:
    """Alpaca-style short writing tasks."""
    rng = random.Random(seed)
    topics = ["the sea", "a quiet morning", "a busy market", "the first snow", "an old clock", "a garden"]
    moods = ["calm", "cheerful", "wistful", "bright"]
    rows = []
    for _ in range(count):
        topic, mood = rng.choice(topics), rng.choice(moods)
        rows.append(
            {
                "instruction": f"Write one {mood} sentence about {topic}.",
                "input": "",
                "output": f"Here is a {mood} line: {topic} hums softly while the day goes on.",
            }
        )
    return rows


def contaminated_instructions(items: list[QuizItem], clean: list[dict[str, str]]) -> list[dict[str, str]]:
    """Clean rows plus benchmark items copied as question/answer pairs: how test data leaks in."""
    leaked = [{"instruction": item.question, "input": "", "output": item.answer} for item in items]
    return clean + leaked


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def write_quiz_spec(folder: Path, data_file: Path) -> Path:
    """A custom benchmark spec (see `mergeguard.benchmarks.custom`) for the demo quiz."""
    spec = folder / "demo_quiz.yaml"
    spec.write_text(
        "name: demo_quiz\n"
        f"files: [{data_file.relative_to(folder).as_posix()}]\n"
        "split: test\nquestion: question\nchoices: choices\nanswer: answer\nid: id\n"
        "description: invented questions about a fictional world (mergeguard demo)\n",
        encoding="utf-8",
    )
    return spec
