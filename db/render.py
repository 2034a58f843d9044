"""Turning query results into what a person reads: rich tables and trees, JSON, CSV, Markdown, Mermaid and
Graphviz DOT. Pure functions from dataclasses to strings or rich renderables; the CLI prints them.
"""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from mergeguard.auditor.report import Verdict

if TYPE_CHECKING:  # only read here: printing a table needs neither the queries nor (until drawn) rich
    from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
    from rich.tree import Tree

    from mergeguard.db.queries import (
        HistoryEvent,
        Leaderboard,
        LineageEdge,
        LineageGraph,
        LineageNode,
        ProbeGain,
    )

MISSING = "—"
TABLE_FORMATS = ("table", "json", "csv", "markdown")
LINEAGE_FORMATS = ("tree", "json", "mermaid", "dot")


def _num(value: float | None, signed: bool = False, missing: str = MISSING) -> str:
    if value is None:
        return missing
    return f"{value:+.2f}" if signed else f"{value:.2f}"


JSON_DIGITS = 4  # scores are percents: 27.500000000000004 reads as 27.5, a rate 0.0123 keeps its digits


def rounded(value: Any) -> Any:
    """`value` with every float rounded to JSON_DIGITS decimals (float noise is not information)."""
    if isinstance(value, float):
        return round(value, JSON_DIGITS)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    return value


def to_json(value: Any) -> str:
    """Indented JSON with rounded numbers, as every `--format json` prints it."""
    return json.dumps(rounded(value), indent=2)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as the start of a formula


def csv_cell(value: Any) -> Any:
    """A cell a spreadsheet shows as text: one starting like a formula gets a leading `'` (OWASP's advice
    against CSV injection), unless it is a plain number such as -1.5. Model names come from users."""
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    try:
        float(value)
    except ValueError:
        return "'" + value
    return value


def _csv(headers: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([csv_cell(h) for h in headers])
    writer.writerows([csv_cell(v) for v in row] for row in rows)
    return buffer.getvalue()


def _markdown(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:  # one line per row: a newline in a name would end the table
        return " ".join(str(value).splitlines()).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _table(
    title: str | None,
    headers: list[str],
    rows: list[list[Any]],
    right: set[str],
    *,
    keep: tuple[str, ...] = ("model",),
    optional: tuple[str, ...] = (),
) -> FitTable:
    """A table that fits the console it is printed on (80 columns too): `keep` columns (names) are never
    folded or cut, the `optional` ones are left out, in order, while the table would be too wide, and the
    rest fold their text onto more lines."""
    return FitTable(title, headers, rows, right, keep, optional)


class FitTable:
    """A rich renderable choosing its columns at print time, from the width the console offers."""

    def __init__(
        self,
        title: str | None,
        headers: list[str],
        rows: list[list[Any]],
        right: set[str],
        keep: tuple[str, ...],
        optional: tuple[str, ...],
    ) -> None:
        self.title, self.headers, self.rows, self.right = title, headers, rows, right
        self.keep, self.optional = keep, optional
        self.caption: str | None = None

    def _width(self, columns: list[int]) -> int:
        widths = [max([len(self.headers[i])] + [len(str(r[i])) for r in self.rows]) for i in columns]
        return sum(widths) + 3 * len(columns) + 1

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.markup import escape  # rich: imported when drawing (mergeguard.lazy)
        from rich.table import Table

        columns = list(range(len(self.headers)))
        for name in self.optional:
            if self._width(columns) <= options.max_width:
                break
            columns = [i for i in columns if self.headers[i] != name]
        table = Table(title=self.title, caption=self.caption, show_lines=False)
        for i in columns:
            header = self.headers[i]
            kept = header in self.keep
            table.add_column(
                header,
                justify="right" if header in self.right else "left",
                overflow="fold",
                no_wrap=kept,
                min_width=max((len(str(r[i])) for r in self.rows), default=0) if kept else None,
            )
        for row in self.rows:
            table.add_row(*(escape(str(row[i])) for i in columns))
        yield table


def render_rows(
    title: str | None,
    headers: list[str],
    rows: list[list[Any]],
    fmt: str,
    *,
    keep: tuple[str, ...] = ("model",),
) -> RenderableType:
    """Any command's table in any of TABLE_FORMATS: JSON as a list of objects (numbers rounded), CSV with
    an empty cell for a missing value, Markdown, or a table that fits the console (`keep` columns whole)."""
    if fmt == "json":
        return to_json([dict(zip(headers, row, strict=True)) for row in rows]) + "\n"
    if fmt == "csv":
        return _csv(headers, [["" if v is None else v for v in row] for row in rows])
    shown = [["-" if v is None else v for v in row] for row in rows]
    if fmt == "markdown":
        return _markdown(headers, shown)
    numeric = {
        h
        for i, h in enumerate(headers)
        if isinstance(next((r[i] for r in rows if r[i] is not None), None), (int, float))
    }
    return _table(title, headers, shown, numeric, keep=keep)


# ---------------------------------------------------------------- leaderboard


LIMITED_MARK = "*"
LIMITED_NOTE = "* scored on a subset of the items (lm-eval --limit): not comparable with full runs"


def _score(value: float | None, limited: bool, missing: str) -> str:
    """A score cell; a --limit score carries LIMITED_MARK (CSV keeps the bare number: see `limited`)."""
    text = _num(value, missing=missing)
    return text + LIMITED_MARK if limited and value is not None and missing else text


def leaderboard_grid(board: Leaderboard, missing: str = MISSING) -> tuple[list[str], list[list[Any]]]:
    """Headers and text cells: rank, model, a column per benchmark, average, verdict, merge, parents.
    A merge with no scores yet has no rank and `unscored` for its average; `missing` fills empty cells
    (CSV writes an empty cell, so a spreadsheet reads no number rather than text)."""
    headers = ["#", "model", *board.columns, "average", "n", "verdict", "check", "merge", "parents"]
    rows = [
        [
            row.rank if row.scored else missing,
            row.model,
            *(_score(row.scores.get(b), b in row.limited, missing) for b in board.columns),
            _num(row.average, missing=missing) if row.scored else "unscored",
            row.n_scores,
            (f"{row.verdict} (via {row.contaminated_via})" if row.contaminated_via else row.verdict)
            + (f"; probe {row.probe}" if row.probe else ""),
            row.check or missing,
            "yes" if row.is_merge else "no",
            ", ".join(row.parents) or missing,
        ]
        for row in board.rows
    ]
    return headers, rows


def render_leaderboard(board: Leaderboard, fmt: str) -> RenderableType:
    """A rich Table for "table"; text for json, csv and markdown."""
    if fmt == "json":
        return to_json(
            {"suite": board.suite, "columns": board.columns, "rows": [asdict(r) for r in board.rows]}
        )
    limited = any(row.limited for row in board.rows)
    if fmt == "csv":
        headers, rows = leaderboard_grid(board, missing="")
        return _csv(
            [*headers, "limited"], [[*r, " ".join(b.limited)] for r, b in zip(rows, board.rows, strict=True)]
        )
    headers, rows = leaderboard_grid(board)
    if fmt == "markdown":
        return _markdown(headers, rows) + (f"\n{LIMITED_NOTE}\n" if limited else "")
    title = f"leaderboard ({board.suite or 'all benchmarks'})"
    optional = ("merge", "check", "n")  # parents stay: the names wrap between them
    table = _table(title, headers, rows, right={"#", "average", "n", *board.columns}, optional=optional)
    if limited:
        table.caption = LIMITED_NOTE
    return table


# ---------------------------------------------------------------- lineage


def _node_text(node: LineageNode) -> str:
    parts = [node.model]
    if node.method:
        parts.append(f"[{node.method}]")
    parts.append(f"avg {_num(node.average)}")
    if node.delta is not None:
        parts.append(f"Δ {_num(node.delta, signed=True)} vs {node.best_parent}")
    verdict = f"{node.verdict} via {node.contaminated_via}" if node.contaminated_via else node.verdict
    parts.append(verdict)
    if node.check:
        parts.append(f"check {node.check}")
    if node.probe:
        parts.append(f"probe {node.probe}")
    parts += _gains_text(node.probe_gains)
    return " ".join(parts)


def _gains_text(gains: list[ProbeGain]) -> list[str]:
    """Per benchmark, `probe effect BENCH 1.20: +0.05 vs leaky, +1.10 vs clean`: the child's effect and its
    gain over each probed parent (a merge that only inherits shows about 0 or less against the source)."""
    by_bench: dict[str, list[ProbeGain]] = {}
    for gain in gains:
        by_bench.setdefault(gain.benchmark, []).append(gain)
    return [
        f"probe effect {bench} {rows[0].effect:.2f}: "
        + ", ".join(f"{row.gain:+.2f} vs {row.parent}" for row in rows)
        for bench, rows in by_bench.items()
    ]


def _tree(graph: LineageGraph) -> Tree:
    """Ancestors above the model (each parent under its child), descendants below it."""
    from rich.markup import escape
    from rich.tree import Tree

    by_name = {n.model: n for n in graph.nodes}
    parents: dict[str, list[tuple[str, str, float | None]]] = {}
    children: dict[str, list[str]] = {}
    for edge in graph.edges:
        parents.setdefault(edge.child, []).append((edge.parent, edge.relation, edge.weight))
        children.setdefault(edge.parent, []).append(edge.child)
    root = by_name[graph.root]

    def style(node: LineageNode) -> str:
        text = escape(_node_text(node))
        return f"[red]{text}[/]" if node.verdict == Verdict.CONTAMINATED else text

    tree = Tree(f"[bold]{style(root)}[/]")
    shown = {root.model}
    if parents.get(root.model):
        up = tree.add("ancestors")

        def add_up(branch: Tree, name: str) -> None:
            for parent, relation, weight in parents.get(name, []):
                if parent not in by_name:
                    continue
                label = f"{relation}" + (f" w={weight:g}" if weight is not None else "")
                if parent in shown:  # a merge DAG reaches some ancestors twice: expand each once
                    branch.add(f"{escape(parent)} ({label}, see above)")
                    continue
                shown.add(parent)
                add_up(branch.add(f"{style(by_name[parent])} ({label})"), parent)

        add_up(up, root.model)
    if children.get(root.model):
        down = tree.add("descendants")

        def add_down(branch: Tree, name: str) -> None:
            for child in children.get(name, []):
                if child not in by_name:
                    continue
                if child in shown:
                    branch.add(f"{escape(child)} (see above)")
                    continue
                shown.add(child)
                add_down(branch.add(style(by_name[child])), child)

        add_down(down, root.model)
    return tree


def _edge_label(edge: LineageEdge) -> str:
    """An edge's label in the diagrams: the merge method (else the relation) and its weight."""
    return (edge.method or edge.relation) + (f" {edge.weight:g}" if edge.weight is not None else "")


def _ids(graph: LineageGraph) -> dict[str, str]:
    return {node.model: f"n{i}" for i, node in enumerate(graph.nodes)}


def _one_line(text: str) -> str:
    """Control characters (newlines, tabs) as spaces: a label is one line in every diagram format."""
    return "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in text)


def _quote(text: str) -> str:
    """Text inside a DOT double-quoted string: backslash and quote escaped, on one line."""
    return _one_line(text).replace("\\", "\\\\").replace('"', '\\"')


MERMAID_SAFE = set(" ._-/:,+@'")  # `%` (comments), `=`, `~`, `*` and the rest are encoded


def mermaid_text(text: str) -> str:
    """Text for a Mermaid label: anything but letters, digits and a few plain marks becomes an entity code
    (`#34;`), so quotes, brackets, pipes, `#`, `<`, `;` and newlines cannot end the label or add markup."""
    return "".join(ch if ch.isalnum() or ch in MERMAID_SAFE else f"#{ord(ch)};" for ch in _one_line(text))


def lineage_mermaid(graph: LineageGraph) -> str:
    """A Mermaid flowchart, parents above children; contaminated nodes styled red."""
    ids = _ids(graph)
    lines = ["flowchart TD"]
    for node in graph.nodes:
        lines.append(f'    {ids[node.model]}["{mermaid_text(_node_text(node))}"]')
    for edge in graph.edges:
        lines.append(f"    {ids[edge.parent]} -->|{mermaid_text(_edge_label(edge))}| {ids[edge.child]}")
    lines.append("    classDef contaminated fill:#fdd,stroke:#c00")
    bad = [ids[n.model] for n in graph.nodes if n.verdict == Verdict.CONTAMINATED]
    if bad:
        lines.append(f"    class {','.join(bad)} contaminated")
    return "\n".join(lines) + "\n"


def lineage_dot(graph: LineageGraph) -> str:
    """Graphviz DOT, parents above children; contaminated nodes filled red."""
    ids = _ids(graph)
    lines = ["digraph lineage {", "  rankdir=TB;", "  node [shape=box];"]
    for node in graph.nodes:
        extra = ', style=filled, fillcolor="#ffdddd"' if node.verdict == Verdict.CONTAMINATED else ""
        bold = ", penwidth=2" if node.model == graph.root else ""
        lines.append(f'  {ids[node.model]} [label="{_quote(_node_text(node))}"{extra}{bold}];')
    for edge in graph.edges:
        lines.append(f'  {ids[edge.parent]} -> {ids[edge.child]} [label="{_quote(_edge_label(edge))}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_lineage(graph: LineageGraph, fmt: str) -> RenderableType:
    """A rich Tree for "tree"; text for json, mermaid and dot."""
    if fmt == "json":
        return to_json(asdict(graph))
    if fmt == "mermaid":
        return lineage_mermaid(graph)
    if fmt == "dot":
        return lineage_dot(graph)
    return _tree(graph)


# ---------------------------------------------------------------- history


def render_history(events: list[HistoryEvent], fmt: str) -> RenderableType:
    """A rich Table for "table"; text for json, csv and markdown."""
    if fmt == "json":
        return to_json([asdict(e) for e in events])
    headers = ["when", "what", "model", "detail"]
    rows = [[e.at, e.kind, e.model, e.detail] for e in events]
    if fmt == "csv":
        return _csv(headers, rows)
    if fmt == "markdown":
        return _markdown(headers, rows)
    return _table("history (newest first)", headers, rows, right=set())
