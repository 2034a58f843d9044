"""Sanity check: a good merge of real fine-tunes is ok, a damaged model is degraded or broken."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergeguard.cli import main
from mergeguard.errors import MergeguardError
from mergeguard.merge.sanity import (
    BROKEN_FACTOR,
    DEGRADED_FACTOR,
    PROMPTS,
    VERDICT_EXIT_CODES,
    SanityReport,
    judge,
    measure,
    repetition,
    sample_text,
    sanity_check,
    scan_nonfinite,
    tokenizer_folder,
)
from mergeguard.progress import ProgressEvent

Tensors = dict[str, torch.Tensor]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, above all on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def derive(src: Path, dst: Path, change: Callable[[Tensors], Tensors]) -> Path:
    """Copy a single-file model folder, rewriting its weights with `change`."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    save_file(
        change(load_file(src / "model.safetensors")), dst / "model.safetensors", metadata={"format": "pt"}
    )
    return dst


def scaled(factor: float) -> Callable[[Tensors], Tensors]:
    return lambda t: {k: v * factor if v.ndim == 2 else v for k, v in t.items()}


@pytest.fixture(scope="module")
def merged(trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A linear merge (plain average) of the two real fine-tunes, done here with safetensors."""
    other = load_file(trained["ft_b"] / "model.safetensors")
    out = tmp_path_factory.mktemp("merged") / "avg"
    return derive(trained["ft_a"], out, lambda t: {k: (v + other[k]) / 2 for k, v in t.items()})


@pytest.fixture(scope="module")
def broken(trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every matrix scaled x10: the classic symptom of a merge that summed where it should have averaged."""
    return derive(trained["ft_a"], tmp_path_factory.mktemp("broken") / "x10", scaled(10.0))


def test_a_merge_of_real_finetunes_is_ok_and_near_its_parents(merged: Path, trained: dict[str, Path]) -> None:
    report = sanity_check(merged, [trained["ft_a"], trained["ft_b"]], max_tokens=512)
    parents = list(report.parent_perplexities.values())
    assert report.verdict == "ok", report.reasons
    assert report.reasons == [] and report.nonfinite_tensors == [] and report.exit_code == 0
    assert min(parents) / 2 < report.perplexity < max(parents) * DEGRADED_FACTOR, (report.perplexity, parents)
    assert max(parents) < 100  # the parents are real (if small) language models, not random ones
    assert 0 < report.tokens <= 512 and len(report.samples) == len(PROMPTS)
    assert all(s.startswith(p) for s, p in zip(report.samples, PROMPTS, strict=True))


def test_scaled_weights_are_broken(broken: Path, trained: dict[str, Path]) -> None:
    events: list[ProgressEvent] = []
    report = sanity_check(broken, [trained["ft_a"]], max_tokens=256, progress=events.append)
    assert report.verdict == "broken" and report.exit_code == VERDICT_EXIT_CODES["broken"]
    ends = [e for e in events if e.finished]  # each step reported through the callback, to its end
    parent = trained["ft_a"].name
    assert [e.step for e in ends] == [
        f"{kind} {name}" for kind, name in [("scan", "x10"), ("perplexity", "x10"), ("generate", "x10")]
    ] + [f"perplexity {parent}", f"generate {parent}"]
    assert all(e.done == e.total and e.total for e in ends)
    assert ends[-1].total == len(PROMPTS)
    worst = report.parent_perplexities[str(trained["ft_a"])]
    assert report.perplexity > BROKEN_FACTOR * worst
    assert any("worst parent" in r for r in report.reasons)


def test_mildly_scaled_weights_are_degraded(trained: dict[str, Path], tmp_path: Path) -> None:
    damaged = derive(trained["ft_a"], tmp_path / "x1.5", scaled(1.5))  # measured ~4x the parent's perplexity
    report = sanity_check(damaged, [trained["ft_a"]], max_tokens=256)
    assert report.verdict == "degraded", (report.perplexity, report.parent_perplexities, report.reasons)
    assert report.exit_code == 3


def test_nan_weights_are_broken_without_loading_the_model(trained: dict[str, Path], tmp_path: Path) -> None:
    def poison(t: Tensors) -> Tensors:
        t["model.layers.1.mlp.down_proj.weight"][0, 0] = math.nan
        t["model.norm.weight"][1] = math.inf
        return t

    folder = derive(trained["ft_a"], tmp_path / "nan", poison)
    assert scan_nonfinite(folder) == ["model.layers.1.mlp.down_proj.weight", "model.norm.weight"]
    (folder / "config.json").write_text("{not json")  # proves it is never loaded
    report = sanity_check(folder, [trained["ft_a"]])
    assert report.verdict == "broken" and "NaN/inf" in report.reasons[0]
    data = json.loads(report.to_json(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert data["perplexity"] is None and data["nonfinite_tensors"] == report.nonfinite_tensors


def test_tokenizer_falls_back_to_a_parent(merged: Path, trained: dict[str, Path], tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(merged, bare, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json"))
    with pytest.raises(MergeguardError, match="no tokenizer"):
        sanity_check(bare, max_tokens=64)
    assert measure(bare, max_tokens=64, tokenizer_dir=tokenizer_folder(bare, [trained["base"]])).tokens == 63


@pytest.mark.parametrize(
    ("ids", "expected"),
    [([1, 2, 3, 4, 5, 6], 0.0), ([7] * 10, 1 - 1 / 8), ([1, 2] * 5, 1 - 2 / 8), ([1, 2], 0.0)],
)
def test_repetition_is_the_share_of_repeated_trigrams(ids: list[int], expected: float) -> None:
    assert repetition(ids) == pytest.approx(expected)


def test_judge_rules() -> None:
    parents = {"a": 20.0, "b": 40.0}
    reps = {"a": 0.1, "b": 0.2}
    assert judge(30.0, 0.2, parents, reps, vocab_size=512) == ("ok", [])
    assert judge(50.0, 0.2, parents, reps, vocab_size=512)[0] == "ok"  # 1.25x the worst parent
    assert judge(100.0, 0.2, parents, reps, vocab_size=512)[0] == "degraded"
    assert judge(500.0, 0.2, parents, reps, vocab_size=512)[0] == "broken"
    assert judge(30.0, 0.6, parents, reps, vocab_size=512)[0] == "degraded"  # loops more than parents
    assert judge(30.0, 0.45, {"a": 20.0}, {"a": 0.1}, vocab_size=512)[0] == "ok"  # more, but not loops
    assert judge(30.0, 0.95, parents, reps, vocab_size=512)[0] == "broken"
    assert judge(30.0, 0.95, parents, {"a": 0.93}, vocab_size=512)[0] == "ok"  # the parents loop too
    assert judge(600.0, 0.0, {}, {}, vocab_size=512)[0] == "broken"  # worse than uniform guessing
    assert judge(math.inf, 0.0, {}, {}, vocab_size=512)[0] == "broken"
    assert judge(300.0, 0.0, {}, {}, vocab_size=512) == ("ok", [])  # no parents: only absolute rules


def test_report_json_round_trip() -> None:
    report = SanityReport("m", "ok", 12.5, {"p": math.inf}, 0.1, [], ["x"], [])
    data = json.loads(report.to_json())
    assert data["parent_perplexities"] == {"p": None} and data["verdict"] == "ok"
    assert len(sample_text().split()) > 300


def test_cli_check_ok_as_json(merged: Path, trained: dict[str, Path], capsys) -> None:
    code = main(["check", str(merged), "--against", str(trained["ft_b"]), "--max-tokens", "256", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    data = json.loads(out)
    assert data["verdict"] == "ok" and list(data["parent_perplexities"]) == [str(trained["ft_b"])]


def test_cli_check_broken_prints_a_table_and_exits_4(broken: Path, capsys) -> None:
    code = main(["check", str(broken), "--max-tokens", "128"])
    out = capsys.readouterr().out
    assert code == 4
    assert "verdict: broken" in out and "worse than guessing" in out and "perplexity" in out


def test_cli_check_errors(tmp_path: Path, capsys) -> None:
    assert main(["check", str(tmp_path / "missing")]) == 2
    assert main(["check", str(tmp_path), "--device", "tpu"]) == 2
    assert "unknown device" in capsys.readouterr().err
