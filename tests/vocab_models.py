"""Tiny models with different vocabularies, for the tokenizer tests (test_merge_parity, test_merge_vocab)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def with_tokens(src: Path, dst: Path, tokens: list[str], *, seed: int, rows: int | None = None) -> Path:
    """A copy of model `src` whose tokenizer has `tokens` added and whose token-indexed tensors have rows
    for them (`rows` pads them further, Phi-style: config.json's vocab_size above the tokenizer's size)."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    if dst.exists():
        return dst
    shutil.copytree(src, dst)
    tokenizer = AutoTokenizer.from_pretrained(dst)
    tokenizer.add_tokens(tokens)
    tokenizer.save_pretrained(dst)
    rows = rows or len(tokenizer)
    generator = torch.Generator().manual_seed(seed)
    for file in dst.glob("*.safetensors"):
        tensors = load_file(file)
        for name, tensor in tensors.items():
            if name.endswith(("embed_tokens.weight", "lm_head.weight")):
                extra = torch.randn(rows - tensor.shape[0], tensor.shape[1], generator=generator) * 0.02
                tensors[name] = torch.cat([tensor, extra.to(tensor.dtype)]).contiguous()
        save_file(tensors, file, metadata={"format": "pt"})
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(config | {"vocab_size": rows}))
    return dst
