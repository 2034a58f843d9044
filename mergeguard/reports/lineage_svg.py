"""The lineage as an inline SVG graph: one row per generation (oldest on top), one box per model, an
arrow per parent edge. Hand-laid out, so no Graphviz binary is needed. A box is marked by the verdict
`db` gives it: contaminated (its own data), suspect (inherited, undeclared or not fully read)."""

from __future__ import annotations

from html import escape

from mergeguard.auditor.report import UNREAD, Verdict
from mergeguard.db.queries import LineageEdge, LineageGraph, LineageNode

BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 190, 58, 28, 46, 12
STYLE = {  # kind -> (fill, stroke, label)
    "contaminated": ("#fde2e1", "#c62828", "contaminated"),
    "suspect": ("#fff1d6", "#e08a00", "suspect"),
    "clean": ("#e3f4e5", "#2e7d32", "clean"),
    "other": ("#eeeeee", "#757575", ""),
}


def node_kind(node: LineageNode) -> str:
    """contaminated (own data), suspect (inherited; undeclared, incomplete, unreadable), clean, other."""
    if node.verdict == Verdict.CONTAMINATED:
        return "suspect" if node.contaminated_via and node.contaminated_via != node.model else "contaminated"
    if node.verdict in (Verdict.UNDECLARED, *UNREAD):
        return "suspect"
    return "clean" if node.verdict == Verdict.CLEAN else "other"


def _short(text: str, limit: int = 26) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ranks(graph: LineageGraph) -> dict[str, int]:
    """Each model's row: one below its lowest parent (the longest path from a root), so a base that is
    both a grandparent and a direct parent of a merge sits above the fine-tunes, not beside them."""
    rank = {node.model: 0 for node in graph.nodes}
    for _ in range(len(rank)):  # at most one pass per model settles a DAG; a stray cycle stops here
        changed = False
        for edge in graph.edges:
            if edge.parent in rank and edge.child in rank and rank[edge.child] <= rank[edge.parent]:
                rank[edge.child] = rank[edge.parent] + 1
                changed = True
        if not changed:
            break
    return rank


def _layout(graph: LineageGraph) -> tuple[dict[str, tuple[float, float]], float, float]:
    """Each model's box corner, one row per generation (oldest on top), rows centred; and the size."""
    rank = _ranks(graph)
    rows: dict[int, list[LineageNode]] = {}
    for node in graph.nodes:
        rows.setdefault(rank[node.model], []).append(node)
    depths = sorted(rows)
    widest = max(len(r) for r in rows.values())
    width = PAD * 2 + widest * BOX_W + (widest - 1) * GAP_X
    height = PAD * 2 + len(depths) * BOX_H + (len(depths) - 1) * GAP_Y
    where: dict[str, tuple[float, float]] = {}
    for level, depth in enumerate(depths):
        row = rows[depth]
        offset = (width - (len(row) * BOX_W + (len(row) - 1) * GAP_X)) / 2
        for index, node in enumerate(row):
            where[node.model] = (offset + index * (BOX_W + GAP_X), PAD + level * (BOX_H + GAP_Y))
    return where, width, height


def _edge(edge: LineageEdge, where: dict[str, tuple[float, float]]) -> tuple[str, str]:
    """An arrow from parent to child, and its label (relation and weight)."""
    px, py = where[edge.parent]
    cx, cy = where[edge.child]
    x1, y1, x2, y2 = px + BOX_W / 2, py + BOX_H, cx + BOX_W / 2, cy
    label = edge.relation if edge.weight is None else f"{edge.relation} {edge.weight:g}"
    line = (
        f'<line class="edge" x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2 - 4:.0f}" '
        f'stroke="#666" stroke-width="1.4" marker-end="url(#arrow)"/>'
    )
    text = (
        f'<text x="{(x1 + x2) / 2 + 4:.0f}" y="{(y1 + y2) / 2:.0f}" font-size="10" fill="#555" '
        f'stroke="#fff" stroke-width="3" paint-order="stroke">{escape(label)}</text>'
    )
    return line, text


def _node(node: LineageNode, x: float, y: float, came: int) -> str:
    """A model's box: name, method, verdict in its colour, and a badge counting the findings that came in."""
    kind = node_kind(node)
    fill, stroke, label = STYLE[kind]
    root = node.depth == 0
    verdict = f"{node.verdict} via {node.contaminated_via}" if node.contaminated_via else node.verdict
    badge = (
        f'<circle cx="{x + BOX_W - 4:.0f}" cy="{y + 4:.0f}" r="11" fill="{stroke}"/>'
        f'<text x="{x + BOX_W - 4:.0f}" y="{y + 8:.0f}" font-size="11" fill="#fff" '
        f'text-anchor="middle" font-weight="bold">{came}</text>'
        if came
        else ""
    )
    return (
        f'<g class="node {kind}" data-model="{escape(node.model)}" data-verdict="{escape(node.verdict)}"'
        f"{f' data-findings={chr(34)}{came}{chr(34)}' if came else ''}>"
        f"<title>{escape(node.ref)}: {escape(verdict)}"
        f"{f'; {came} findings came in here' if came else ''}</title>"
        f'<rect x="{x:.0f}" y="{y:.0f}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="{fill}" '
        f'stroke="{stroke}" stroke-width="{3 if root else 1.5}"/>'
        f'<text x="{x + 10:.0f}" y="{y + 20:.0f}" font-size="13" font-weight="bold">'
        f"{escape(_short(node.model))}</text>"
        f'<text x="{x + 10:.0f}" y="{y + 36:.0f}" font-size="11" fill="#333">'
        f"{escape(_short(node.method or 'model', 30))}</text>"
        f'<text x="{x + 10:.0f}" y="{y + 50:.0f}" font-size="11" fill="{stroke}">'
        f"{escape(_short(label or node.verdict, 30))}"
        f"{escape(' (inherited)') if kind == 'suspect' and node.contaminated_via else ''}</text>"
        f"{badge}</g>"
    )


def lineage_svg(graph: LineageGraph, origins: dict[str, int] | None = None) -> str:
    """An `<svg>` element for `graph` (a db.LineageGraph); `origins` counts findings per model name,
    shown on the box where they came in."""
    origins = origins or {}
    where, width, height = _layout(graph)
    parts: list[str] = []
    labels: list[str] = []  # drawn over the boxes, so a long edge's label is never hidden
    for edge in graph.edges:
        if edge.child in where and edge.parent in where:
            line, label = _edge(edge, where)
            parts.append(line)
            labels.append(label)
    parts += [_node(node, *where[node.model], origins.get(node.model, 0)) for node in graph.nodes]
    parts += labels
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="lineage" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="lineage of {escape(graph.root)}" '
        f'font-family="sans-serif"><defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" '
        f'markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#666"/>'
        f"</marker></defs>{''.join(parts)}</svg>"
    )
