"""A `Report` as one self-contained HTML page (inline CSS and SVG, no script, no font or image from the
network) or as Markdown for a GitHub issue or a Hub discussion. Both show the same things in the same
order: verdict and why, per-benchmark counts, lineage, scores, every finding, the config and the guard."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from mergeguard import __version__
from mergeguard.db import render_lineage
from mergeguard.reports.gather import Report
from mergeguard.reports.highlight import Segments, highlight
from mergeguard.reports.lineage_svg import lineage_svg
from mergeguard.reports.plot import scores_svg

FORMATS = ("html", "markdown")
COLOURS = {"contaminated": "#c62828", "clean": "#2e7d32"}
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1180px;
 padding:14px 22px;color:#1b1b1b}
h1{font-size:22px;margin:4px 0}h2{font-size:16px;margin:18px 0 6px;border-bottom:1px solid #ddd}
.verdict{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;font-weight:bold}
.why{margin:6px 0 4px 18px;padding:0}.muted{color:#666;font-size:12px}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;font-size:13px}
.figures{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.figures figure{margin:0;width:min-content}figcaption{font-size:12px;color:#555;min-width:240px}
.finding{display:grid;grid-template-columns:1fr 1fr;gap:8px;border:1px solid #ddd;border-radius:6px;
 padding:6px 8px;margin:6px 0}.finding .meta{grid-column:1/3;font-size:12px;color:#444}
.finding pre{white-space:pre-wrap;margin:2px 0;font:12px/1.4 ui-monospace,monospace;background:#fafafa;
 padding:4px 6px;max-height:9.5em;overflow:auto}
mark{background:#ffe082}.sev-verbatim{color:#c62828;font-weight:bold}.sev-partial{color:#e08a00}
.sev-paraphrase{color:#6a1b9a}
pre.config{background:#f6f8fa;padding:8px;font-size:12px}
"""


def _html_segments(segments: Segments) -> str:
    return "".join(f"<mark>{escape(t)}</mark>" if marked else escape(t) for t, marked in segments)


def _row_text(finding: dict[str, Any]) -> str:
    parts = (finding.get("context_before"), finding.get("evidence"), finding.get("context_after"))
    return "".join(str(part or "") for part in parts)


def _where(finding: dict[str, Any]) -> str:
    """`dataset row N (field F)`: the 0-based row of the training example, as the audit JSON gives it."""
    text = f"{Path(str(finding.get('dataset'))).name} row {finding.get('example')}"
    if finding.get("field"):
        text += f", field {finding['field']}"
    return text


def _semantic_note(finding: dict[str, Any]) -> str:
    """A paraphrase finding's evidence (the semantic stage's reason and cosine), else nothing."""
    semantic = finding.get("semantic")
    if not isinstance(semantic, dict):
        return ""
    parts = [str(semantic["reason"])] if semantic.get("reason") else []
    if isinstance(semantic.get("cosine"), (int, float)):
        parts.append(f"cosine {semantic['cosine']:.2f}")
    if isinstance(semantic.get("coverage"), (int, float)):  # a translation: read through the dictionary
        parts.append(f"coverage {semantic['coverage']:.2f}")
    return "; ".join(parts)


def _item_label(finding: dict[str, Any]) -> str:
    label = f"{finding.get('benchmark')} item {finding.get('item')}"
    if finding.get("item_id"):
        label += f" ({finding['item_id']})"
    return label


def _verdict_text(report: Report) -> str:
    return f"{report.verdict} via {report.verdict_via}" if report.verdict_via else report.verdict


def _guard_lines(guard: dict[str, Any]) -> list[tuple[str, str]]:
    """The guard's recorded decisions as (what, value) rows; the family check reduced to its pairs."""
    rows = []
    for key, value in sorted(guard.items()):
        if key == "family" and isinstance(value, dict):
            for pair in value.get("pairs") or []:
                rows.append(
                    (
                        f"family {Path(str(pair.get('a'))).name} ~ {Path(str(pair.get('b'))).name}",
                        f"similarity {float(pair.get('similarity', 0)):.3f} "
                        f"({'related' if pair.get('related') else 'unrelated'}, "
                        f"threshold {value.get('threshold')})",
                    )
                )
        else:
            rows.append((key.replace("_", " "), value if isinstance(value, str) else json.dumps(value)))
    return rows


def _count_table(report: Report) -> tuple[list[str], list[list[Any]]]:
    """The per-benchmark counts as both pages show them: (headers, rows)."""
    rows = [
        [c.benchmark, c.split, f"{c.found} / {c.items}", f"{c.share:.1%}", c.worst or "—", c.verdict or "—"]
        for c in report.counts
    ]
    return ["benchmark", "split", "items found", "share", "worst", "verdict"], rows


def _dataset_table(report: Report) -> tuple[list[str], list[list[Any]]]:
    """The declared datasets as both pages show them: (headers, rows)."""
    rows = [
        [d.get("ref"), Path(str(d.get("declared_by"))).name, d.get("status", "—"), d.get("examples", "—")]
        for d in report.datasets
    ]
    return ["dataset", "declared by", "status", "examples"], rows


def _html_table(title: str, headers: list[str], rows: list[list[Any]]) -> list[str]:
    """A titled HTML table, one line per row, every cell escaped."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = ["<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>" for row in rows]
    return [f"<h2>{escape(title)}</h2><table><tr>{head}</tr>", *body, "</table>"]


def _html_head(report: Report) -> list[str]:
    """The document head (no network, no script) and the verdict with why."""
    colour = COLOURS.get(report.verdict, "#e08a00")
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # nothing may load or run: no network, no script, even if a model or dataset name carried one
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">",
        f"<title>mergeguard report: {escape(report.subject)}</title><style>{CSS}</style></head><body>",
        f'<h1>{escape(report.subject)} <span class="verdict" id="verdict" style="background:{colour}">'
        f"{escape(_verdict_text(report))}</span></h1>",
        f'<div class="muted">{escape(report.kind)} {escape(report.ref)}'
        + (f" · audit #{report.audit_id} at {escape(report.audited_at or '')}" if report.audit_id else "")
        + f" · mergeguard {escape(__version__)}</div>",
        '<ul class="why">' + "".join(f"<li>{escape(line)}</li>" for line in report.why) + "</ul>",
    ]


def _html_figures(report: Report) -> list[str]:
    """The lineage SVG (when there is more than the subject to show) and the score plot."""
    figures = []
    if (
        report.lineage is not None
        and report.lineage.nodes
        and (len(report.lineage.nodes) > 1 or report.findings)
    ):
        figures.append(
            f'<figure id="lineage">{lineage_svg(report.lineage, report.origins)}'
            "<figcaption>Lineage, oldest on top; red: contaminated by its own data, orange: suspect "
            "(inherited or not auditable); the badge counts the findings that came in at that model."
            "</figcaption></figure>"
        )
    if report.scores:
        figures.append(
            f'<figure id="scores">{scores_svg(report.scores, report.suite)}<figcaption>Scores of '
            f"{escape(report.subject)} against its parents and base"
            f"{' (v2 normalized)' if report.suite == 'v2' else ''}.</figcaption></figure>"
        )
    return figures


def _html_finding(number: int, finding: dict[str, Any]) -> str:
    """One finding: severity, score, item and row named, the item beside the training row, marked."""
    item, row = highlight(str(finding.get("item_text") or ""), _row_text(finding))
    severity = str(finding.get("severity"))
    via = finding.get("inherited_from")
    return (
        f'<div class="finding" id="finding-{number}"><div class="meta">#{number} '
        f'<span class="sev-{escape(severity)}">{escape(severity)}</span> · score '
        f"{float(finding.get('score') or 0):.2f} · {escape(_item_label(finding))} · "
        f"{escape(_where(finding))}"
        + (f" · came in through {escape(Path(str(via)).name)}" if via else "")
        + (f" · {escape(_semantic_note(finding))}" if _semantic_note(finding) else "")
        + "</div>"
        f"<div><b>benchmark item</b><pre>{_html_segments(item)}</pre></div>"
        f"<div><b>training row</b><pre>{_html_segments(row)}</pre></div></div>"
    )


def render_html(report: Report) -> str:
    """One offline HTML page for `report`."""
    out = _html_head(report)
    if report.problems:
        out.append(
            '<ul class="why">' + "".join(f"<li>problem: {escape(p)}</li>" for p in report.problems) + "</ul>"
        )
    if any(c.found for c in report.counts):
        out += _html_table("Benchmarks", *_count_table(report))
    figures = _html_figures(report)
    if figures:
        out.append('<h2>Lineage and scores</h2><div class="figures">' + "".join(figures) + "</div>")
    if report.findings:
        out.append(f'<h2>Findings ({len(report.findings)})</h2><div id="findings">')
        out += [_html_finding(number, f) for number, f in enumerate(report.findings, start=1)]
        out.append("</div>")
    if report.datasets:
        out += _html_table("Declared datasets", *_dataset_table(report))
    if report.config_text:
        out.append(f'<h2>Merge config</h2><pre class="config">{escape(report.config_text.strip())}</pre>')
    if report.guard:
        out.append("<h2>Guard decisions</h2><table>")
        out += [
            f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in _guard_lines(report.guard)
        ]
        out.append("</table>")
    out.append("</body></html>\n")
    return "\n".join(out)


def _md_segments(segments: Segments) -> str:
    """A quoted block, each line its own paragraph line, highlighted runs in **bold** (a run that spans
    lines is closed and reopened at each line end, so every line renders on its own)."""
    lines: list[str] = [""]
    for text, marked in segments:
        for index, piece in enumerate(text.split("\n")):
            if index:
                lines.append("")
            core = piece.strip()
            if marked and core:
                lead, trail = piece[: len(piece) - len(piece.lstrip())], piece[len(piece.rstrip()) :]
                lines[-1] += f"{lead}**{core}**{trail}"
            else:
                lines[-1] += piece
    return "\n".join("> " + line.replace("|", "\\|") + "  " for line in lines)


def _md_table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += [
        "| " + " | ".join(str(v).replace("|", "\\|").replace("\n", " ") for v in row) + " |" for row in rows
    ]
    return lines


def _md_finding(number: int, finding: dict[str, Any]) -> list[str]:
    """One finding as a heading, then the benchmark item and the training row as marked quotes."""
    item, row = highlight(str(finding.get("item_text") or ""), _row_text(finding))
    via = finding.get("inherited_from")
    return [
        f"### {number}. {finding.get('severity')}, score {float(finding.get('score') or 0):.2f}: "
        f"{_item_label(finding)} in {_where(finding)}"
        + (f" (came in through {Path(str(via)).name})" if via else "")
        + (f"; {_semantic_note(finding)}" if _semantic_note(finding) else ""),
        "",
        "Benchmark item:",
        "",
        _md_segments(item),
        "",
        "Training row:",
        "",
        _md_segments(row),
        "",
    ]


def render_markdown(report: Report) -> str:
    """The same content as Markdown: a Mermaid lineage and a score table stand in for the SVG pictures."""
    out = [
        f"# mergeguard report: {report.subject}",
        "",
        f"**Verdict: {_verdict_text(report)}** "
        f"({report.kind} `{report.ref}`"
        + (f", audit #{report.audit_id} at {report.audited_at}" if report.audit_id else "")
        + ")",
        "",
    ]
    out += [f"- {line}" for line in report.why] + [f"- problem: {p}" for p in report.problems] + [""]
    if any(c.found for c in report.counts):
        out += ["## Benchmarks", "", *_md_table(*_count_table(report)), ""]
    if report.lineage is not None and (len(report.lineage.nodes) > 1 or report.findings):
        out += ["## Lineage", "", "```mermaid", render_lineage(report.lineage, "mermaid").strip(), "```", ""]
        if report.origins:
            out += ["Findings came in at: " + ", ".join(f"{k} ({v})" for k, v in report.origins.items()), ""]
    if report.scores:
        benchmarks = sorted({b for s in report.scores for b in s.scores})
        out += ["## Scores" + (" (v2 normalized)" if report.suite == "v2" else ""), ""]
        out += _md_table(
            ["model", "role", *benchmarks],
            [
                [s.model, s.role, *(f"{s.scores[b]:.1f}" if b in s.scores else "—" for b in benchmarks)]
                for s in report.scores
            ],
        ) + [""]
    if report.findings:
        out += [f"## Findings ({len(report.findings)})", ""]
        for number, finding in enumerate(report.findings, start=1):
            out += _md_finding(number, finding)
    if report.datasets:
        out += ["## Declared datasets", "", *_md_table(*_dataset_table(report)), ""]
    if report.config_text:
        out += ["## Merge config", "", "```yaml", report.config_text.strip(), "```", ""]
    if report.guard:
        out += (
            ["## Guard decisions", ""] + _md_table(["decision", "value"], _guard_lines(report.guard)) + [""]
        )
    return "\n".join(out)


def render(report: Report, fmt: str) -> str:
    """`report` as `fmt` (html or markdown)."""
    return render_html(report) if fmt == "html" else render_markdown(report)
