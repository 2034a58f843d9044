"""Family check: fine-tunes trained for real stay parallel to their base; independent inits do not."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mergekit_configs import weighted_config, write_config
from safetensors.torch import load_file, save_file

from mergeguard.errors import MergeguardError
from mergeguard.merge.family import (
    CALIBRATED,
    UnrelatedModelsError,
    family_check,
    sample_tensor_names,
)
from mergeguard.merge.io import tensor_index


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, above all on a busy machine (the merge --check test)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_real_finetunes_of_one_base_are_related(trained: dict[str, Path]) -> None:
    report = family_check([trained["ft_a"], trained["ft_b"]], base=trained["base"])
    assert report.related and report.threshold == CALIBRATED and report.unrelated_pairs() == []
    assert len(report.pairs) == 2
    for pair in report.pairs:
        assert pair.a == str(trained["base"].resolve())
        assert pair.similarity > 0.9, pair  # measured 0.98 and 0.99
        assert len(pair.tensors) == 3 and set(pair.per_tensor) == set(pair.tensors)
    pairwise = family_check([trained["ft_a"], trained["ft_b"]])
    assert pairwise.related and len(pairwise.pairs) == 1 and pairwise.pairs[0].similarity > 0.9
    report.raise_if_unrelated()  # no error


def test_independently_initialised_model_is_refused(trained: dict[str, Path]) -> None:
    report = family_check([trained["ft_a"], trained["independent"]], base=trained["base"])
    assert not report.related
    bad = report.unrelated_pairs()
    assert [Path(p.b).name for p in bad] == ["independent"]
    assert abs(bad[0].similarity) < 0.1  # trained on the same English, still ~0
    with pytest.raises(UnrelatedModelsError) as caught:
        report.raise_if_unrelated()
    message = str(caught.value)
    assert "independent" in message and f"{bad[0].similarity:.3f}" in message
    assert "--allow-unrelated" in message
    assert caught.value.pair is bad[0]


def test_random_inits_of_identical_shapes_are_unrelated(models) -> None:
    inits = [models.base("llama", seed=seed, num_layers=2) for seed in (10, 11, 12)]
    report = family_check(inits)
    assert len(report.pairs) == 3 and not report.related
    assert all(abs(p.similarity) < 0.1 and not p.related for p in report.pairs)
    variant = models.finetune(inits[0], seed=5)  # base + small deltas: related
    assert family_check([variant], base=inits[0]).related


def test_passthrough_of_a_model_with_itself_is_allowed(trained: dict[str, Path]) -> None:
    same = family_check([trained["ft_a"], trained["ft_a"]])
    assert same.related and same.pairs == []
    with_base = family_check([trained["base"], trained["ft_a"]], base=trained["base"])
    assert with_base.related and len(with_base.pairs) == 1


def test_threshold_is_a_parameter(trained: dict[str, Path]) -> None:
    strict = family_check([trained["ft_a"]], base=trained["base"], threshold=0.9999)
    assert not strict.related and strict.threshold == 0.9999
    data = json.loads(strict.to_json())
    assert data["related"] is False and data["pairs"][0]["b"].endswith("ft_a")


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("llama", ["model.embed_tokens.weight", "model.layers.2.self_attn.q_proj.weight", "mlp.up_proj"]),
        ("gpt2", ["transformer.wte.weight", "transformer.h.2.attn.c_attn.weight", "mlp.c_fc"]),
        ("phi3", ["model.embed_tokens.weight", "model.layers.2.self_attn.qkv_proj.weight", "gate_up_proj"]),
    ],
)
def test_sampled_tensors_come_from_the_middle_layer(models, arch: str, expected: list[str]) -> None:
    folder = models.base(arch, seed=0)
    index = tensor_index(folder)
    from mergeguard.merge.family import _shapes

    names = sample_tensor_names(_shapes(index))
    assert names[:2] == expected[:2]
    assert expected[2] in names[2] and ".2." in names[2]


def test_sharded_models_and_a_grown_vocabulary(models, tmp_path: Path) -> None:
    base = models.base("qwen2", seed=3, sharded=True)
    assert len(set(tensor_index(base).values())) > 1
    assert family_check([models.finetune(base, seed=1)], base=base).related
    # a fine-tune that added tokens: its embedding has more rows; the rows both have are compared
    grown = tmp_path / "grown"
    shutil.copytree(base, grown)
    for path in grown.glob("*.safetensors"):
        tensors = load_file(path)
        if "model.embed_tokens.weight" in tensors:
            extra = torch.randn(16, tensors["model.embed_tokens.weight"].shape[1])
            tensors["model.embed_tokens.weight"] = torch.cat([tensors["model.embed_tokens.weight"], extra])
            save_file(tensors, path, metadata={"format": "pt"})
    pair = family_check([grown], base=base).pairs[0]
    assert "model.embed_tokens.weight" in pair.tensors and pair.similarity > 0.999


def test_models_with_nothing_comparable_are_left_to_the_engine(models) -> None:
    report = family_check([models.base("gpt2", seed=0), models.base("llama", seed=0)])
    assert report.related and report.pairs[0].tensors == [] and "not compared" in report.pairs[0].note
    assert family_check([]).related


def test_folder_without_weights_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MergeguardError, match="no safetensors weights"):
        family_check([tmp_path])


def _linear(path: Path, *models: Path, base: Path | None = None) -> Path:
    return write_config(path, weighted_config(models, base=base, dtype="float32"))


def test_merge_cli_refuses_unrelated_models_unless_allowed(
    trained: dict[str, Path], tmp_path: Path, capsys
) -> None:
    from mergeguard.cli import main

    config = _linear(tmp_path / "bad.yml", trained["ft_a"], trained["independent"])
    assert main(["merge", str(config), str(tmp_path / "refused"), "--no-audit", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "look unrelated" in err and "independent" in err and "--allow-unrelated" in err
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "allowed"
    assert main(["merge", str(config), str(out), "--no-audit", "--quiet", "--allow-unrelated"]) == 0
    assert "merging anyway (--allow-unrelated)" in capsys.readouterr().err
    assert (out / "config.json").is_file()


def test_merge_cli_check_of_related_finetunes(trained: dict[str, Path], tmp_path: Path, capsys) -> None:
    from mergeguard.cli import main

    config = _linear(tmp_path / "good.yml", trained["ft_a"], trained["ft_b"])
    out = tmp_path / "good"
    assert main(["merge", str(config), str(out), "--no-audit", "--quiet", "--check"]) == 0
    printed = capsys.readouterr().out
    assert "verdict: ok" in printed and str(trained["ft_b"]) in printed
