"""Everything in the output folder besides the weights: config.json, generation config, tokenizer files,
chat template, the config as given (`mergekit_config.yml`), the model card and mergeguard's marker file;
and the rules that keep an output folder from harming anything else (inputs, the working folder, a folder
that is not an earlier merge) and clean up what dead runs left beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mergeguard.errors import ConfigError, MergeguardError
from mergeguard.merge.arch import LAYER_COUNT_KEYS
from mergeguard.merge.config import MergeConfig, config_models
from mergeguard.merge.plan import MergePlan, SourceModel

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
)
CHAT_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|im_end|>' + '\\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "alpaca": (
        "{% for message in messages %}{% if message['role'] == 'user' %}{{ '### Instruction:\\n' + "
        "message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + "
        "message['content'] + eos_token + '\\n\\n' }}{% else %}{{ message['content'] + '\\n\\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
    ),
}


def _vocab(folder: Path) -> Any:
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    added = sorted((t.get("id"), t.get("content")) for t in data.get("added_tokens") or [])
    return (data.get("model", {}).get("vocab"), added)


def check_tokenizer(config: MergeConfig, models: dict[str, SourceModel], plan: MergePlan) -> Path:
    """The folder whose tokenizer the output gets; refuses sources that would need re-mapped embeddings."""
    source = config.tokenizer_source
    out = models[plan.out_model]
    if source is None or source == "base" or source == "union":
        chosen = out
    elif source in models:
        chosen = models[source]
    else:
        raise ConfigError(
            f"tokenizer_source `{source}` is neither `base`, `union` nor a model of the config",
            hint="name one of the config's models",
        )
    if source is not None:
        reference = _vocab(chosen.path)
        differing = [ref for ref, m in models.items() if _vocab(m.path) != reference]
        if differing:
            raise ConfigError(
                f"tokenizer_source `{source}` with differing vocabularies ({differing[0]})"
                " is not supported yet",
                hint="merge models that share a tokenizer, or use mergekit for vocabulary surgery",
            )
    return chosen.path


def _resize(values: list[Any], origin: list[int]) -> list[Any]:
    return [values[i] if i < len(values) else values[-1] for i in origin]


def out_config(config: MergeConfig, models: dict[str, SourceModel], plan: MergePlan) -> dict[str, Any]:
    """The output model's config.json: the base's, with layer count, dtype and vocabulary size updated."""
    out = dict(models[plan.out_model].config)
    old = None
    for scope in (out, out.get("text_config") if isinstance(out.get("text_config"), dict) else {}):
        for key in LAYER_COUNT_KEYS:
            if isinstance(scope.get(key), int):
                old = scope[key]
                scope[key] = plan.num_layers
        for key, value in list(scope.items()):
            if isinstance(value, list) and old is not None and len(value) == old and old != plan.num_layers:
                scope[key] = _resize(value, plan.layer_origin)
    dtype = config.out_dtype or config.dtype
    if dtype is None and plan.tasks:
        ref, name = plan.tasks[0].inputs[0]
        dtype = models[ref].reader.dtype(name)
    out["dtype"] = dtype
    if "torch_dtype" in out:
        out["torch_dtype"] = dtype
    for task in plan.tasks:
        if task.layer is None and any(k in task.name for k in ("embed_tokens", "wte", "word_embeddings")):
            out["vocab_size"] = task.shape[0]
            break
    return out


def finish_folder(
    config: MergeConfig,
    models: dict[str, SourceModel],
    plan: MergePlan,
    folder: Path,
    tokenizer_from: Path,
    options: Any,
) -> None:
    """Write every non-weight file of the merged model into `folder`."""
    base_folder = models[plan.out_model].path
    (folder / "config.json").write_text(
        json.dumps(out_config(config, models, plan), indent=2) + "\n", "utf-8"
    )
    if (base_folder / "generation_config.json").is_file():
        shutil.copy2(base_folder / "generation_config.json", folder / "generation_config.json")
    if options.copy_tokenizer or config.tokenizer_source is not None:
        for name in TOKENIZER_FILES:
            if (tokenizer_from / name).is_file():
                shutil.copy2(tokenizer_from / name, folder / name)
    if config.chat_template:
        write_chat_template(folder, config.chat_template)
    text = config.text if config.text.endswith("\n") else config.text + "\n"
    (folder / "mergekit_config.yml").write_text(text, encoding="utf-8")
    if options.write_model_card:
        write_model_card(
            config,
            models,
            folder,
            extra_datasets=getattr(options, "card_datasets", []),
            section=getattr(options, "card_section", ""),
        )
    write_marker(folder, config)


def write_chat_template(folder: Path, template: str) -> None:
    """Put the template into tokenizer_config.json (and chat_template.jinja, which transformers 5 prefers)."""
    if template == "auto":
        return
    if template in CHAT_TEMPLATES:
        template = CHAT_TEMPLATES[template]
    elif "{{" not in template and "{%" not in template:
        raise ConfigError(
            f"chat_template `{template}` is neither a Jinja template nor a known name",
            hint=f"write the template itself, or one of: auto, {', '.join(CHAT_TEMPLATES)}",
        )
    path = folder / "tokenizer_config.json"
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    data["chat_template"] = template
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "chat_template.jinja").write_text(template, encoding="utf-8")


def write_model_card(
    config: MergeConfig,
    models: dict[str, SourceModel],
    folder: Path,
    *,
    extra_datasets: list[str] | tuple[str, ...] = (),
    section: str = "",
) -> None:
    """README.md with front matter base_model (every input), base_model_relation, tags and datasets.

    The front matter is huggingface_hub's `ModelCardData.to_yaml()`, and the file is exactly what
    `ModelCard(text).save()` writes (tested); the `ModelCard` class itself is not imported, because its
    module pulls in the whole Hub client (~0.25 s of CPU more, taken from the merge's two cores).
    """
    from huggingface_hub.repocard_data import ModelCardData

    from mergeguard.refs import read_model_card

    datasets: list[str] = []
    for model in models.values():
        for name in read_model_card(model.path).datasets:
            if name not in datasets:
                datasets.append(name)
    datasets += [name for name in extra_datasets if name not in datasets]
    refs = config_models(config)
    data = ModelCardData(
        base_model=refs,
        base_model_relation="merge",
        tags=["merge", "mergeguard"],
        datasets=datasets or None,
        library_name="transformers",
    )
    listing = "\n".join(f"- {ref}" for ref in refs)
    body = (
        f"# Merged model\n\nMerged with mergeguard using the `{config.merge_method}` method"
        + (f" with base model {config.base_model}" if config.base_model else "")
        + f".\n\n## Models merged\n\n{listing}\n\n## Configuration\n\n```yaml\n{config.text.strip()}\n```\n"
        + (f"\n{section.strip()}\n" if section else "")
    )
    with open(folder / "README.md", "w", newline="", encoding="utf-8") as card:
        card.write(f"---\n{data.to_yaml()}\n---\n\n{body}")


MARKER = ".mergeguard-output"
"""The file mergeguard writes into every output folder: `--force` replaces a folder only when it has one."""
TEMP = re.compile(r"^\..+\.mergeguard-(?:tmp|lora|old)-(\d+)$")
"""The folders a run keeps beside OUT while it works (`temp_path`); the number is the run's process id."""


def temp_path(out_dir: Path, kind: str) -> Path:
    """`.OUT.mergeguard-KIND-PID` beside `out_dir`: this run's work folder of one kind (tmp, lora, old)."""
    return out_dir.parent / f".{out_dir.name}.mergeguard-{kind}-{os.getpid()}"


def write_marker(folder: Path, config: MergeConfig) -> None:
    """Mark `folder` as a mergeguard output, so that a later `--force` may replace it (and nothing else)."""
    from mergeguard import __version__

    data = {
        "tool": "mergeguard",
        "version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config_sha256": hashlib.sha256(config.text.encode("utf-8")).hexdigest(),
    }
    (folder / MARKER).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def is_mergeguard_output(folder: Path) -> bool:
    """True when `folder` holds mergeguard's marker (a small JSON file naming the tool)."""
    marker = folder / MARKER
    try:
        if not marker.is_file() or marker.stat().st_size > 65536:
            return False
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("tool") == "mergeguard"


def local_inputs(config: MergeConfig) -> list[Path]:
    """The config's model and adapter references that are existing local paths (no hub lookup)."""
    from mergeguard.refs import parse_model_ref

    paths: list[Path] = []
    for ref in config_models(config):
        try:
            parsed = parse_model_ref(ref)
        except MergeguardError:
            continue  # reported with its own message when the models are opened
        for name in (parsed.name, parsed.lora):
            if name and Path(name).expanduser().exists():
                paths.append(Path(name).expanduser())
    return paths


def refuse_overlap(out_dir: Path, inputs: Iterable[Path]) -> None:
    """Refuse an OUT that is, holds or lies inside an input (paths resolved, symbolic links followed), or
    that is the working folder or one above it: replacing or writing into it would harm what it holds."""
    target = out_dir.resolve()
    for folder in inputs:
        source = folder.resolve()
        if target == source:
            problem = f"is the input model {folder}"
        elif source.is_relative_to(target):
            problem = f"holds the input model {folder}"
        elif target.is_relative_to(source):
            problem = f"lies inside the input model {folder}"
        else:
            continue
        raise ConfigError(
            f"output folder {out_dir} {problem}", hint="choose an output folder outside the inputs"
        )
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # the working folder was deleted: nothing there to protect
        return
    if cwd.is_relative_to(target):
        raise ConfigError(
            f"output folder {out_dir} is the working folder or holds it",
            hint="choose a new folder for the merged model",
        )


def check_out_dir(out_dir: Path, inputs: Iterable[Path], force: bool) -> None:
    """Refuse an OUT that may not be written: one that overlaps an input or the working folder, a file,
    or an existing folder that `--force` may not replace (only an empty folder or an earlier merge, which
    carries `MARKER`). Nothing is written or deleted before this passes."""
    refuse_overlap(out_dir, inputs)
    if out_dir.is_symlink() and not out_dir.exists():
        raise ConfigError(
            f"output path {out_dir} is a broken symbolic link", hint="remove it or choose a new folder"
        )
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConfigError(f"output path {out_dir} is a file", hint="choose a folder path")
    if not is_mergeguard_output(out_dir) and any(out_dir.iterdir()):
        raise ConfigError(
            f"output folder {out_dir} already exists and is not a mergeguard output (no {MARKER} file)",
            hint="choose a new folder (--force replaces only an earlier mergeguard merge)",
        )
    if not force:
        raise ConfigError(
            f"output folder {out_dir} already exists",
            hint="choose a new folder or pass --force to replace it",
        )


def replace_folder(new: Path, out_dir: Path) -> None:
    """Move the finished `new` folder to `out_dir`, replacing an earlier output (checked by the caller)."""
    if not (out_dir.exists() or out_dir.is_symlink()):
        new.rename(out_dir)
        return
    old = temp_path(out_dir, "old")
    out_dir.rename(old)
    new.rename(out_dir)
    discard(old)


def discard(path: Path) -> None:
    """Remove a folder of this run's (a symbolic link is unlinked, never followed)."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale_temps(parent: Path) -> list[Path]:
    """Remove the work folders (`.NAME.mergeguard-tmp-PID` and the like) that runs which died without
    cleaning up (kill -9, a power cut) left in `parent`; a folder whose process is alive is kept."""
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        found = TEMP.match(entry.name)
        if found is None or _alive(int(found.group(1))) or entry.is_symlink() or not entry.is_dir():
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    """True while a process `pid` exists on this machine (another user's counts: it may be a live run)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
