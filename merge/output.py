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

from mergeguard import __version__
from mergeguard.errors import ConfigError, MergeguardError
from mergeguard.merge.arch import LAYER_COUNT_KEYS
from mergeguard.merge.config import MergeConfig, config_models
from mergeguard.merge.layout import out_dtype
from mergeguard.merge.plan import MergePlan, SourceModel
from mergeguard.merge.tokenizer import CHAT_TEMPLATES
from mergeguard.refs import parse_model_ref, read_model_card
from mergeguard.reports.card import CardFacts, card_text

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


def check_tokenizer(config: MergeConfig, models: dict[str, SourceModel], plan: MergePlan) -> Path:
    """The folder whose tokenizer files are copied: the `tokenizer_source` model's, else the output
    model's. When the vocabularies need aligning, the tokenizer `merge.tokenizer` built is written instead
    (`plan.vocabulary`)."""
    source = config.tokenizer_source
    return models[source].path if source in models else models[plan.out_model].path


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
        dtype = out_dtype(config, models, plan.tasks[0])
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
    if plan.vocabulary is not None:
        plan.vocabulary.tokenizer.save_pretrained(str(folder))
    elif options.copy_tokenizer or config.tokenizer is not None:
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
            section=_card_section(config, getattr(options, "card_section", "")),
        )
    write_marker(folder, config)


def _card_section(config: MergeConfig, section: str) -> str:
    """The caller's card section, plus the config keys that `--allow-unknown-keys` let through."""
    if not config.unknown_keys:
        return section
    listing = "\n".join(f"- `{key}`" for key in config.unknown_keys)
    ignored = (
        "## Ignored configuration keys\n\nMerged with `--allow-unknown-keys`: these keys of the configuration"
        f" are unknown to mergeguard and had no effect.\n\n{listing}\n"
    )
    return f"{section.strip()}\n\n{ignored}" if section.strip() else ignored


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
    """README.md, Hub-ready (`mergeguard.reports.card`): hub ids in base_model and datasets, local paths
    under `mergeguard:`, base_model_relation merge, tags merge/mergekit/mergeguard, a title and description.
    The file is exactly what `ModelCard(text).save()` writes (tested)."""
    datasets: list[str] = []
    for model in models.values():
        for name in read_model_card(model.path).datasets:
            if name not in datasets:
                datasets.append(name)
    datasets += [name for name in extra_datasets if name not in datasets]
    # the run writes into `.OUT.mergeguard-tmp-PID`: the card's title is OUT
    found = re.match(r"^\.(.+)\.mergeguard-[a-z]+-\d+$", folder.name)
    name = found.group(1) if found else folder.name
    facts = CardFacts(
        name=name,
        method=config.merge_method,
        inputs=config_models(config),
        base_model=config.base_model,
        config_text=config.text,
        datasets=datasets,
        section=section,
    )
    with open(folder / "README.md", "w", newline="", encoding="utf-8") as card:
        card.write(card_text(facts))


MARKER = ".mergeguard-output"
"""The file mergeguard writes into every output folder: `--force` replaces a folder only when it has one."""
TEMP = re.compile(r"^\..+\.mergeguard-(?:tmp|lora|old)-(\d+)$")
"""The folders a run keeps beside OUT while it works (`temp_path`); the number is the run's process id."""


def temp_path(out_dir: Path, kind: str) -> Path:
    """`.OUT.mergeguard-KIND-PID` beside `out_dir`: this run's work folder of one kind (tmp, lora, old)."""
    return out_dir.parent / f".{out_dir.name}.mergeguard-{kind}-{os.getpid()}"


def write_marker(folder: Path, config: MergeConfig) -> None:
    """Mark `folder` as a mergeguard output, so that a later `--force` may replace it (and nothing else)."""
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
