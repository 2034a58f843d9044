"""The README's code blocks run as written (issue 17): every ```bash and ```python block, in README order,
in a copy of the demo's working folder, with the `mergeguard` on this test's PATH.

Examples name files a reader has (`./my-finetune`, `ourevals.yaml`, `../shared/data/hf`, ...): PLACEHOLDERS
makes each one from the demo folder, so the line runs unchanged. Lines that need the network or a GPU are in
SKIP with the reason; a line that ends with a documented non-zero status (`# exit 1`, `# refused`) must end
with exactly it. Every other line must exit 0."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA

README = Path(__file__).resolve().parents[1] / "README.md"

SKIP = {  # a substring of the line -> why it cannot run here
    "python3 -m venv": "installs packages from PyPI (network)",
    "org/other": "a hub model (network)",
    "--device cuda": "needs a GPU",
    "--suite v1": "lm-eval loads the suite's datasets from the hub (network)",
    "mergeguard serve": "starts a server that runs until stopped",
    "datasette ": "a separate program (pip install datasette) that runs until stopped",
    "pip install": "installs packages (network)",
    "guarded_merge(": "audits against ../shared/data/hf: every real test set, minutes on a CPU",
    'load_benchmarks(["v2"]': "the v2 suite from the hub (network)",
    "--tasks arc_challenge,gsm8k": "gsm8k generates 256 tokens, the tiny demo models' whole context",
}
WRITES_MERGED = re.compile(r"merge \S+ \.?/?merged\b|Path\(\"merged\"\)")  # makes ./merged anew

PYTHON_PRELUDE = """\
from pathlib import Path
yaml_text = Path("merge-clean.yml").read_text()  # the examples' `yaml_text`: a config's text
from mergeguard.auditor import AuditOptions, audit_models
report = audit_models(["models/ft-math"], AuditOptions(custom_specs=["benchmarks/demo_quiz.yaml"],
                                                       benchmarks=["demo_quiz"]))  # the examples' `report`
"""


def blocks(text: str) -> list[tuple[str, int, str]]:
    """(language, first line number, code) of each ```bash and ```python block."""
    out = []
    for match in re.finditer(r"^```(bash|python)\n(.*?)^```", text, re.M | re.S):
        out.append((match.group(1), text[: match.start()].count("\n") + 2, match.group(2)))
    return out


def _placeholders(work: Path) -> None:
    """What the examples' file names stand for, made from the demo's own files."""
    links = {
        "my-finetune": "models/ft-math",
        "ft": "models/ft-writing",
        "ft_a": "models/ft-math",
        "ft_b": "models/ft-writing",
        "base": "models/base",
        "ft-leaky": "models/ft-leaky",
        "sft.jsonl": "data/writing.jsonl",
        "lm-eval-out": "evals",
    }
    for name, target in links.items():
        (work / name).symlink_to(work / target)
    for name in ("merge.yml", "ties.yml"):
        shutil.copy(work / "merge-clean.yml", work / name)
    shutil.copy(next((work / "evals").rglob("results_*.json")), work / "results_old.json")
    (work / "ourevals.yaml").write_text(
        "name: ourevals\nfiles: [benchmarks/demo_quiz/test.jsonl]\nsplit: test\nquestion: question\n"
        "choices: choices\nanswer: answer\nid: id\n",
        encoding="utf-8",
    )
    shared = work.parent / "shared"
    shared.mkdir(exist_ok=True)
    if SHARED_DATA.is_dir():
        (shared / "data").symlink_to(SHARED_DATA)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh `mergeguard demo --fast` folder of its own (the examples write into it)."""
    work = tmp_path_factory.mktemp("readme") / "work"
    done = subprocess.run(
        [sys.executable, "-m", "mergeguard", "demo", "--fast", "--workdir", str(work)],
        env=_env(work),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    _placeholders(work)
    return work


def _env(work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MERGEGUARD_DB": str(work / "mergeguard.db"),
        "MERGEGUARD_CACHE": os.environ.get("MERGEGUARD_CACHE", str(work / "cache")),
        "MERGEGUARD_BENCHMARKS_DIR": str(SHARED_DATA / "hf"),  # offline, as the README's setup says
        "TQDM_DISABLE": "1",
        "COLUMNS": "100",
    }


def _skip_reason(code: str) -> str | None:
    return next((why for key, why in SKIP.items() if key in code), None)


def _expected(line: str) -> int:
    """The exit status a line's comment documents (`# ... exit 1`), else 0."""
    found = re.search(r"\bexit (\d)", line.partition("#")[2])
    return int(found.group(1)) if found else 0


def _run(args: list[str], work: Path, code: str) -> subprocess.CompletedProcess[str]:
    if WRITES_MERGED.search(code) and (work / "merged").exists():  # each merge example starts afresh
        shutil.rmtree(work / "merged")
    return subprocess.run(args, cwd=work, env=_env(work), capture_output=True, text=True, timeout=300)


def test_readme_code_blocks_run_as_written(workdir: Path) -> None:
    text = README.read_text(encoding="utf-8")
    if "../shared/data/hf" in text and not SHARED_DATA.is_dir():
        pytest.skip("the README's examples read ../shared/data/hf, absent here")
    failures: list[str] = []
    ran = 0
    for language, start, code in blocks(text):
        if language == "python":
            if _skip_reason(code):
                continue
            done = _run([sys.executable, "-c", PYTHON_PRELUDE + code], workdir, code)
            ran += 1
            if done.returncode != 0:
                failures.append(f"README line {start} (python): {done.stderr.strip().splitlines()[-1:]}")
            continue
        assignments: list[str] = []
        for offset, line in enumerate(code.splitlines()):
            command = line.strip()
            if not command or command.startswith("#") or _skip_reason(command):
                continue
            if re.match(r"^\w+=", command):
                assignments.append(command)
                continue
            done = _run(["bash", "-c", "\n".join([*assignments, command])], workdir, command)
            ran += 1
            if done.returncode != _expected(command):
                why = (done.stderr.strip().splitlines() or [""])[-1]
                failures.append(f"README line {start + offset} exit {done.returncode}: {command}\n    {why}")
    assert ran > 20
    assert not failures, "\n".join(failures)
