"""Turning query results into what a person reads: rich tables and trees, JSON, CSV, Markdown, Mermaid and
Graphviz DOT. Pure functions from dataclasses to strings or rich renderables; the CLI prints them.
"""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from dataclasses import asdict
from typing import Any

from mergeguard.db.queries import HistoryEvent, Leaderboard, LineageGraph, LineageNode

MISSING = "—"
TABLE_FORMATS = ("table", "json", "csv", "markdown")
LINEAGE_FORMATS = ("tree", "json", "mermaid", "dot")


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return MISSING
    return f"{value:+.2f}" if signed else f"{value:.2f}"


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


def _table(title: str | None, headers: list[str], rows: list[list[Any]], right: set[str]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for header in headers:
        table.add_column(header, justify="right" if header in right else "left", overflow="fold")
    for row in rows:
        table.add_row(*(escape(str(v)) for v in row))
    return table


# ---------------------------------------------------------------- leaderboard


def leaderboard_grid(board: Leaderboard) -> tuple[list[str], list[list[Any]]]:
    """Headers and text cells: rank, model, a column per benchmark, average, verdict, merge, parents."""
    headers = ["#", "model", *board.columns, "average", "n", "verdict", "check", "merge", "parents"]
    rows = [
        [
            row.rank,
            row.model,
            *(_num(row.scores.get(b)) for b in board.columns),
            _num(row.average),
            row.n_scores,
            f"{row.verdict} (via {row.contaminated_via})" if row.contaminated_via else row.verdict,
            row.check or MISSING,
            "yes" if row.is_merge else "no",
            ", ".join(row.parents) or MISSING,
        ]
        for row in board.rows
    ]
    return headers, rows


def render_leaderboard(board: Leaderboard, fmt: str) -> Any:
    """A rich Table for "table"; text for json, csv and markdown."""
    if fmt == "json":
        return json.dumps(
            {"suite": board.suite, "columns": board.columns, "rows": [asdict(r) for r in board.rows]},
            indent=2,
        )
    headers, rows = leaderboard_grid(board)
    if fmt == "csv":
        return _csv(headers, rows)
    if fmt == "markdown":
        return _markdown(headers, rows)
    title = f"leaderboard ({board.suite or 'all benchmarks'})"
    return _table(title, headers, rows, right={"#", "average", "n", *board.columns})


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
    return " ".join(parts)


def _tree(graph: LineageGraph) -> Any:
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
        return f"[red]{text}[/]" if node.verdict == "contaminated" else text

    tree = Tree(f"[bold]{style(root)}[/]")
    shown = {root.model}
    if parents.get(root.model):
        up = tree.add("ancestors")

        def add_up(branch: Any, name: str) -> None:
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

        def add_down(branch: Any, name: str) -> None:
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
        label = edge.method or edge.relation
        if edge.weight is not None:
            label += f" {edge.weight:g}"
        lines.append(f"    {ids[edge.parent]} -->|{mermaid_text(label)}| {ids[edge.child]}")
    lines.append("    classDef contaminated fill:#fdd,stroke:#c00")
    bad = [ids[n.model] for n in graph.nodes if n.verdict == "contaminated"]
    if bad:
        lines.append(f"    class {','.join(bad)} contaminated")
    return "\n".join(lines) + "\n"


def lineage_dot(graph: LineageGraph) -> str:
    """Graphviz DOT, parents above children; contaminated nodes filled red."""
    ids = _ids(graph)
    lines = ["digraph lineage {", "  rankdir=TB;", "  node [shape=box];"]
    for node in graph.nodes:
        extra = ', style=filled, fillcolor="#ffdddd"' if node.verdict == "contaminated" else ""
        bold = ", penwidth=2" if node.model == graph.root else ""
        lines.append(f'  {ids[node.model]} [label="{_quote(_node_text(node))}"{extra}{bold}];')
    for edge in graph.edges:
        label = edge.method or edge.relation
        if edge.weight is not None:
            label += f" {edge.weight:g}"
        lines.append(f'  {ids[edge.parent]} -> {ids[edge.child]} [label="{_quote(label)}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_lineage(graph: LineageGraph, fmt: str) -> Any:
    """A rich Tree for "tree"; text for json, mermaid and dot."""
    if fmt == "json":
        return json.dumps(asdict(graph), indent=2)
    if fmt == "mermaid":
        return lineage_mermaid(graph)
    if fmt == "dot":
        return lineage_dot(graph)
    return _tree(graph)


# ---------------------------------------------------------------- history


def render_history(events: list[HistoryEvent], fmt: str) -> Any:
    """A rich Table for "table"; text for json, csv and markdown."""
    if fmt == "json":
        return json.dumps([asdict(e) for e in events], indent=2)
    headers = ["when", "what", "model", "detail"]
    rows = [[e.at, e.kind, e.model, e.detail] for e in events]
    if fmt == "csv":
        return _csv(headers, rows)
    if fmt == "markdown":
        return _markdown(headers, rows)
    return _table("history (newest first)", headers, rows, right=set())
