"""Model references: turn what a user writes (a folder, `org/name`, `org/name@rev`, `model+lora`) into a
local folder, and read what that folder says about itself (config.json, the model card's front matter).

This is the one place that talks to the Hugging Face Hub about models. It downloads only what mergeguard
reads (safetensors, json, tokenizer files, the card) and works from the local cache when offline.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergeguard.errors import MergeguardError, ModelCodeError, ModelNotFoundError

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
    """A path rather than a hub id, so it is never sent to the Hub: absolute, starting with `.` or `~`, a
    Windows path, an existing path, or `a/b` whose first folder or parent folder exists here (a typo such as
    `models/ft-mathh` next to `models/` is a missing folder, not a repository)."""
    if text.startswith(("/", ".", "~")) or "\\" in text or re.match(r"^[A-Za-z]:[\\/]", text):
        return True
    return _exists(Path(text)) or ("/" in text and _exists(Path(Path(text).parts[0])))


def _exists(path: Path) -> bool:
    """`path` exists (a file, folder or link); False for names the OS refuses (too long, a NUL byte)."""
    try:
        return os.path.lexists(path.expanduser())  # a dangling or looping symlink is still a local path
    except (OSError, ValueError):
        return False


def parse_model_ref(text: str, revision: str | None = None) -> ModelRef:
    """Parse `path`, `org/name`, `org/name@rev` or `base+adapter` (mergekit's LoRA syntax)."""
    text = str(text).strip()
    if not text:
        raise ModelNotFoundError(
            "empty model reference", hint="give a local folder or a hub id like org/name"
        )
    lora = None
    if "+" in text and not _exists(Path(text)):
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
        try:
            path = _normalise_local(parsed.name).resolve()
        except (OSError, RuntimeError) as error:  # a symlink loop, a name too long
            raise ModelNotFoundError(
                f"model folder {parsed.name} cannot be resolved ({error})",
                hint="check the path and its links",
            ) from error
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
    from huggingface_hub import constants, snapshot_download

    patterns = HUB_PATTERNS + (PICKLE_PATTERNS if allow_pickle else [])
    try:
        return Path(
            snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=True)
        )
    except Exception as cached_error:
        if local_files_only or constants.HF_HUB_OFFLINE:  # offline: answer now, never wait on the network
            offline = " and HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else ""
            raise ModelNotFoundError(
                f"model {repo_id} is not in the local Hugging Face cache{offline} "
                f"({type(cached_error).__name__})",
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
    return _read_json_object(Path(folder) / "config.json")


def _read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from `path` ({} when the file is absent); anything else is a one-line error."""
    if not os.path.lexists(path):
        return {}
    try:
        if not path.is_file():  # a FIFO, a device, a folder, a dangling or looping link: never read it
            raise MergeguardError(
                f"{path} is not a regular file", hint="replace it with the model's JSON file"
            )
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise MergeguardError(
            f"{path} cannot be read ({error.strerror or error})", hint="fix or replace the file"
        ) from error
    except UnicodeDecodeError as error:
        raise MergeguardError(
            f"{path} is not UTF-8 text (byte {error.start})", hint="fix or replace the file"
        ) from error
    except json.JSONDecodeError as error:
        raise MergeguardError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno})", hint="fix or replace the file"
        ) from error
    if not isinstance(value, dict):
        raise MergeguardError(
            f"{path} holds a JSON {type(value).__name__}, not an object", hint="fix or replace the file"
        )
    return value


def custom_code(folder: Path) -> str | None:
    """The file of `folder` that makes transformers run the model's own Python code (an `auto_map` for a
    model or tokenizer class transformers does not ship), or None when the library's own classes load it.

    transformers would ask "run the custom code? [y/N]" in a terminal; mergeguard refuses instead, before
    any load, unless the user passed --trust-remote-code."""
    config = read_config(folder)
    if config.get("auto_map"):
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        model_type = config.get("model_type")
        if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING_NAMES:
            return "config.json"
    tokenizer = _read_json_object(Path(folder) / "tokenizer_config.json")
    if tokenizer.get("auto_map"):
        from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

        name = str(tokenizer.get("tokenizer_class") or "")
        if not name or not (tokenizer_class_from_name(name) or tokenizer_class_from_name(name + "Fast")):
            return "tokenizer_config.json"
    return None


def require_no_custom_code(folder: Path, trust_remote_code: bool = False) -> None:
    """Refuse a model that needs its own code to load, unless the user trusts it (--trust-remote-code).
    Callers still pass `trust_remote_code` to every transformers/peft/lm-eval load, so nothing prompts."""
    if trust_remote_code:
        return
    where = custom_code(Path(folder))
    if where is not None:
        raise ModelCodeError(
            f"model {folder} needs custom code to load (auto_map in its {where}); mergeguard runs no model "
            "code unasked",
            hint="read that code, then pass --trust-remote-code (check, eval) if you trust it",
        )


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
    from huggingface_hub.repocard import metadata_load  # only when there is a card to read

    try:
        meta = metadata_load(path) or {}
    except Exception as error:  # malformed YAML front matter
        raise MergeguardError(
            f"model card {path} has unreadable YAML front matter ({error})",
            hint="fix the card's front matter",
        ) from error
    local = meta.get("mergeguard") if isinstance(meta.get("mergeguard"), dict) else {}  # local paths
    return ModelCard(
        datasets=_as_list(meta.get("datasets")) + _as_list(local.get("datasets")),
        base_model=_as_list(meta.get("base_model")) + _as_list(local.get("base_model")),
        base_model_relation=meta.get("base_model_relation"),
        tags=_as_list(meta.get("tags")),
        metadata=meta,
    )
