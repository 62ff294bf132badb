"""One report's graph as a networkx DiGraph, and back, without loss.

Nodes are entity ids carrying every kg_entities column except report_id (held once as the graph
attribute ``report_id``); edges carry ``relation`` and ``relation_id``. ``to_rows(to_networkx(e, r))``
returns ``e`` and ``r`` exactly, sorted by entity id (numeric-aware) and by (source, target).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import networkx as nx

from pipeline.core.errors import PipelineError
from pipeline.graph.build import ENTITY_COLUMNS, RELATION_COLUMNS, Row, entity_order


def to_networkx(
    report_id: str, entities: Sequence[Mapping[str, Any]], relations: Sequence[Mapping[str, Any]]
) -> nx.DiGraph:
    """The DiGraph of one report. Raises PipelineError(E_GRAPH) on a duplicate entity id, a
    relation to an unknown entity or two relations on one ordered pair."""
    graph = nx.DiGraph(report_id=report_id)
    for e in entities:
        if e["entity_id"] in graph:
            raise PipelineError("E_GRAPH", f"report {report_id}: entity {e['entity_id']!r} twice")
        graph.add_node(
            e["entity_id"], **{c: e[c] for c in ENTITY_COLUMNS if c not in ("report_id", "entity_id")}
        )
    for r in relations:
        s, t = r["source_id"], r["target_id"]
        if s not in graph or t not in graph:
            raise PipelineError("E_GRAPH", f"report {report_id}: relation {s}->{t} names an unknown entity")
        if graph.has_edge(s, t):
            raise PipelineError("E_GRAPH", f"report {report_id}: two relations {s}->{t}")
        graph.add_edge(s, t, relation=r["relation"], relation_id=r["relation_id"])
    return graph


def to_rows(graph: nx.DiGraph) -> tuple[list[Row], list[Row]]:
    """(entity rows, relation rows) of a DiGraph made by :func:`to_networkx`, in kg_* column order."""
    rid = graph.graph["report_id"]
    entities = [
        {
            c: (rid if c == "report_id" else n if c == "entity_id" else graph.nodes[n][c])
            for c in ENTITY_COLUMNS
        }
        for n in sorted(graph.nodes, key=entity_order)
    ]
    relations = [
        {c: {"report_id": rid, "source_id": s, "target_id": t, **d}[c] for c in RELATION_COLUMNS}
        for s, t, d in sorted(graph.edges(data=True), key=lambda x: (entity_order(x[0]), entity_order(x[1])))
    ]
    return entities, relations
