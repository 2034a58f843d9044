"""Fail closed, for the output folder and the processes of a merge (issue 20, items 3 and 5): OUT never
harms an input or the working folder, `--force` replaces only an earlier merge (its marker file), workers
die with their parent, SIGTERM stops a merge like Ctrl-C, and dead runs' temporary folders are removed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mergekit_configs import weighted_config, write_config

from mergeguard.cli import main
from mergeguard.merge.output import MARKER


@pytest.fixture
def inputs(models, tmp_path: Path) -> Path:
    """A folder holding two real input models (copies of the tiny fixture models), as a user keeps them."""
    base = models.base("llama", seed=0, num_layers=2)
    folder = tmp_path / "models"
    shutil.copytree(base, folder / "base")
    shutil.copytree(models.finetune(base, seed=1), folder / "ft")
    return folder


def _config(folder: Path, inputs: Path) -> Path:
    return write_config(folder / "merge.yml", weighted_config([inputs / "base", inputs / "ft"]))


def _hashes(folder: Path) -> dict[str, str]:
    """Every file under `folder` (links followed) and its sha256."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _merge(config: Path, out: str | Path, tmp_path: Path, *extra: str) -> int:
    args = ["merge", str(config), str(out), "--no-audit", "--quiet", "--db", str(tmp_path / "db.sqlite")]
    return main([*args, *extra])


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return " ".join(err.split())  # rich may wrap a long line: compare the words


@pytest.mark.parametrize(
    ("where", "problem"),
    [
        ("holding", "holds the input model"),
        ("model", "is the input model"),
        ("inside", "lies inside the input model"),
        ("link", "is the input model"),
    ],
)
def test_out_overlapping_an_input_is_refused_even_with_force(
    inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, problem: str
) -> None:
    """The issue's cases: OUT = the folder holding the inputs, = an input, inside one, a link to one."""
    config = _config(tmp_path, inputs)
    before = _hashes(inputs)
    out = {
        "holding": inputs,
        "model": inputs / "ft",
        "inside": inputs / "ft" / "merged",
        "link": tmp_path / "link",
    }[where]
    if where == "link":
        out.symlink_to(inputs / "ft", target_is_directory=True)
    assert _merge(config, out, tmp_path, "--force") == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: output folder {out} {problem} ")
    assert line.endswith("; choose an output folder outside the inputs")
    assert _hashes(inputs) == before
    assert not (inputs / "ft" / "merged").exists()
    assert not [p for p in tmp_path.rglob("*") if "mergeguard-" in p.name]


def test_out_dot_never_wipes_the_working_folder(
    inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "home" / "work"
    work.mkdir(parents=True)
    (work / "notes.txt").write_text("mine\n")
    config = _config(work, inputs)
    before, models_before = _hashes(work), _hashes(inputs)
    monkeypatch.chdir(work)
    for out in (".", str(work.parent)):  # the working folder, and a folder above it
        assert _merge(config, out, tmp_path, "--force") == 2
        line = _error_line(capsys)
        assert line.startswith("error: output folder ") and " is the working folder or holds it; " in line
    assert _hashes(work) == before and _hashes(inputs) == models_before
    assert sorted(p.name for p in work.iterdir()) == ["merge.yml", "notes.txt"]


def test_force_replaces_only_an_earlier_merge(
    inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder without mergeguard's marker is never replaced; an earlier merge (marked) is."""
    config = _config(tmp_path, inputs)
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8 not a model")
    before = _hashes(other)
    assert _merge(config, other, tmp_path, "--force") == 2
    assert _error_line(capsys) == (
        f"error: output folder {other} already exists and is not a mergeguard output (no {MARKER} file); "
        "choose a new folder (--force replaces only an earlier mergeguard merge)"
    )
    assert _hashes(other) == before

    out = tmp_path / "out"
    assert _merge(config, out, tmp_path) == 0
    marker = json.loads((out / MARKER).read_text())
    assert marker["tool"] == "mergeguard" and marker["version"] and marker["created"].endswith("Z")
    assert marker["config_sha256"] == hashlib.sha256(config.read_bytes()).hexdigest()
    assert _merge(config, out, tmp_path) == 2
    assert "already exists; choose a new folder or pass --force" in _error_line(capsys)
    (out / "stale.txt").write_text("from the earlier merge\n")
    assert _merge(config, out, tmp_path, "--force") == 0
    assert (out / MARKER).is_file() and not (out / "stale.txt").exists()
    assert not [p.name for p in tmp_path.iterdir() if "mergeguard-" in p.name]


def test_dead_runs_temporary_folders_are_removed_live_ones_kept(inputs: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, inputs)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [f".out.mergeguard-tmp-{dead.pid}", f".other.mergeguard-old-{dead.pid}"]
        kept = [f".out.mergeguard-tmp-{live.pid}", ".out.mergeguard-tmp-x1", "keep.mergeguard-tmp-1"]
        for name in stale + kept:
            (tmp_path / name).mkdir()
            (tmp_path / name / "model-00001-of-00002.safetensors").write_bytes(b"\0" * 1024)
        assert _merge(config, tmp_path / "out", tmp_path) == 0
        left = {p.name for p in tmp_path.iterdir()}
        assert not left & set(stale)
        assert set(kept) <= left
    finally:
        live.kill()
        live.wait()


# ------------------------------------------------------------------ processes: kill -9 and SIGTERM

_SLOW_MERGE = r"""
import dataclasses, sys, threading
import mergeguard.merge.numpy_stream as numpy_stream
from mergeguard.merge.kernels import NumpyKernel
from mergeguard.merge.methods import METHODS
import mg_slow_kernel
numpy_stream.PARALLEL_MIN_ELEMENTS = 0
slow = NumpyKernel(mg_slow_kernel.slow)
METHODS.update({name: dataclasses.replace(m, kernel=slow) for name, m in METHODS.items()})
if sys.argv[1] == "spawn":  # a second thread: the workers are spawned (fork only from a one-thread process)
    threading.Thread(target=threading.Event().wait, daemon=True).start()
from mergeguard.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _start_slow_merge(inputs: Path, tmp_path: Path, start_method: str) -> tuple[subprocess.Popen, list[int]]:
    """A real merge in a subprocess whose workers take 2 s a tensor; returns it once its workers run.
    Its output goes to files (`stderr.txt`): a pipe would stay open as long as any worker lives."""
    started = tmp_path / "started"
    started.mkdir()
    (tmp_path / "mg_slow_kernel.py").write_text(
        "import os, pathlib, time\n\n"
        "def slow(job):\n"
        f"    (pathlib.Path({str(started)!r}) / str(os.getpid())).touch()\n"
        "    time.sleep(2)\n"
    )
    config = _config(tmp_path, inputs)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-c", _SLOW_MERGE, start_method, "merge", str(config), str(tmp_path / "out")]
    with (tmp_path / "stdout.txt").open("wb") as out, (tmp_path / "stderr.txt").open("wb") as err:
        process = subprocess.Popen(
            [*command, "--no-audit", "--quiet", "--db", str(tmp_path / "db.sqlite")],
            env=env,
            start_new_session=True,
            stdout=out,
            stderr=err,
        )
    deadline = time.monotonic() + 60
    while len(list(started.iterdir())) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    workers = [int(p.name) for p in started.iterdir()]
    if not workers:
        process.kill()
        process.wait()
        pytest.fail((tmp_path / "stderr.txt").read_text()[-2000:])
    spawned = [b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in workers]
    assert spawned == [start_method == "spawn"] * len(workers), (start_method, spawned)
    return process, workers


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, or a reused pid of another program, counts as ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return "State:\tZ" not in status and "python" in cmdline


def _gone(pids: list[int], seconds: float) -> bool:
    """True once every process of `pids` has ended, within `seconds`; else it kills them (a failing test
    leaves no orphan) and returns False."""
    deadline = time.monotonic() + seconds
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = [pid for pid in pids if _alive(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    return not alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the workers")
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_workers_die_with_a_parent_killed_by_sigkill(inputs: Path, tmp_path: Path, start_method: str) -> None:
    """kill -9 runs no cleanup in the parent: the workers must still end; the next merge removes the
    dead run's temporary folder."""
    process, workers = _start_slow_merge(inputs, tmp_path, start_method)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert _gone(workers, 5), "a worker process outlived its parent killed with kill -9"
    leftover = tmp_path / f".out.mergeguard-tmp-{process.pid}"
    assert leftover.is_dir()
    assert _merge(_config(tmp_path, inputs), tmp_path / "out", tmp_path) == 0
    assert not leftover.exists() and (tmp_path / "out" / MARKER).is_file()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the workers")
def test_sigterm_stops_a_merge_like_ctrl_c(inputs: Path, tmp_path: Path) -> None:
    before = _hashes(inputs)
    process, workers = _start_slow_merge(inputs, tmp_path, "fork")
    process.send_signal(signal.SIGTERM)  # to the merge process alone, as `kill PID` does
    process.wait(timeout=60)
    assert _gone(workers, 5)
    text = (tmp_path / "stderr.txt").read_text()
    assert process.returncode == 143, text[-2000:]
    assert text.strip() == "error: stopped by SIGTERM; run the command again"
    assert not (tmp_path / "out").exists()
    assert not [p.name for p in tmp_path.iterdir() if "mergeguard-" in p.name]
    assert _hashes(inputs) == before
