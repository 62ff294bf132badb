"""Export a run's report graphs as RadGraph JSON.

    python -m pipeline.graph export OUT [PATH] [--labels v1|xl]

PATH defaults to OUT/radgraph.json. The file is one JSON object, report id -> RadGraph document
(``text``, ``entities`` with ``tokens``/``label``/``start_ix``/``end_ix``/``relations``), the shape
the ``radgraph`` package writes and ``stages.graph.radgraph_json`` reads back. ``--labels v1``
(default) writes ANAT-DP/OBS-DP/OBS-U/OBS-DA, ``--labels xl`` RadGraph-XL's
``Observation::definitely present``... Exit 0 on success, 2 on a usage or input error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.core.io import read_dataset
from pipeline.graph.radgraph import LABEL_SETS, check_label_set, export_corpus


def export_graphs(out: str, path: str, labels: str = "v1") -> int:
    """Write ``out``'s kg_entities/kg_relations to ``path`` as RadGraph JSON; returns the reports written."""
    check_label_set(labels)
    entities = read_dataset(out, "kg_entities").to_pylist()
    relations = read_dataset(out, "kg_relations").to_pylist()
    reports = read_dataset(out, "reports", columns=["report_id", "text"])
    texts = dict(
        zip(reports.column("report_id").to_pylist(), reports.column("text").to_pylist(), strict=True)
    )
    docs = export_corpus(texts, entities, relations, labels)
    target = Path(path)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps(docs, ensure_ascii=False))
    tmp.replace(target)  # atomic: a reader never sees half a file
    return len(docs)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.graph", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write a run's graphs as RadGraph JSON")
    export.add_argument("out", help="the run folder")
    export.add_argument("path", nargs="?", help="the JSON file to write (default OUT/radgraph.json)")
    export.add_argument("--labels", default="v1", help=f"label set: {' or '.join(LABEL_SETS)} (default v1)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on a usage error, 0 on --help
        return int(exc.code or 0)
    path = args.path or str(Path(args.out) / "radgraph.json")
    try:
        n = export_graphs(args.out, path, args.labels)
    except PipelineError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"wrote {n} RadGraph documents ({args.labels} labels) to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
