"""Model references: turn what a user writes (a folder, `org/name`, `org/name@rev`, `model+lora`) into a
local folder, and read what that folder says about itself (config.json, the model card's front matter).

This is the one place that talks to the Hugging Face Hub about models. It downloads only what mergeguard
reads (safetensors, json, tokenizer files, the card) and works from the local cache when offline.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergeguard.errors import MergeguardError, ModelNotFoundError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
HUB_PATTERNS = [
    "*.safetensors",
    "*.json",
    "tokenizer*",
    "*.model",
    "*.tiktoken",
    "vocab.txt",
    "merges.txt",
    "README.md",
    "mergekit_config.yml",
]
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth"]


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference. `name` is a local path or a hub repo id; `lora` an adapter applied on top."""

    name: str
    revision: str | None = None
    lora: str | None = None

    def __str__(self) -> str:
        text = self.name + (f"@{self.revision}" if self.revision else "")
        return text + (f"+{self.lora}" if self.lora else "")


@dataclass
class ModelCard:
    """The parts of a model card's YAML front matter that mergeguard uses."""

    datasets: list[str] = field(default_factory=list)
    base_model: list[str] = field(default_factory=list)
    base_model_relation: str | None = None
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


def looks_local(text: str) -> bool:
    """A path rather than a hub id: absolute, relative with ./ or ~, a Windows path, or an existing path."""
    if text.startswith(("/", "./", "../", "~", ".\\")) or "\\" in text or re.match(r"^[A-Za-z]:[\\/]", text):
        return True
    return Path(text).expanduser().exists()


def parse_model_ref(text: str, revision: str | None = None) -> ModelRef:
    """Parse `path`, `org/name`, `org/name@rev` or `base+adapter` (mergekit's LoRA syntax)."""
    text = str(text).strip()
    if not text:
        raise ModelNotFoundError(
            "empty model reference", hint="give a local folder or a hub id like org/name"
        )
    lora = None
    if "+" in text and not Path(text).expanduser().exists():
        text, lora = text.split("+", 1)
    if not looks_local(text) and "@" in text:
        text, revision = text.rsplit("@", 1)
    return ModelRef(name=text, revision=revision, lora=lora or None)


def _normalise_local(text: str) -> Path:
    return Path(text.replace("\\", "/") if not Path(text).exists() else text).expanduser()


def resolve_model(
    ref: str | ModelRef,
    *,
    revision: str | None = None,
    allow_pickle: bool = False,
    local_files_only: bool = False,
) -> Path:
    """Return a local folder holding the model `ref` (downloading from the hub only what mergeguard reads)."""
    parsed = ref if isinstance(ref, ModelRef) else parse_model_ref(ref, revision)
    if looks_local(parsed.name):
        path = _normalise_local(parsed.name).resolve()
        if not path.is_dir():
            raise ModelNotFoundError(
                f"model folder {parsed.name} not found", hint="check the path, or give a hub id like org/name"
            )
        return path
    if not HUB_ID.match(parsed.name):
        raise ModelNotFoundError(
            f"model {parsed.name!r} is neither a local folder nor a hub id",
            hint="give an existing folder or a hub id like org/name",
        )
    return _snapshot(parsed.name, parsed.revision, allow_pickle, local_files_only)


def _snapshot(repo_id: str, revision: str | None, allow_pickle: bool, local_files_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    patterns = HUB_PATTERNS + (PICKLE_PATTERNS if allow_pickle else [])
    try:
        return Path(
            snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=True)
        )
    except Exception as cached_error:
        if local_files_only:
            raise ModelNotFoundError(
                f"model {repo_id} is not in the local Hugging Face cache ({type(cached_error).__name__})",
                hint="download it once with network access, or give a local folder",
            ) from cached_error
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as error:  # network, auth, missing repo: all end the same way for the user
        raise ModelNotFoundError(
            f"cannot fetch model {repo_id} from the Hugging Face Hub ({type(error).__name__})",
            hint="check the id and your network or HF_TOKEN, or give a local folder",
        ) from error


def read_config(folder: Path) -> dict[str, Any]:
    """The model's config.json as a dict (empty when there is none)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise MergeguardError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno})", hint="fix or replace the file"
        ) from error


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value if v is not None]


def read_model_card(folder: Path) -> ModelCard:
    """Read `README.md` front matter in `folder` (a model card); a missing card is an empty one."""
    path = Path(folder) / "README.md"
    if not path.is_file():
        return ModelCard()
    from huggingface_hub.repocard import metadata_load  # ~0.3 s: only when there is a card to read

    try:
        meta = metadata_load(path) or {}
    except Exception as error:  # malformed YAML front matter
        raise MergeguardError(
            f"model card {path} has unreadable YAML front matter ({error})",
            hint="fix the card's front matter",
        ) from error
    return ModelCard(
        datasets=_as_list(meta.get("datasets")),
        base_model=_as_list(meta.get("base_model")),
        base_model_relation=meta.get("base_model_relation"),
        tags=_as_list(meta.get("tags")),
        metadata=meta,
    )
