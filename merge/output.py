"""Everything in the output folder besides the weights: config.json, generation config, tokenizer files,
chat template, the config as given (`mergekit_config.yml`) and the model card.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mergeguard.errors import ConfigError
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
