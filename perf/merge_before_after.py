"""A merge's wall time, CPU and peak RSS on two commits of mergeguard, run by run alternately (a change's cost
on the same machine at the same time): the commands of `perf/merge_vs_mergekit.py` (`merge --no-audit -q`).

Each commit's package is exported (`git archive`) into a folder, laid out as installed and compiled to
bytecode, as `pip install` does; the runs import it through PYTHONPATH. The models and configs are those
`perf/merge_vs_mergekit.py` builds (run it once first):

    python perf/merge_before_after.py BEFORE [AFTER=HEAD] [--repeat 7] [--methods linear,ties]
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import merge_vs_mergekit as mvm

REPO = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("auditor", "benchmarks", "db", "merge")  # installed as mergeguard.<name>
RUNNER = "import sys; from mergeguard.cli import main; sys.exit(main(sys.argv[1:]))"


def export(commit: str, into: Path) -> Path:
    """The package of `commit` laid out as installed (mergeguard/ with its sub-packages), compiled."""
    archive = subprocess.run(["git", "archive", commit, "mergeguard", *PACKAGE_FOLDERS], cwd=REPO,
                             capture_output=True, check=True).stdout  # fmt: skip
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    for name in PACKAGE_FOLDERS:
        shutil.move(str(into / name), str(into / "mergeguard" / name))
    compileall.compile_dir(into / "mergeguard", quiet=1)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after", nargs="?", default="HEAD")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--methods", default="linear,ties")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mergeguard-perf"))
    args = parser.parse_args()
    runs: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {label: export(commit, Path(tmp) / label) for label, commit in
                 (("before", args.before), ("after", args.after))}  # fmt: skip
        for _ in range(args.repeat):
            for method in args.methods.split(","):
                for label, tree in trees.items():
                    os.environ["PYTHONPATH"] = str(tree)
                    out = Path(tmp) / f"out-{label}-{method}"
                    command = [
                        sys.executable,
                        "-c",
                        RUNNER,
                        "merge",
                        str(args.work / f"{method}.yml"),
                        str(out),
                    ]
                    command += ["--force", "--quiet", "--no-audit", "--random-seed", "0"]
                    runs.setdefault((method, label), []).append(mvm.timed(command))
                    shutil.rmtree(out, ignore_errors=True)
    print(f"{args.before} (before) and {args.after} (after), {args.repeat} runs each, alternated; medians")
    for (method, label), measured in runs.items():
        wall = statistics.median(r[0] for r in measured)
        cpu = statistics.median(r[2] for r in measured)
        rss, tree = statistics.median(r[1] for r in measured), statistics.median(r[3] for r in measured)
        print(
            f"{method:8} {label:6} wall {wall:.2f} s  CPU {cpu:.2f} s  RSS {rss:.0f} MB (tree {tree:.0f} MB)"
        )


if __name__ == "__main__":
    main()
