"""The questions: which model is best (leaderboard), where did it come from (lineage), what happened
(history). Read-only; every value from the user is a bound parameter.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from mergeguard.auditor.report import Verdict
from mergeguard.benchmarks.registry import REGISTRY, suite_names
from mergeguard.db.records import canonical_ref, find_model
from mergeguard.db.scores import averages, resolve_benchmarks
from mergeguard.errors import UsageError

if TYPE_CHECKING:
    from sqlite_utils import Database

CHUNK = 500


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start : start + CHUNK]


def _marks(ids: Sequence[Any]) -> str:
    return ", ".join("?" for _ in ids)


# ---------------------------------------------------------------- contamination


@dataclass(frozen=True)
class Contamination:
    """A model's verdict: its own latest audit's, or 'contaminated' through the nearest ancestor `via`."""

    verdict: str  # clean | contaminated | undeclared | unaudited
    via: str | None = None

    @property
    def label(self) -> str:
        return f"{self.verdict} (via {self.via})" if self.via else self.verdict


def contamination(db: Database, model_ids: Sequence[int]) -> dict[int, Contamination]:
    """Verdicts for these models, own or inherited from any contaminated ancestor, in two queries a chunk."""
    out: dict[int, Contamination] = {}
    ids = list(dict.fromkeys(model_ids))
    for chunk in _chunks(ids):
        own = db.execute(
            f"""
            SELECT v.model_id, v.verdict, v.inherited_from FROM audit_verdicts v
            WHERE v.model_id IN ({_marks(chunk)})
              AND v.audit_id = (SELECT max(v2.audit_id) FROM audit_verdicts v2 WHERE v2.model_id = v.model_id)
            """,
            list(chunk),
        ).fetchall()
        for model_id, verdict, inherited_from in own:
            via = inherited_from if verdict == Verdict.CONTAMINATED else None
            out[model_id] = Contamination(verdict, via)
        tainted = db.execute(
            f"""
            WITH RECURSIVE anc(seed, id) AS (
                SELECT child_id, parent_id FROM lineage_edges WHERE child_id IN ({_marks(chunk)})
                UNION
                SELECT anc.seed, e.parent_id FROM anc JOIN lineage_edges e ON e.child_id = anc.id
            )
            SELECT anc.seed, m.name, v.inherited_from FROM anc
            JOIN models m ON m.id = anc.id
            JOIN audit_verdicts v ON v.model_id = anc.id
             AND v.audit_id = (SELECT max(v2.audit_id) FROM audit_verdicts v2 WHERE v2.model_id = anc.id)
            WHERE v.verdict = 'contaminated'
            ORDER BY anc.seed, v.inherited_from IS NOT NULL, m.name
            """,
            list(chunk),
        ).fetchall()
        for seed, ancestor, _ in tainted:  # the ancestor contaminated by its own data comes first
            current = out.get(seed)
            if current is None or current.verdict != Verdict.CONTAMINATED:
                out[seed] = Contamination(Verdict.CONTAMINATED, ancestor)
    for model_id in ids:
        out.setdefault(model_id, Contamination(Verdict.UNAUDITED))
    return out


# ---------------------------------------------------------------- leaderboard


@dataclass
class LeaderboardRow:
    """One model: scores in percent per benchmark (None: not evaluated), the average, verdict, parents."""

    rank: int
    model: str
    ref: str
    average: float | None
    n_scores: int
    scores: dict[str, float | None]
    verdict: str
    contaminated_via: str | None
    is_merge: bool
    parents: list[str] = field(default_factory=list)
    check: str | None = None  # the latest sanity check verdict: ok | degraded | broken
    probe: str | None = None  # the latest model-side probe: `suspect: BENCH, ...` | no_signal | inconclusive
    scored: bool = True  # False: a merge with no scores yet (listed after the ranked models)
    limited: list[str] = field(default_factory=list)  # benchmarks scored on a --limit subset only


@dataclass
class Leaderboard:
    suite: str | None
    columns: list[str]
    rows: list[LeaderboardRow]


def _order(names: Iterable[str]) -> list[str]:
    order = {name: i for i, name in enumerate(REGISTRY)}
    return sorted(set(names), key=lambda n: (order.get(n, len(order)), n))


def _ranked_page(
    db: Database, suite: str | None, benchmarks: list[str] | None, limit: int, offset: int
) -> list[tuple[int, float, int]]:
    column = "normalized" if suite == "v2" else "value"
    if benchmarks and len(benchmarks) == 1:  # one column: walk its (benchmark, value) index, no grouping
        return db.execute(
            f"SELECT model_id, {column}, 1 FROM model_scores WHERE benchmark = ? "
            "ORDER BY value DESC, model_id LIMIT ? OFFSET ?",
            [benchmarks[0], limit, offset],
        ).fetchall()
    if benchmarks:
        return db.execute(
            f"""
            SELECT model_id, avg({column}) AS average, count(*) AS n FROM model_scores
            WHERE benchmark IN ({_marks(benchmarks)})
            GROUP BY model_id ORDER BY n DESC, average DESC, model_id LIMIT ? OFFSET ?
            """,
            [*benchmarks, limit, offset],
        ).fetchall()
    return db.execute(
        "SELECT model_id, average, n_scores FROM model_averages WHERE suite = ? "
        "ORDER BY n_scores DESC, average DESC LIMIT ? OFFSET ?",
        [suite or "all", limit, offset],
    ).fetchall()


def _top_complete(
    db: Database, benchmarks: list[str], column: str, want: int
) -> list[tuple[int, float, int]]:
    """The `want` best models scored on every one of `benchmarks`, without grouping every row: read each
    benchmark's (benchmark, value) index from the top in growing steps (Fagin's "no random access"
    algorithm) and stop once `want` complete models beat the best any other model could still reach. Empty
    when too few models have all the benchmarks (the caller then groups every row instead)."""
    k, step = len(benchmarks), max(want, 128)
    offsets = dict.fromkeys(benchmarks, 0)
    frontier: dict[str, float] = dict.fromkeys(benchmarks, float("inf"))
    known: dict[int, dict[str, float]] = {}
    while True:
        for benchmark in benchmarks:
            if frontier[benchmark] == float("-inf"):
                continue
            rows = db.execute(
                f"SELECT model_id, {column} FROM model_scores WHERE benchmark = ? "
                "ORDER BY value DESC LIMIT ? OFFSET ?",
                [benchmark, step, offsets[benchmark]],
            ).fetchall()
            offsets[benchmark] += len(rows)
            for model_id, value in rows:
                known.setdefault(model_id, {})[benchmark] = value
            # exhausted: no model left unread has this benchmark, so none of them can be complete
            frontier[benchmark] = rows[-1][1] if len(rows) == step else float("-inf")
        step *= 2  # geometric steps keep the OFFSET re-reads linear in the rows read
        complete = sorted(
            ((-sum(v.values()) / k, m) for m, v in known.items() if len(v) == k), key=lambda t: (t[0], t[1])
        )
        if len(complete) >= want:
            floor = -complete[want - 1][0]
            unseen = sum(frontier.values()) / k
            partial = max(
                (
                    (sum(v.values()) + sum(frontier[b] for b in benchmarks if b not in v)) / k
                    for v in known.values()
                    if len(v) < k
                ),
                default=float("-inf"),
            )
            if floor >= max(unseen, partial):
                return [(m, -neg, k) for neg, m in complete[:want]]
        if all(f == float("-inf") for f in frontier.values()):
            return []


def _details(db: Database, ids: list[int]) -> tuple[dict, dict, dict, set[int]]:
    names: dict[int, tuple[str, str]] = {}
    scores: dict[int, dict[str, tuple[float, float]]] = {i: {} for i in ids}
    parents: dict[int, list[tuple[str, str, float | None]]] = {i: [] for i in ids}
    merged: set[int] = set()
    for chunk in _chunks(ids):
        marks, params = _marks(chunk), list(chunk)
        for model_id, name, ref in db.execute(
            f"SELECT id, name, ref FROM models WHERE id IN ({marks})", params
        ):
            names[model_id] = (name, ref)
        for model_id, benchmark, value, normalized in db.execute(
            f"SELECT model_id, benchmark, value, normalized FROM model_scores WHERE model_id IN ({marks})",
            params,
        ):
            scores[model_id][benchmark] = (value, normalized)
        for child, name, relation, weight in db.execute(
            f"SELECT e.child_id, p.name, e.relation, e.weight FROM lineage_edges e "
            f"JOIN models p ON p.id = e.parent_id WHERE e.child_id IN ({marks}) ORDER BY e.id",
            params,
        ):
            parents[child].append((name, relation, weight))
            if relation in ("merge", "base"):
                merged.add(child)
        merged.update(
            r[0]
            for r in db.execute(
                f"SELECT output_model_id FROM merges WHERE output_model_id IN ({marks})", params
            )
        )
    return names, scores, parents, merged


def leaderboard(
    db: Database,
    *,
    suite: str | None = None,
    clean_only: bool = False,
    tasks: Sequence[str] | None = None,
    limit: int | None = 50,
) -> Leaderboard:
    """One row per model ranked by average (models with more of the benchmarks first), best first.

    No suite: every benchmark with scores, plain mean. v1: plain mean of the v1 benchmarks. v2: each score
    normalized against its random baseline, as the Open LLM Leaderboard v2 did. `clean_only` keeps models
    whose latest audit says clean and that have no contaminated ancestor.
    """
    if suite is not None and suite not in ("v1", "v2"):
        raise UsageError(f"unknown suite {suite!r}", hint="use v1 or v2")
    benchmarks = resolve_benchmarks(tasks) if tasks else None
    if benchmarks and suite:
        benchmarks = [b for b in benchmarks if b in suite_names(suite)] or benchmarks
    want = limit if limit and limit > 0 else None
    picked, verdicts = _pick(db, suite, benchmarks, want, clean_only)
    ids = [r[0] for r in picked]
    names, scores, parents, merged = _details(db, ids)
    if benchmarks:
        columns = benchmarks
    elif suite:
        columns = suite_names(suite)
    else:
        columns = _order(b for i in ids for b in scores[i])
    score_index = 1 if suite == "v2" else 0  # (value, normalized)
    checks = latest_checks(db, ids)
    probes = latest_probes(db, ids)
    limited = limited_scores(db, ids)
    rows = []
    for rank, (model_id, average, n_scores) in enumerate(picked, start=1):
        verdict = verdicts[model_id]
        own = scores[model_id]
        rows.append(
            LeaderboardRow(
                rank=rank,
                model=names[model_id][0],
                ref=names[model_id][1],
                average=None if average is None else average * 100,
                n_scores=n_scores,
                scores={b: own[b][score_index] * 100 if b in own else None for b in columns},
                verdict=verdict.verdict,
                contaminated_via=verdict.via,
                check=checks.get(model_id),
                probe=probes.get(model_id),
                is_merge=model_id in merged,
                parents=list(dict.fromkeys(p[0] for p in parents[model_id])),
                scored=n_scores > 0,
                limited=sorted(b for b in limited.get(model_id, ()) if b in columns),
            )
        )
    return Leaderboard(suite=suite, columns=columns, rows=rows)


def _pick(
    db: Database, suite: str | None, benchmarks: list[str] | None, want: int | None, clean_only: bool
) -> tuple[list[tuple[int, float | None, int]], dict[int, Contamination]]:
    """The board's (model, average, n) rows in rank order and every read model's verdict: the top-k walk
    when it applies, else ranked pages until `want` rows pass the clean filter; unscored merges fill the
    rest of an all-benchmark board."""
    verdicts: dict[int, Contamination] = {}
    picked: list[tuple[int, float | None, int]] = []
    if benchmarks and len(benchmarks) > 1 and want and not clean_only:
        picked = list(_top_complete(db, benchmarks, "normalized" if suite == "v2" else "value", want))
    if picked:
        verdicts = contamination(db, [r[0] for r in picked])
    else:
        picked = _ranked_clean(db, suite, benchmarks, want, clean_only, verdicts)
    if not benchmarks and (want is None or len(picked) < want):
        unscored = _unscored_merges(db, (want - len(picked)) if want else None)
        verdicts.update(contamination(db, unscored))
        picked += [(i, None, 0) for i in unscored if not clean_only or verdicts[i].verdict == Verdict.CLEAN]
    return picked, verdicts


def _ranked_clean(
    db: Database,
    suite: str | None,
    benchmarks: list[str] | None,
    want: int | None,
    clean_only: bool,
    verdicts: dict[int, Contamination],
) -> list[tuple[int, float | None, int]]:
    """Ranked pages read until `want` rows are kept (`clean_only` drops the rest, so it reads bigger
    pages); each page's verdicts go into `verdicts`."""
    page = want if want and not clean_only else max((want or 0) * 2, 200)
    picked: list[tuple[int, float | None, int]] = []
    offset = 0
    while want is None or len(picked) < want:
        batch = _ranked_page(db, suite, benchmarks, page, offset)
        if not batch:
            break
        offset += len(batch)
        verdicts.update(contamination(db, [r[0] for r in batch]))
        picked += [r for r in batch if not clean_only or verdicts[r[0]].verdict == Verdict.CLEAN]
        if len(batch) < page:
            break
    return picked[:want] if want else picked


def _unscored_merges(db: Database, limit: int | None) -> list[int]:
    """Models a merge wrote that have no scores yet, newest first: a merge is on the board from the start."""
    rows = db.execute(
        "SELECT output_model_id FROM merges WHERE status = 'ok' AND output_model_id NOT IN "
        "(SELECT model_id FROM model_scores) GROUP BY output_model_id ORDER BY max(id) DESC LIMIT ?",
        [limit if limit else -1],
    ).fetchall()
    return [int(r[0]) for r in rows]


# ---------------------------------------------------------------- lineage


@dataclass
class LineageNode:
    """A model in a family: `depth` < 0 for ancestors, 0 for the asked model, > 0 for descendants."""

    id: int
    model: str
    ref: str
    depth: int
    method: str | None
    is_merge: bool
    average: float | None
    delta: float | None
    best_parent: str | None
    verdict: str
    contaminated_via: str | None
    scores: dict[str, float] = field(default_factory=dict)
    check: str | None = None  # the latest sanity check verdict: ok | degraded | broken
    probe: str | None = None  # the latest model-side probe (see LeaderboardRow.probe)
    probe_gains: list[ProbeGain] = field(default_factory=list)  # vs each parent, per benchmark both probed


@dataclass
class ProbeGain:
    """The model's latest probe effect on one benchmark against one parent's: a merge or fine-tune inherits
    what its parents memorised, so a child flagged with `gain` near 0 or below shows a parent's signal, and
    a clearly positive `gain` is memorisation the child added. Effects are each model's own test against
    its own reference (mean controlled gain over its spread), so they compare across models."""

    benchmark: str
    parent: str
    effect: float
    parent_effect: float
    gain: float  # effect - parent_effect
    verdict: str
    parent_verdict: str


@dataclass
class LineageEdge:
    child: str
    parent: str
    relation: str
    method: str | None
    weight: float | None


@dataclass
class LineageGraph:
    root: str
    suite: str | None
    nodes: list[LineageNode]
    edges: list[LineageEdge]

    def node(self, model: str) -> LineageNode:
        """The node named `model` (its display name or ref)."""
        for node in self.nodes:
            if model in (node.model, node.ref):
                return node
        raise KeyError(model)


def _walk(db: Database, root: int, up: bool) -> set[int]:
    """Every model reachable from `root` through parent (up) or child (down) edges; UNION keeps each id
    once, so diamonds in merge DAGs and accidental cycles cost nothing extra."""
    start, step = ("parent_id", "child_id") if up else ("child_id", "parent_id")
    rows = db.execute(
        f"""
        WITH RECURSIVE walk(id) AS (
            SELECT {start} FROM lineage_edges WHERE {step} = ?
            UNION
            SELECT e.{start} FROM walk JOIN lineage_edges e ON e.{step} = walk.id
        )
        SELECT id FROM walk
        """,
        [root],
    ).fetchall()
    return {r[0] for r in rows} - {root}


def _depths(
    root: int,
    edges: list[tuple[int, int, str, str | None, float | None]],
    ancestors: set[int],
    descendants: set[int],
) -> dict[int, int]:
    """Shortest generation distance from the root: negative for ancestors, positive for descendants."""
    depth = {root: 0}
    parents: dict[int, list[int]] = {}
    children: dict[int, list[int]] = {}
    for child, parent, *_ in edges:
        parents.setdefault(child, []).append(parent)
        children.setdefault(parent, []).append(child)
    for links, allowed, sign in ((parents, ancestors, -1), (children, descendants, 1)):
        frontier, level = [root], 0
        while frontier:
            level += 1
            nxt = []
            for node in frontier:
                for other in links.get(node, []):
                    if other in allowed and other not in depth:
                        depth[other] = sign * level
                        nxt.append(other)
            frontier = nxt
    return depth


def _family_average(
    scores: dict[str, tuple[float, float]], suite: str | None, only: set[str] | None
) -> float | None:
    picked = {b: v for b, v in scores.items() if only is None or b in only}
    key = suite or "all"
    result = averages(picked).get(key)
    return result[0] * 100 if result else None


def lineage(
    db: Database, model: str, *, suite: str | None = None, max_depth: int | None = None
) -> LineageGraph:
    """The model's ancestors and descendants with each node's average, its delta against its best parent
    (on the benchmarks both were scored on) and its contamination, own or inherited."""
    root = find_model(db, model)
    ids, edges_raw, depth = _family(db, root["id"], max_depth)
    names, scores, _, merged = _details(db, ids)
    verdicts = contamination(db, ids)
    checks = latest_checks(db, ids)
    probes = latest_probes(db, ids)
    only = set(suite_names(suite)) if suite else None
    into: dict[int, list[tuple[int, int, str, str | None, float | None]]] = {}
    for edge in edges_raw:
        into.setdefault(edge[0], []).append(edge)
    gains = probe_gains(db, into, names)
    nodes = []
    for model_id in sorted(ids, key=lambda i: (depth[i], names[i][0])):
        own = scores[model_id]
        edges_in = into.get(model_id, [])
        method = next((e[3] for e in edges_in if e[3]), None) or ("finetune" if edges_in else None)
        best = _best_parent(own, [(names[e[1]][0], scores[e[1]]) for e in edges_in], suite, only)
        verdict = verdicts[model_id]
        nodes.append(
            LineageNode(
                id=model_id,
                model=names[model_id][0],
                ref=names[model_id][1],
                depth=depth[model_id],
                method=method,
                is_merge=model_id in merged,
                average=_family_average(own, suite, only),
                delta=best[1] if best else None,
                best_parent=best[0] if best else None,
                verdict=verdict.verdict,
                contaminated_via=verdict.via,
                scores={b: v[0] * 100 for b, v in own.items() if only is None or b in only},
                check=checks.get(model_id),
                probe=probes.get(model_id),
                probe_gains=gains.get(model_id, []),
            )
        )
    edges = [
        LineageEdge(names[c][0], names[p][0], relation, method, weight)
        for c, p, relation, method, weight in edges_raw
    ]
    return LineageGraph(root=root["name"], suite=suite, nodes=nodes, edges=edges)


def _family(
    db: Database, root: int, max_depth: int | None
) -> tuple[list[int], list[tuple[int, int, str, str | None, float | None]], dict[int, int]]:
    """The family's model ids (root first), the edges between them (child, parent, relation, method,
    weight) and each one's generation from the root, cut at `max_depth`."""
    ancestors = _walk(db, root, True)
    descendants = _walk(db, root, False)
    ids = [root, *sorted(ancestors | descendants)]
    edges_raw: list[tuple[int, int, str, str | None, float | None]] = []
    for chunk in _chunks(ids):
        edges_raw += db.execute(
            f"SELECT child_id, parent_id, relation, method, weight FROM lineage_edges "
            f"WHERE child_id IN ({_marks(chunk)}) ORDER BY id",
            list(chunk),
        ).fetchall()
    inside = set(ids)
    edges_raw = [e for e in edges_raw if e[1] in inside]
    depth = _depths(root, edges_raw, ancestors, descendants)
    if max_depth is not None:
        keep = {i for i, d in depth.items() if abs(d) <= max_depth}
        ids = [i for i in ids if i in keep]
        edges_raw = [e for e in edges_raw if e[0] in keep and e[1] in keep]
    return ids, edges_raw, depth


def _best_parent(
    own: dict[str, tuple[float, float]],
    parents: list[tuple[str, dict[str, tuple[float, float]]]],
    suite: str | None,
    only: set[str] | None,
) -> tuple[str, float] | None:
    """The parent (name, scores) with the highest average on the benchmarks it shares with the child, and
    the child's delta against it on those same benchmarks; None when no parent shares a score."""
    best: tuple[float, str, float] | None = None
    for name, parent_scores in parents:
        common = set(own) & set(parent_scores) & (only if only is not None else set(own))
        parent_avg = _family_average(parent_scores, suite, common) if common else None
        if parent_avg is not None and (best is None or parent_avg > best[0]):
            child_avg = _family_average(own, suite, common)
            best = (parent_avg, name, (child_avg or 0.0) - parent_avg)
    return (best[1], best[2]) if best else None


# ---------------------------------------------------------------- history


@dataclass
class HistoryEvent:
    at: str
    kind: str  # merge | audit | eval | import | check | probe
    model: str
    detail: str


def parse_since(text: str) -> str:
    """A user's date or datetime as the database's UTC ISO form (naive values are taken as UTC)."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as error:
        raise UsageError(
            f"cannot read date {text!r}", hint="use ISO form, e.g. 2026-01-31 or 2026-01-31T12:00"
        ) from error
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat(timespec="seconds")


HISTORY_SQL = """
SELECT g.created_at AS at, 'merge' AS kind, m.name AS model,
       coalesce(g.method, '?') || ' of ' || coalesce((SELECT group_concat(p.name, ', ')
           FROM lineage_edges e JOIN models p ON p.id = e.parent_id WHERE e.merge_id = g.id),
           (SELECT group_concat(coalesce(p.name, j.value), ', ')
            FROM json_each(coalesce(g.guard, '{}'), '$.inputs') j LEFT JOIN models p ON p.ref = j.value),
           '?') || ' [' || g.status || coalesce(': ' || json_extract(g.guard, '$.refused'), '') || ']'
           AS detail
FROM merges g JOIN models m ON m.id = g.output_model_id
WHERE (:model IS NULL OR g.output_model_id = :model
       OR EXISTS (SELECT 1 FROM lineage_edges e WHERE e.merge_id = g.id AND e.parent_id = :model)
       OR EXISTS (SELECT 1 FROM json_each(coalesce(g.guard, '{}'), '$.inputs') j
                  JOIN models p ON p.ref = j.value WHERE p.id = :model))
  AND (:since IS NULL OR g.created_at >= :since)
UNION ALL
SELECT a.created_at, 'audit', m.name,
       v.verdict || coalesce(' via ' || v.inherited_from, '') || ' (' ||
       (SELECT count(*) FROM findings f WHERE f.audit_id = a.id AND f.model_id = v.model_id) || ' findings)'
FROM audit_verdicts v JOIN audits a ON a.id = v.audit_id JOIN models m ON m.id = v.model_id
WHERE (:model IS NULL OR v.model_id = :model) AND (:since IS NULL OR a.created_at >= :since)
UNION ALL
SELECT coalesce(r.evaluated_at, r.imported_at),
       CASE r.source WHEN 'eval' THEN 'eval' ELSE 'import' END, m.name,
       coalesce((SELECT group_concat(coalesce(e.benchmark, e.task) || ' '
                        || printf('%.2f', e.value * 100), ', ')
                 FROM evaluations e WHERE e.results_file_id = r.id AND e.is_primary = 1),
                (SELECT count(*) FROM evaluations e WHERE e.results_file_id = r.id) || ' metrics')
FROM results_files r JOIN models m ON m.id = r.model_id
WHERE (:model IS NULL OR r.model_id = :model)
  AND (:since IS NULL OR coalesce(r.evaluated_at, r.imported_at) >= :since)
UNION ALL
SELECT c.created_at, 'check', m.name, c.verdict || coalesce(': ' || c.detail, '')
FROM checks c JOIN models m ON m.id = c.model_id
WHERE (:model IS NULL OR c.model_id = :model) AND (:since IS NULL OR c.created_at >= :since)
UNION ALL
SELECT p.created_at, 'probe', m.name,
       p.benchmark || ' ' || p.verdict || coalesce(' p=' || printf('%.2g', p.p_value), '')
       || coalesce(' vs ' || p.reference, '')
FROM probes p JOIN models m ON m.id = p.model_id
WHERE (:model IS NULL OR p.model_id = :model) AND (:since IS NULL OR p.created_at >= :since)
ORDER BY at DESC
LIMIT :limit
"""


def history(
    db: Database, model: str | None = None, *, since: str | None = None, limit: int = 100
) -> list[HistoryEvent]:
    """What happened, newest first: merges, audits, evaluations and imports, checks."""
    model_id = find_model(db, model)["id"] if model else None
    params = {
        "model": model_id,
        "since": parse_since(since) if since else None,
        "limit": limit if limit > 0 else -1,
    }
    return [HistoryEvent(*row) for row in db.execute(HISTORY_SQL, params).fetchall()]


def parents_of(db: Database, ref: str) -> list[str]:
    """The refs of a model's direct parents, from its lineage edges (empty when unknown)."""
    rows = db.execute(
        "SELECT DISTINCT p.ref FROM lineage_edges e JOIN models c ON c.id = e.child_id "
        "JOIN models p ON p.id = e.parent_id WHERE c.ref = ? ORDER BY p.ref",
        [canonical_ref(ref)],
    ).fetchall()
    return [row[0] for row in rows]


def limited_scores(db: Database, model_ids: Sequence[int]) -> dict[int, set[str]]:
    """Per model, the benchmarks whose score came from a run with lm-eval's `--limit` (a subset of the
    items): the leaderboard marks them, since they do not compare with full runs."""
    out: dict[int, set[str]] = {}
    for chunk in _chunks(list(dict.fromkeys(model_ids))):
        rows = db.execute(
            "SELECT s.model_id, s.benchmark FROM model_scores s "
            "JOIN evaluations e ON e.id = s.evaluation_id "
            f"WHERE e.sample_limit IS NOT NULL AND s.model_id IN ({_marks(chunk)})",
            list(chunk),
        ).fetchall()
        for model_id, benchmark in rows:
            out.setdefault(int(model_id), set()).add(benchmark)
    return out


def base_of(db: Database, ref: str) -> str | None:
    """The ref of a merge's base model (its `base` lineage edge), or None."""
    row = db.execute(
        "SELECT p.ref FROM lineage_edges e JOIN models c ON c.id = e.child_id "
        "JOIN models p ON p.id = e.parent_id WHERE c.ref = ? AND e.relation = 'base' ORDER BY e.id LIMIT 1",
        [canonical_ref(ref)],
    ).fetchone()
    return str(row[0]) if row else None


def _latest_probe_rows(db: Database, model_ids: Sequence[int]) -> Iterator[list[tuple[Any, ...]]]:
    """(model_id, benchmark, verdict, effect) of each model's latest probe per benchmark, a chunk of models
    at a time (SQLite bounds a statement's parameters), ordered by benchmark."""
    for chunk in _chunks(list(dict.fromkeys(model_ids))):
        yield db.execute(
            "SELECT model_id, benchmark, verdict, effect FROM probes WHERE id IN (SELECT max(id) FROM probes "
            f"WHERE model_id IN ({_marks(chunk)}) GROUP BY model_id, benchmark) ORDER BY benchmark",
            list(chunk),
        ).fetchall()


def latest_probes(db: Database, model_ids: Sequence[int]) -> dict[int, str]:
    """Each probed model's latest probe per benchmark, summed up: `suspect: arc_challenge` when any
    benchmark is suspect, else `no_signal` (or `inconclusive`); models never probed are absent."""
    out: dict[int, str] = {}
    for rows in _latest_probe_rows(db, model_ids):
        verdicts: dict[int, dict[str, list[str]]] = {}
        for model_id, benchmark, verdict, _effect in rows:
            verdicts.setdefault(int(model_id), {}).setdefault(verdict, []).append(benchmark)
        for model_id, found in verdicts.items():
            for verdict in ("suspect", "inconclusive", "no_signal"):
                if verdict in found:
                    out[model_id] = (
                        f"suspect: {', '.join(found[verdict])}" if verdict == "suspect" else verdict
                    )
                    break
    return out


def latest_probe_effects(db: Database, model_ids: Sequence[int]) -> dict[int, dict[str, tuple[str, float]]]:
    """Per model and benchmark, the latest probe's (verdict, effect); probes without an effect (too few
    items, no reference) are left out, since there is nothing to compare."""
    out: dict[int, dict[str, tuple[str, float]]] = {}
    for rows in _latest_probe_rows(db, model_ids):
        for model_id, benchmark, verdict, effect in rows:
            if effect is not None:
                out.setdefault(int(model_id), {})[benchmark] = (verdict, float(effect))
    return out


def probe_gains(
    db: Database,
    into: dict[int, list[tuple[int, int, str, str | None, float | None]]],
    names: dict[int, tuple[str, str]],
) -> dict[int, list[ProbeGain]]:
    """Per child (the keys of `into`, its incoming edges), its probe effect against each parent's on every
    benchmark both were probed on: benchmark by benchmark, parents in edge order."""
    effects = latest_probe_effects(db, [*into, *(e[1] for edges in into.values() for e in edges)])
    out: dict[int, list[ProbeGain]] = {}
    for child, edges in into.items():
        mine = effects.get(child, {})
        parents = list(dict.fromkeys(e[1] for e in edges))
        for benchmark, (verdict, effect) in mine.items():
            for parent in parents:
                theirs = effects.get(parent, {}).get(benchmark)
                if theirs is None:
                    continue
                gain = ProbeGain(
                    benchmark, names[parent][0], effect, theirs[1], effect - theirs[1], verdict, theirs[0]
                )
                out.setdefault(child, []).append(gain)
    return out


def latest_checks(db: Database, model_ids: Sequence[int]) -> dict[int, str]:
    """Each model's latest sanity check verdict (models never checked are absent)."""
    out: dict[int, str] = {}
    ids = list(dict.fromkeys(model_ids))
    for chunk in _chunks(ids):
        rows = db.execute(
            f"SELECT model_id, verdict FROM checks WHERE id IN (SELECT max(id) FROM checks "
            f"WHERE model_id IN ({_marks(chunk)}) GROUP BY model_id)",
            list(chunk),
        ).fetchall()
        out.update({int(model_id): verdict for model_id, verdict in rows})
    return out
