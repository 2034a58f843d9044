"""Importing lm-eval results files into the database: all read and checked first, then written together."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mergeguard.db.records import record_evaluations, register_model
from mergeguard.db.writes import transaction
from mergeguard.evaluation.results_file import parse_results_file, results_files

if TYPE_CHECKING:
    from sqlite_utils import Database


@dataclass
class ImportSummary:
    """What an import did."""

    files: int = 0
    imported: int = 0
    already_imported: int = 0
    evaluations: int = 0
    models: list[str] = field(default_factory=list)


def import_results(db: Database, paths: list[str | Path], *, model: str | None = None) -> ImportSummary:
    """Import lm-eval results files (or folders of them). Every file is read and checked before anything is
    written, and all are written in one transaction: a bad file leaves the database as it was."""
    parsed = [parse_results_file(p, model=model) for p in results_files(paths)]
    summary = ImportSummary(files=len(parsed))
    with transaction(db):
        for results in parsed:
            _, created = record_evaluations(db, results)
            if created:
                summary.imported += 1
                summary.evaluations += len(results.rows)
            else:
                summary.already_imported += 1
            if results.model_ref in summary.models:
                continue
            summary.models.append(results.model_ref)
            if Path(results.model_ref).is_dir():  # its card's base_model: the imported model's parent
                register_model(db, results.model_ref)
    return summary
