"""Wall time and peak RSS of `mergeguard merge` against `mergekit-yaml` on the same configs.

Builds three ~350M-parameter fp16 Llama-shaped models (a base and two fine-tunes) once under --work, runs
linear, task_arithmetic, ties, dare_ties, slerp (t gradient) and passthrough with both tools through
`/usr/bin/time -v`, and prints a table with the ratios. mergekit's figures are cached in the work folder
(`--rerun-mergekit` measures them again), because they take minutes.

    .venv/bin/python perf/merge_vs_mergekit.py [--work /tmp/mergeguard-perf] [--only ties,slerp]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MERGEGUARD = [str(REPO / ".venv" / "bin" / "mergeguard"), "merge"]
MERGEKIT = os.environ.get("MERGEKIT_YAML") or (
    str(Path(os.environ["MERGEKIT_PYTHON"]).with_name("mergekit-yaml"))  # the parity tests' variable
    if os.environ.get("MERGEKIT_PYTHON")
    else "/work/mkvenv/bin/mergekit-yaml"
)

SHAPE = dict(
    vocab_size=32000,
    hidden_size=1024,
    num_layers=24,
    num_heads=16,
    num_kv_heads=8,
    intermediate_size=2816,
    dtype="float16",
)

CONFIGS = {
    "linear": """
        models:
          - model: {base}
            parameters: {{weight: 0.4}}
          - model: {ft1}
            parameters: {{weight: 0.3}}
          - model: {ft2}
            parameters: {{weight: 0.3}}
        merge_method: linear
        dtype: float16
    """,
    "task_arithmetic": """
        models:
          - model: {ft1}
            parameters: {{weight: 0.6}}
          - model: {ft2}
            parameters: {{weight: 0.4}}
        base_model: {base}
        merge_method: task_arithmetic
        dtype: float16
    """,
    "ties": """
        models:
          - model: {ft1}
            parameters: {{weight: 0.6, density: 0.5}}
          - model: {ft2}
            parameters: {{weight: 0.4, density: 0.5}}
        base_model: {base}
        merge_method: ties
        parameters: {{normalize: true}}
        dtype: float16
    """,
    "dare_ties": """
        models:
          - model: {ft1}
            parameters: {{weight: 0.6, density: 0.5}}
          - model: {ft2}
            parameters: {{weight: 0.4, density: 0.5}}
        base_model: {base}
        merge_method: dare_ties
        dtype: float16
    """,
    "slerp": """
        slices:
          - sources:
              - model: {base}
                layer_range: [0, 24]
              - model: {ft1}
                layer_range: [0, 24]
        merge_method: slerp
        base_model: {base}
        parameters:
          t:
            - filter: self_attn
              value: [0, 0.5, 0.3, 0.7, 1]
            - filter: mlp
              value: [1, 0.5, 0.7, 0.3, 0]
            - value: 0.5
        dtype: float16
    """,
    "passthrough": """
        slices:
          - sources:
              - model: {ft1}
                layer_range: [0, 16]
          - sources:
              - model: {ft2}
                layer_range: [8, 24]
        merge_method: passthrough
        dtype: float16
    """,
}


def build_models(work: Path) -> dict[str, Path]:
    """The base and two fine-tunes, built once and reused."""
    from mergeguard import tiny

    paths = {"base": work / "base", "ft1": work / "ft1", "ft2": work / "ft2"}
    if not (paths["base"] / "config.json").is_file():
        shutil.rmtree(paths["base"], ignore_errors=True)
        tiny.build_model(paths["base"], "llama", seed=0, **SHAPE)
    for seed, key in ((1, "ft1"), (2, "ft2")):
        if not (paths[key] / "config.json").is_file():
            shutil.rmtree(paths[key], ignore_errors=True)
            tiny.finetune_variant(paths["base"], paths[key], seed=seed, scale=0.01)
    return paths


def _tree_rss_mb(root: int) -> float:
    """Summed resident memory of `root` and all its descendants (worker processes included), in MB.

    Reads /proc/PID/task/PID/children and /proc/PID/statm only, so that sampling costs little CPU.
    """
    total, todo = 0, [root]
    page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
    while todo:
        pid = todo.pop()
        try:
            todo += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except OSError:
            continue
    return total * page_mb


def timed(command: list[str]) -> tuple[float, float, float, float]:
    """Run `command` under /usr/bin/time -v: (wall s, peak RSS MB of the biggest process, CPU s, peak RSS MB
    of the whole process tree, sampled every 50 ms: the sum over worker processes)."""
    process = subprocess.Popen(
        ["/usr/bin/time", "-v", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    tree_peak = 0.0
    while process.poll() is None:
        tree_peak = max(tree_peak, _tree_rss_mb(process.pid))
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        sys.stderr.write(stdout[-3000:] + stderr[-3000:])
        raise SystemExit(f"failed: {' '.join(command)}")
    wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    user = re.search(r"User time \(seconds\): ([\d.]+)", stderr)
    system = re.search(r"System time \(seconds\): ([\d.]+)", stderr)
    assert wall and rss and user and system, stderr[-2000:]
    seconds = int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))
    return seconds, int(rss.group(1)) / 1024, float(user.group(1)) + float(system.group(1)), tree_peak


def precompile() -> None:
    """Compile mergeguard's modules to bytecode, as `pip install` does for an installed package.

    An editable install writes `__pycache__` on first use, unless PYTHONDONTWRITEBYTECODE is set (as in
    this sandbox): then every run would compile every module again (~0.4 s of CPU), a cost no user pays.
    """
    import compileall

    for folder in ("mergeguard", "merge", "db", "auditor", "benchmarks"):
        compileall.compile_dir(REPO / folder, quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mergeguard-perf"))
    parser.add_argument("--only", default=",".join(CONFIGS), help="comma-separated methods")
    parser.add_argument(
        "--rerun-mergekit", action="store_true", help="measure mergekit again (right before mergeguard)"
    )
    parser.add_argument("--skip-mergekit", action="store_true", help="only mergeguard (uses cached rival)")
    parser.add_argument("--skip-mergeguard", action="store_true", help="only measure (and cache) mergekit")
    parser.add_argument("--repeat", type=int, default=3, help="mergeguard runs per method (median reported)")
    parser.add_argument("--mergekit-repeat", type=int, default=1, help="mergekit runs per method (median)")
    args = parser.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    precompile()
    paths = build_models(work)
    cache_file = work / "mergekit_results.json"
    cached = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    rows = []
    for method in args.only.split(","):
        config = work / f"{method}.yml"
        config.write_text(textwrap.dedent(CONFIGS[method]).format(**{k: str(v) for k, v in paths.items()}))
        if not args.skip_mergekit and (args.rerun_mergekit or method not in cached):
            out = work / f"out-mergekit-{method}"
            shutil.rmtree(out, ignore_errors=True)
            theirs = []
            for _ in range(args.mergekit_repeat):
                theirs.append(timed([MERGEKIT, str(config), str(out), "--random-seed", "0"]))
                shutil.rmtree(out, ignore_errors=True)
            cached[method] = list(sorted(theirs)[len(theirs) // 2])[:3]  # the median run by wall time
            cache_file.write_text(json.dumps(cached, indent=1))
        mine = None
        if not args.skip_mergeguard:
            out = work / f"out-mergeguard-{method}"
            runs = []
            for _ in range(args.repeat):
                runs.append(
                    timed(
                        [*MERGEGUARD, str(config), str(out), "--force", "--quiet", "--no-audit"]
                        + ["--random-seed", "0"]
                    )
                )
                shutil.rmtree(out, ignore_errors=True)
            mine = sorted(runs)[len(runs) // 2]  # the median run by wall time
        rows.append((method, cached.get(method), mine))
        print(f"done {method}: mergekit={cached.get(method)} mergeguard={mine}", file=sys.stderr, flush=True)
    print("On a shared machine CPU seconds (user+sys) are steadier than wall time. mergeguard: median of")
    print(f"{args.repeat} runs by wall time; RSS: the biggest process, and the whole tree (workers summed).")
    print(
        "| method | mergekit wall s | mergekit CPU s | mergekit RSS MB | mergeguard wall s | mergeguard CPU s"
        " | mergeguard RSS MB (biggest / tree) | wall ratio | CPU ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    nan = float("nan")
    for method, theirs, mine in rows:
        t_s, t_m, t_c = (list(theirs) + [nan])[:3] if theirs else (nan, nan, nan)
        m_s, m_m, m_c, m_t = mine if mine else (nan, nan, nan, nan)
        print(
            f"| {method} | {t_s:.1f} | {t_c:.1f} | {t_m:.0f} | {m_s:.2f} | {m_c:.1f} | {m_m:.0f} / {m_t:.0f}"
            f" | {t_s / m_s:.1f}x | {t_c / m_c:.1f}x |"
        )


if __name__ == "__main__":
    main()
