"""How long the family check takes, and how little it reads, on large models.

Writes three synthetic bf16 models with Llama tensor names (a base, a fine-tune = base + small noise, and an
independent init of the same shapes) and times `family_check` on them. The check reads a few row blocks of
three tensors per model, so its time should not grow with the model's size.

    .venv/bin/python perf/family_check.py [--hidden 2048] [--layers 8] [--vocab 32000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from mergeguard.merge.family import ROW_BLOCKS, ROWS_PER_BLOCK, family_check


def tensors(hidden: int, layers: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inter = int(hidden * 2.75)
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"model.layers.{i}.self_attn.{proj}.weight"] = (hidden, hidden)
        shapes[f"model.layers.{i}.mlp.gate_proj.weight"] = (inter, hidden)
        shapes[f"model.layers.{i}.mlp.up_proj.weight"] = (inter, hidden)
        shapes[f"model.layers.{i}.mlp.down_proj.weight"] = (hidden, inter)
    return {
        name: (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
        for name, shape in shapes.items()
    }


def write(folder: Path, weights: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--keep", type=Path, default=None, help="Write the models here and keep them.")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="mergeguard-family-"))
    base_weights = tensors(args.hidden, args.layers, args.vocab, seed=0)
    base = write(root / "base", base_weights)
    noise = torch.Generator().manual_seed(1)
    write(
        root / "ft",
        {
            k: (v.float() + torch.randn(v.shape, generator=noise) * 0.002).to(v.dtype)
            for k, v in base_weights.items()
        },
    )
    del base_weights
    write(root / "independent", tensors(args.hidden, args.layers, args.vocab, seed=2))
    size = sum(p.stat().st_size for p in root.rglob("*.safetensors")) / 3
    start = time.perf_counter()
    report = family_check([root / "ft", root / "independent"], base=base)
    seconds = time.perf_counter() - start
    if args.keep is None:
        shutil.rmtree(root)
    read = 3 * 3 * ROW_BLOCKS * ROWS_PER_BLOCK * args.hidden * 2  # models x tensors x rows x row bytes
    print(
        json.dumps(
            {
                "model_bytes": int(size),
                "seconds": round(seconds, 4),
                "bytes_read_approx": read,
                "similarities": {Path(p.b).name: round(p.similarity, 4) for p in report.pairs},
                "related": {Path(p.b).name: p.related for p in report.pairs},
            }
        )
    )


if __name__ == "__main__":
    main()
