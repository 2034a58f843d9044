"""`model+adapter` references: fold a LoRA adapter into its base with peft before merging."""

from __future__ import annotations

from pathlib import Path

from mergeguard.errors import MergeguardError
from mergeguard.merge.io import tensor_files
from mergeguard.merge.output import TOKENIZER_FILES
from mergeguard.refs import require_no_custom_code, resolve_model


def apply_lora(base: Path, adapter: str, scratch: Path, *, allow_pickle: bool = False) -> Path:
    """Save base+adapter (merged with peft) under `scratch` and return that folder."""
    try:
        import peft
    except ImportError:
        raise MergeguardError(
            f"`+{adapter}` needs peft to apply the LoRA adapter", hint="pip install peft"
        ) from None
    from transformers import AutoModelForCausalLM

    adapter_path = resolve_model(adapter, allow_pickle=allow_pickle)
    out = scratch / f"{base.name}+{adapter_path.name}"
    if out.is_dir():
        return out
    require_no_custom_code(base)  # a merge has no --trust-remote-code: a model's own code never runs here
    for folder in (base, adapter_path):  # checked before transformers and peft read them (one-line errors)
        tensor_files(folder)
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto", trust_remote_code=False)
    model = peft.PeftModel.from_pretrained(model, adapter_path).merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    for name in (*TOKENIZER_FILES, "generation_config.json", "README.md"):
        if (base / name).is_file() and not (out / name).exists():
            (out / name).write_bytes((base / name).read_bytes())
    return out
