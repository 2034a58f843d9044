"""The Ray engine (#16) with a real Ray, offline: a local Ray started by a session fixture, and a two-node
cluster on this machine (`ray start --head` plus a second `ray start --address` with its own resources),
each giving exactly the local engine's findings on a real corpus with planted items; a worker node killed
during a run loses nothing and hangs nothing; an unreachable address fails in seconds."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest
from engine_corpus import BENCHMARKS, finding_keys, planted_rows, write_jsonl, write_parquet_shards

from mergeguard.auditor import AuditOptions, audit_datasets

RAY = str(Path(sys.executable).with_name("ray"))
MERGEGUARD = str(Path(sys.executable).with_name("mergeguard"))
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}  # a private test cluster


@pytest.fixture(scope="module")
def options(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> AuditOptions:
    cache = tmp_path_factory.mktemp("ray-cache")
    return AuditOptions(benchmarks=BENCHMARKS, benchmarks_dir=shared_data / "hf", cache_dir=cache, workers=1)


@pytest.fixture(scope="module")
def corpus(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    rows, planted = planted_rows(shared_data, copies=4)
    folder = tmp_path_factory.mktemp("ray-corpus")
    return {
        "planted": planted,
        "jsonl": write_jsonl(rows, folder / "sft.jsonl"),
        "parquet": write_parquet_shards(rows, folder / "sft-parquet", files=4, row_group=2500),
    }


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local Ray for this module's in-process tests (the engine joins it rather than start its own)."""
    import ray

    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False
    )
    yield
    ray.shutdown()


def _node_running_a_task(nodes: list[subprocess.Popen], timeout: float = 90) -> subprocess.Popen | None:
    """The first of `nodes` seen running one of the audit's tasks (Ray Data reading rows, or the engine's
    batch function; an idle worker's title is `ray::IDLE`), or None if none did within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in nodes:
            for child in psutil.Process(node.pid).children(recursive=True):
                try:
                    if any(name in " ".join(child.cmdline()) for name in ("MapBatches", "ReadFiles")):
                        return node
                except psutil.Error:
                    continue
        time.sleep(0.1)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray_node(log: Path, *args: str) -> subprocess.Popen:
    """`ray start ... --block` in its own process group (stopped by killing that group, never `ray stop`,
    which would stop every Ray on the machine)."""
    command = [RAY, "start", "--block", "--num-cpus=1", "--disable-usage-stats", *args]
    command += [f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}"]
    with log.open("w") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **RAY_ENV},
        )


def _stop(node: subprocess.Popen) -> None:
    if node.poll() is None:
        os.killpg(node.pid, signal.SIGKILL)
        node.wait()


def _wait_for_nodes(address: str, count: int, timeout: float = 60) -> None:
    """Until `count` nodes are alive in the cluster (asked from a separate driver process)."""
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False); "
        "print(sum(1 for n in ray.nodes() if n['Alive']))"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(
            [sys.executable, "-c", probe, address],
            capture_output=True,
            text=True,
            env={**os.environ, **RAY_ENV},
        )
        if done.returncode == 0 and int(done.stdout.split()[-1]) >= count:
            return
        time.sleep(1)
    raise AssertionError(f"the cluster at {address} did not reach {count} nodes")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A head node and a second node with its own resources, each of one CPU, on this machine."""
    logs = tmp_path_factory.mktemp("ray-cluster")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head = _ray_node(
        logs / "head.log",
        "--head",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--include-dashboard=false",
    )
    nodes = [head]
    try:
        time.sleep(3)
        nodes.append(_ray_node(logs / "second.log", f"--address={address}", '--resources={"second": 1}'))
        _wait_for_nodes(address, 2)
        yield {"address": address, "logs": logs, "nodes": nodes}
    finally:
        for node in reversed(nodes):
            _stop(node)


def _cli_audit(
    dataset: Path, options: AuditOptions, db: Path, *extra: str, timeout: float = 300
) -> subprocess.CompletedProcess:
    command = [MERGEGUARD, "audit", "--dataset", str(dataset), "--benchmark", ",".join(BENCHMARKS)]
    command += ["--benchmarks-dir", str(options.benchmarks_dir), "--cache-dir", str(options.cache_dir)]
    command += ["--db", str(db), "--json", "-q", *extra]
    env = {**os.environ, **RAY_ENV}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def _keys(findings: list[dict]) -> list[tuple]:
    return sorted(
        (f["dataset"], f["example"], f["benchmark"], f["item"], f["severity"], f["score"], f["evidence"])
        for f in findings
    )


@pytest.mark.parametrize("form", ["jsonl", "parquet"])
def test_local_ray_gives_the_local_engines_findings(
    local_ray: None, options: AuditOptions, corpus: dict, form: str
) -> None:
    ref = str(corpus[form])
    local = audit_datasets([ref], options)
    on_ray = audit_datasets([ref], replace(options, engine="ray"))
    assert finding_keys(on_ray) == finding_keys(local)
    assert {f.example for f in on_ray.findings} == set(corpus["planted"])
    assert on_ray.models[0].datasets[0]["status"] == "complete"


def _local_keys(report: Any, ref: str) -> list[tuple]:
    """The finding keys under another name for the dataset (a URL of the same files)."""
    return sorted((ref, *key[1:]) for key in finding_keys(report))


def test_a_parquet_url_gives_the_local_engines_findings(
    local_ray: None, options: AuditOptions, corpus: dict
) -> None:
    """A URL's shards are read by the Ray tasks through pyarrow's filesystems (a file:// URL stands here for
    s3:// or gs://, which go through the same layer)."""
    url = Path(corpus["parquet"]).resolve().as_uri()
    local = audit_datasets([str(corpus["parquet"])], options)
    on_ray = audit_datasets([url], replace(options, engine="ray"))
    assert finding_keys(on_ray) == _local_keys(local, url)
    dataset = on_ray.models[0].datasets[0]
    assert (dataset["status"], dataset["files"]) == ("complete", 4)
    assert dataset["examples"] == local.models[0].datasets[0]["examples"]


def test_a_missing_text_field_is_named_as_the_local_engine_names_it(
    local_ray: None, options: AuditOptions, corpus: dict
) -> None:
    asked = replace(options, only_text_field="prompt")
    local = audit_datasets([str(corpus["parquet"])], asked).models[0].datasets[0]
    on_ray = audit_datasets([str(corpus["parquet"])], replace(asked, engine="ray")).models[0].datasets[0]
    assert local["status"] == "unreadable"
    assert (on_ray["status"], on_ray["reasons"]) == (local["status"], local["reasons"])


@pytest.mark.slow
def test_two_node_cluster_gives_the_local_engines_findings(
    cluster: dict, options: AuditOptions, corpus: dict, tmp_path: Path
) -> None:
    """The CLI joins the cluster (`--ray-address`); its findings are the local engine's, and it is stored."""
    local = audit_datasets([str(corpus["parquet"])], options)
    done = _cli_audit(corpus["parquet"], options, tmp_path / "db.sqlite", "--ray-address", cluster["address"])
    assert done.returncode == 1, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    expected = [(str(corpus["parquet"]), *key[1:]) for key in finding_keys(local)]
    assert _keys(report["findings"]) == sorted(expected)
    assert (tmp_path / "db.sqlite").is_file()


@pytest.mark.slow
def test_killing_a_worker_node_mid_run_loses_nothing(
    cluster: dict, options: AuditOptions, shared_data: Path, tmp_path: Path
) -> None:
    """A third node joins; a worker node (not the head) that takes tasks is killed while the audit runs:
    Ray runs its tasks again on the nodes left, and the audit ends with exactly the local engine's findings
    (no loss, no hang). Which worker node Ray Data sends tasks to is its own choice: either is killed."""
    rows, planted = planted_rows(shared_data, copies=24, plants=20, seed=11)
    data = write_parquet_shards(rows, tmp_path / "big", files=24, row_group=5000)
    local = audit_datasets([str(data)], options)
    third = _ray_node(cluster["logs"] / "third.log", f"--address={cluster['address']}")
    cluster["nodes"].append(third)
    _wait_for_nodes(cluster["address"], 3)
    command = [MERGEGUARD, "audit", "--dataset", str(data), "--benchmark", ",".join(BENCHMARKS)]
    command += ["--benchmarks-dir", str(options.benchmarks_dir), "--cache-dir", str(options.cache_dir)]
    command += ["--db", str(tmp_path / "db.sqlite"), "--json", "-q", "--ray-address", cluster["address"]]
    run = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **RAY_ENV}
    )
    busy = _node_running_a_task(cluster["nodes"][1:])
    assert busy is not None, "no worker node took a task"
    assert run.poll() is None, "the audit ended before the node could be killed: give it more rows"
    _stop(busy)
    out, err = run.communicate(timeout=240)
    assert run.returncode == 1, err[-2000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert _keys(report["findings"]) == sorted(finding_keys(local))
    assert {f["example"] for f in report["findings"]} >= set(planted)


def test_unreachable_address_fails_in_seconds(options: AuditOptions, corpus: dict, tmp_path: Path) -> None:
    """Exit 2 with one clear line, long before any Ray timeout, and nothing written to the database."""
    start = time.monotonic()
    done = _cli_audit(
        corpus["jsonl"], options, tmp_path / "db.sqlite", "--ray-address", f"127.0.0.1:{_free_port()}"
    )
    assert time.monotonic() - start < 20
    assert done.returncode == 2
    assert "cannot reach a Ray cluster at 127.0.0.1:" in done.stderr
    assert not (tmp_path / "db.sqlite").exists()
