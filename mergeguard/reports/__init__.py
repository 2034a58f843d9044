"""mergeguard.reports: rendering what `db` and the auditor return, for people to share: an offline HTML
report (lineage SVG, score plot, every finding), Markdown, Hub-ready model cards, Datasette metadata.
It never decides a verdict: it shows the stored ones.

report = build_report(open_db(), "my-merge")       # a model, a merge config or a dataset
Path("report.html").write_text(render(report, "html"))
"""

from __future__ import annotations

from mergeguard.lazy import lazy_exports

_HOME = {
    "Report": "gather",
    "build_report": "gather",
    "config_report": "gather",
    "dataset_report": "gather",
    "model_report": "gather",
    "FORMATS": "pages",
    "render": "pages",
    "render_html": "pages",
    "render_markdown": "pages",
    "lineage_svg": "lineage_svg",
    "scores_svg": "plot",
    "CardFacts": "card",
    "card_text": "card",
    "refresh_card": "card",
    "datasette_metadata": "datasette",
    "make_datasette": "datasette",
}

__getattr__ = lazy_exports(__name__, _HOME)

__all__ = sorted(_HOME)
