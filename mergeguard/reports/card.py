"""Hub-ready model cards for merges: hub ids only in `base_model` and `datasets` (local folders and files
go, absolute, under a `mergeguard:` key the Hub ignores and mergeguard reads back), `base_model_relation:
merge`, the `merge` and `mergekit` tags, a real title and description, the contamination section, and
`model-index` results in the Hub's schema once the model is evaluated.

The front matter is huggingface_hub's `ModelCardData.to_yaml()`; only `repocard_data` is imported (the
full `ModelCard` module costs every merge's start more: README, "Start-up").
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergeguard import __version__
from mergeguard.auditor.report import Verdict
from mergeguard.benchmarks.registry import REGISTRY
from mergeguard.db import find_model
from mergeguard.db.evidence import merge_of, score_details
from mergeguard.errors import DatabaseError
from mergeguard.merge.config import config_models, load_config
from mergeguard.refs import looks_local, read_model_card
from mergeguard.reports.gather import Report, model_report

if TYPE_CHECKING:
    from sqlite_utils import Database

METHOD_TITLES = {
    "linear": "linear averaging (model soup)",
    "task_arithmetic": "task arithmetic",
    "ties": "TIES",
    "dare_ties": "DARE-TIES",
    "dare_linear": "DARE (linear)",
    "breadcrumbs": "Model Breadcrumbs",
    "breadcrumbs_ties": "Model Breadcrumbs with TIES",
    "della": "DELLA",
    "della_linear": "DELLA (linear)",
    "slerp": "SLERP",
    "nuslerp": "NuSLERP",
    "multislerp": "multi-SLERP",
    "karcher": "the Karcher mean",
    "model_stock": "Model Stock",
    "sce": "SCE",
    "nearswap": "NearSwap",
    "passthrough": "passthrough (layer stacking)",
}
TAGS = ["merge", "mergekit", "mergeguard"]


@dataclass
class CardFacts:
    """What a merged model's card says; plain values so the merge, `mergeguard card` and tests share it."""

    name: str  # the model's name: the card's title and model-index name
    method: str
    inputs: list[str]  # every input model reference as the config gives it, base included
    base_model: str | None
    config_text: str
    datasets: list[str] = field(default_factory=list)  # declared and inherited, as references
    section: str = ""  # the contamination section (Markdown)
    scores: list[Any] = field(default_factory=list)  # db.evidence.ScoreDetail, for model-index


def split_refs(refs: list[str], *, dataset: bool = False) -> tuple[list[str], list[str]]:
    """(hub ids, absolute local paths): `org/name@rev` and `org/name:split` become `org/name`, an adapter
    suffix `+lora` is dropped, local references are resolved."""
    hub: list[str] = []
    local: list[str] = []
    for ref in refs:
        name = ref.split("+", 1)[0] if not dataset else ref
        if looks_local(name):
            path = str(Path(name).expanduser().resolve())
            local += [path] if path not in local else []
            continue
        name = name.split("@", 1)[0].split(":", 1)[0] if dataset else name.split("@", 1)[0]
        hub += [name] if name not in hub else []
    return hub, local


def _shown(ref: str) -> str:
    """A Markdown mention: a link for a hub id, the folder name for a local model."""
    if looks_local(ref):
        return f"`{Path(ref).name}` (local)"
    name = ref.split("@", 1)[0]
    return f"[{name}](https://huggingface.co/{name})"


def _eval_results(facts: CardFacts) -> list[Any]:
    from huggingface_hub.repocard_data import EvalResult

    return [
        EvalResult(
            task_type="text-generation",
            task_name="Text Generation",
            dataset_type=score.benchmark,
            dataset_name=score.benchmark,
            dataset_split=score.split
            or (REGISTRY[score.benchmark].split if score.benchmark in REGISTRY else None),
            dataset_args={"num_few_shot": score.num_fewshot} if score.num_fewshot is not None else None,
            metric_type=score.metric,
            metric_name=score.metric,
            metric_value=round(score.value * 100, 2),
        )
        for score in facts.scores
    ]


def description(facts: CardFacts) -> str:
    """One sentence: what was merged, how, onto which base."""
    parents = [_shown(ref) for ref in facts.inputs if ref != facts.base_model]
    listing = ", ".join(parents[:-1]) + f" and {parents[-1]}" if len(parents) > 1 else "".join(parents)
    text = f"**{facts.name}** is a merge of {listing or 'its inputs'}"
    if facts.base_model:
        text += f" onto the base model {_shown(facts.base_model)}"
    method = METHOD_TITLES.get(facts.method, facts.method)
    return text + f", using {method} (`{facts.method}`), made with mergeguard, which audited every input."


def card_text(facts: CardFacts) -> str:
    """The whole README.md: front matter, title, description, models, config, contamination, results."""
    from huggingface_hub.repocard_data import ModelCardData

    hub_models, local_models = split_refs(facts.inputs)
    hub_data, local_data = split_refs(facts.datasets, dataset=True)
    local = {k: v for k, v in {"base_model": local_models, "datasets": local_data}.items() if v}
    results = _eval_results(facts)
    data = ModelCardData(
        base_model=hub_models or None,
        base_model_relation="merge",
        datasets=hub_data or None,
        tags=TAGS,
        library_name="transformers",
        model_name=facts.name if results else None,
        eval_results=results or None,
        mergeguard=local or None,
    )
    listing = "\n".join(
        f"- {_shown(ref)}" + (" (base)" if ref == facts.base_model else "") for ref in facts.inputs
    )
    body = (
        f"# {facts.name}\n\n{description(facts)}\n\n## Models merged\n\n{listing}\n\n"
        f"## Configuration\n\n```yaml\n{facts.config_text.strip()}\n```\n"
    )
    if facts.section:
        body += f"\n{facts.section.strip()}\n"
    if facts.scores:
        rows = "\n".join(
            f"| {s.benchmark} | {s.metric} | {s.value * 100:.2f} | "
            f"{'—' if s.num_fewshot is None else s.num_fewshot} |"
            for s in facts.scores
        )
        body += f"\n## Evaluation\n\n| benchmark | metric | score | few-shot |\n|---|---|---|---|\n{rows}\n"
    return f"---\n{data.to_yaml()}\n---\n\n{body}"


def contamination_section(report: Report, notes: Sequence[str] = ()) -> str:
    """The card's contamination section from a `reports.Report`: the verdict, the benchmarks found, then
    `notes`. One renderer for both writers: the merge (`guardrails.card_section`, from its inputs' audit)
    and `mergeguard card` (from the database)."""
    verdict = f"{report.verdict} (via {report.verdict_via})" if report.verdict_via else report.verdict
    lines = ["## Contamination", "", f"Verdict: **{verdict}** (audited by mergeguard {__version__}).", ""]
    found = [c for c in report.counts if c.found]
    if found:
        lines += ["| benchmark | items found | share | worst | came in at |", "|---|---|---|---|---|"]
        where = ", ".join(sorted(report.origins)) or "—"
        lines += [
            f"| {c.benchmark} | {c.found} / {c.items} | {c.share:.1%} | {c.worst} | {where} |" for c in found
        ]
    elif report.verdict == Verdict.UNAUDITED:
        lines.append("Not audited.")
    else:
        lines.append("No benchmark test items were found in the inputs' declared datasets.")
    for note in notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def write_text_atomically(path: Path, text: str) -> None:
    """Replace `path` through a temporary file beside it, so a reader never sees half a card."""
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            out.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def refresh_card(db: Database, model: str) -> Path:
    """Rewrite a merged model's README.md from the database (after `eval`: with model-index results)."""
    row = find_model(db, model)
    folder = Path(row["ref"])
    merge = merge_of(db, row["id"])
    if merge is None or merge.status != "ok":
        raise DatabaseError(
            f"{row['name']} is not a merge recorded in the database",
            hint="`mergeguard card` writes the cards of models made with `mergeguard merge`",
        )
    if not folder.is_absolute() or not folder.is_dir():
        raise DatabaseError(
            f"the folder of {row['name']} ({row['ref']}) is not on this machine",
            hint="run `mergeguard card` where the merged model lives",
        )
    config = load_config(merge.config_text, allow_unknown_keys=True)  # as stored: the merge accepted it
    old = read_model_card(folder)
    datasets = list(old.datasets)
    for entry in model_report(db, row["ref"]).datasets:
        if entry.get("ref") and entry["ref"] not in datasets:
            datasets.append(entry["ref"])
    facts = CardFacts(
        name=folder.name,
        method=config.merge_method,
        inputs=config_models(config),
        base_model=config.base_model,
        config_text=config.text,
        datasets=datasets,
        section=contamination_section(model_report(db, row["ref"])),
        scores=score_details(db, row["id"]),
    )
    path = folder / "README.md"
    write_text_atomically(path, card_text(facts))
    return path
