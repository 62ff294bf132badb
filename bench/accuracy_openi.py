"""Accuracy and speed of the extract stage on Open-i (IU X-ray) against its gold CXR14 labels.

    python bench/accuracy_openi.py [data=../shared/data] [limit=0] [naive=true] [errors=0]

``errors=N`` prints, per finding, up to N false positives and N false negatives (uncertain counted
negative) with the report id, our label, the deciding mentions (sentence, status, cue, rule) and the
gold row, for error analysis.

Reports are built from Open-i's four text columns as
"INDICATION: ...\\n\\nCOMPARISON: ...\\n\\nFINDINGS: ...\\n\\nIMPRESSION: ..." (empty columns skipped),
uid as report_id. The script runs the real ``dag=labels`` (table adapter, a LocalCluster of
``workers`` processes) into a temporary folder and scores the ``labels`` and ``mentions`` it wrote:

    python -m pipeline.run dag=labels dataset=table dataset.path=.../openi/reports.csv \
        dataset.id_column=uid dataset.text_columns=[indication,comparison,findings,impression] \
        stages.parse.labeled=findings_and_impression

Which sections count: the gold labels describe the findings and impression (MeSH coding of the
whole exam), so the run sets ``stages.parse.labeled=findings_and_impression``: indication and
comparison never count (an indication saying "rule out pneumonia" is not a finding).

Gold mapping, CXR14 -> CheXpert (the 8 findings both vocabularies have):
    Atelectasis -> Atelectasis, Cardiomegaly -> Cardiomegaly, Consolidation -> Consolidation,
    Edema -> Edema, Effusion -> Pleural Effusion, Pneumonia -> Pneumonia,
    Pneumothorax -> Pneumothorax, Mass or Nodule -> Lung Lesion.
Gold has no uncertain class, so each figure is given under both policies: uncertain (-1) counted
positive, and uncertain counted negative. The hard-negative false-positive rate is over the
(report, finding) pairs whose finding is mentioned in a counted section but is 0 in gold: the share
we label positive (the pairs a keyword matcher gets wrong).

The naive design-card pipeline is run for comparison: spaCy blank + an EntityRuler fed the CheXpert
labeler's mention phrases (read at run time from shared/data) + negspacy with its default
``en_clinical`` termset, over the same findings+impression text.
"""

from __future__ import annotations

import csv
import math
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import print_figures  # noqa: E402
from _naive import build_naive_nlp, naive_labels  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from pipeline.core.io import read_dataset  # noqa: E402
from pipeline.text.nlp import load_engine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("indication", "comparison", "findings", "impression")
GOLD_MAP: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("Atelectasis",),
    "Cardiomegaly": ("Cardiomegaly",),
    "Consolidation": ("Consolidation",),
    "Edema": ("Edema",),
    "Pleural Effusion": ("Effusion",),
    "Pneumonia": ("Pneumonia",),
    "Pneumothorax": ("Pneumothorax",),
    "Lung Lesion": ("Mass", "Nodule"),
}
LABELED = ("findings", "impression")


def load_openi(data: Path, limit: int = 0) -> tuple[list[dict], dict[str, dict[str, int]]]:
    """Open-i reports as dicts (report_id, text, sections) and gold labels by report_id."""
    reports = []
    with (data / "openi" / "reports.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            parts, sections, pos = [], [], 0
            for col in COLUMNS:
                body = (row.get(col) or "").strip()
                if not body:
                    continue
                head = f"{col.upper()}: "
                if parts:
                    pos += 2
                start = pos + len(head)
                parts.append(head + body)
                sections.append({"name": col, "start": start, "end": start + len(body)})
                pos = start + len(body)
            reports.append(
                {
                    "report_id": row["uid"],
                    "text": "\n\n".join(parts),
                    "sections": sections,
                    "mesh": row.get("MeSH") or "",
                }
            )
            if limit and len(reports) >= limit:
                break
    gold: dict[str, dict[str, int]] = {}
    with (data / "openi" / "labels_cxr14.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            gold[row["filename"].removeprefix("CXR")] = {k: int(v) for k, v in row.items() if k != "filename"}
    return reports, gold


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else float("nan")
    r = tp / (tp + fn) if tp + fn else float("nan")
    f = 2 * p * r / (p + r) if tp and p + r else 0.0
    return p, r, f


def score(
    pred: dict[str, dict[str, float | None]], gold: dict[str, dict[str, int]], uncertain_positive: bool
) -> dict[str, tuple[float, float, float]]:
    out = {}
    for obs, cols in GOLD_MAP.items():
        tp = fp = fn = 0
        for rid, labels in pred.items():
            value = labels.get(obs)
            yes = value == 1.0 or (uncertain_positive and value == -1.0)
            truth = any(gold[rid][c] for c in cols)
            tp += yes and truth
            fp += yes and not truth
            fn += truth and not yes
        out[obs] = prf(tp, fp, fn)
    return out


def macro(scores: dict[str, tuple[float, float, float]]) -> float:
    return sum(s[2] for s in scores.values()) / len(scores)


def hard_negative_fp(mentions: pa.Table, pred, gold, uncertain_positive: bool) -> tuple[int, int]:
    """(positives among mentioned-but-gold-0 pairs, number of such pairs)."""
    mentioned: set[tuple[str, str]] = set()
    for rid, obs, counted in zip(
        *(mentions.column(c).to_pylist() for c in ("report_id", "observation", "in_labeled_section")),
        strict=True,
    ):
        if counted and obs in GOLD_MAP:
            mentioned.add((rid, obs))
    pairs = [(rid, obs) for rid, obs in mentioned if not any(gold[rid][c] for c in GOLD_MAP[obs])]
    wrong = 0
    for rid, obs in pairs:
        value = pred[rid].get(obs)
        wrong += value == 1.0 or (uncertain_positive and value == -1.0)
    return wrong, len(pairs)


def naive_pipeline(data: Path, reports: list[dict]) -> tuple[dict[str, dict[str, float | None]], float]:
    """The design-card baseline (bench/_naive.py) over the same findings + impression text."""
    nlp = build_naive_nlp(data)
    texts = [
        "\n".join(r["text"][s["start"] : s["end"]] for s in r["sections"] if s["name"] in LABELED)
        for r in reports
    ]
    start = time.perf_counter()
    labels = naive_labels(nlp, texts)
    return {r["report_id"]: lab for r, lab in zip(reports, labels, strict=True)}, time.perf_counter() - start


def print_scores(title: str, rows: list[tuple[str, dict]]) -> None:
    table = Table(title=title)
    table.add_column("finding")
    for name, _ in rows:
        for m in ("P", "R", "F1"):
            table.add_column(f"{name} {m}", justify="right")
    for obs in GOLD_MAP:
        cells = []
        for _, scores in rows:
            cells.extend("-" if math.isnan(v) else f"{v:.3f}" for v in scores[obs])
        table.add_row(obs + (" (Mass|Nodule)" if obs == "Lung Lesion" else ""), *cells)
    cells = []
    for _, scores in rows:
        cells.extend(["", "", f"{macro(scores):.3f}"])
    table.add_row("macro", *cells)
    Console(width=160).print(table)


def no_finding_vs_normal(
    pred: dict[str, dict], gold: dict[str, dict[str, int]]
) -> tuple[float, float, float]:
    """Our No Finding (1.0) against Open-i's `normal` code (MeSH "normal")."""
    tp = fp = fn = 0
    for rid, labels in pred.items():
        yes = labels.get("No Finding") == 1.0
        truth = bool(gold[rid]["normal"])
        tp += yes and truth
        fp += yes and not truth
        fn += truth and not yes
    return prf(tp, fp, fn)


def _sentence_texts(sentences: pa.Table) -> dict[tuple[str, int], str]:
    cols = (sentences.column(c).to_pylist() for c in ("report_id", "sentence_idx", "text"))
    return {(rid, idx): text for rid, idx, text in zip(*cols, strict=True)}


def _mentions_by_report(mentions: pa.Table) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    names = (
        "report_id",
        "sentence_idx",
        "finding",
        "observation",
        "status",
        "cue",
        "rule",
        "in_labeled_section",
    )
    for row in zip(*(mentions.column(c).to_pylist() for c in names), strict=True):
        m = dict(zip(names, row, strict=True))
        out.setdefault(m["report_id"], []).append(m)
    return out


def print_errors(
    n: int,
    reports: list[dict],
    pred: dict[str, dict],
    gold: dict[str, dict[str, int]],
    mentions: pa.Table,
    sentences: pa.Table,
) -> None:
    """Up to ``n`` false positives and false negatives per finding (uncertain counted negative).

    A false positive shows the deciding mentions (``labels.provenance``); a false negative shows
    every counted mention of the observation (none: the labeled text, to spot a missing synonym).
    """
    texts = _sentence_texts(sentences)
    by_report = _mentions_by_report(mentions)
    by_id = {r["report_id"]: r for r in reports}
    console = Console(width=160, highlight=False, soft_wrap=True)

    def gold_row(rid: str) -> str:
        ones = [k for k, v in gold[rid].items() if v]
        return f"gold: {', '.join(ones) or '-'} | MeSH: {by_id[rid]['mesh']}"

    def show(m: dict) -> str:
        sentence = texts.get((m["report_id"], m["sentence_idx"]), "?")
        return f"    [{m['status']}] {m['finding']} cue={m['cue']!r} rule={m['rule']} :: {sentence!r}"

    for obs, cols in GOLD_MAP.items():
        fps, fns = [], []
        for r in reports:
            rid = r["report_id"]
            yes = pred[rid].get(obs) == 1.0
            truth = any(gold[rid][c] for c in cols)
            if yes and not truth:
                fps.append(rid)
            elif truth and not yes:
                fns.append(rid)
        console.rule(f"{obs}: {len(fps)} false positives, {len(fns)} false negatives")
        for kind, rids in (("FP", fps), ("FN", fns)):
            for rid in rids[:n]:
                console.print(f"{kind} {rid}  ours={pred[rid].get(obs)}  {gold_row(rid)}")
                if kind == "FP":
                    deciding = [p for p in pred[rid].get("provenance") or [] if p["observation"] == obs]
                    shown = [
                        m
                        for m in by_report.get(rid, [])
                        if m["in_labeled_section"]
                        and m["observation"] == obs
                        and any(
                            p["sentence_idx"] == m["sentence_idx"]
                            and p["finding"] == m["finding"]
                            and p["status"] == m["status"]
                            for p in deciding
                        )
                    ]
                else:
                    shown = [
                        m
                        for m in by_report.get(rid, [])
                        if m["in_labeled_section"] and m["observation"] == obs
                    ]
                for m in shown:
                    console.print(show(m))
                if not shown:
                    r = by_id[rid]
                    body = " / ".join(
                        r["text"][s["start"] : s["end"]] for s in r["sections"] if s["name"] in LABELED
                    )
                    console.print(f"    (no counted mention) :: {body!r}")


def run_labels_dag(data: Path, out: Path, workers: int) -> dict[str, float]:
    """Run dag=labels on Open-i into ``out``; returns wall seconds per stage."""
    from pipeline.core.config import compose_run
    from pipeline.core.dag import load_dag
    from pipeline.core.runner import Runner, dask_client

    cfg = compose_run(
        [
            "dag=labels",
            "dataset=table",
            f"dataset.path={data / 'openi' / 'reports.csv'}",
            "dataset.id_column=uid",
            "dataset.text_columns=[indication,comparison,findings,impression]",
            "stages.parse.labeled=findings_and_impression",
            f"out={out}",
            f"cluster.n_workers={workers}",
            "stages.ingest.part_size=700",
        ]
    )
    dag = load_dag("labels")
    with dask_client(cfg.cluster) as client:
        client.run(
            lambda: load_engine() and None
        )  # load once per worker (not a per-report cost); return nothing
        reports = Runner(cfg.out, client).run_dag(dag, {s.name: cfg.stage_config(s.name) for s in dag.stages})
    return {r.stage: r.seconds for r in reports}


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    data = Path(args.get("data", REPO.parent / "shared" / "data"))
    workers = int(args.get("workers", 2))
    reports, gold = load_openi(data, int(args.get("limit", 0)))

    with tempfile.TemporaryDirectory(prefix="openi-") as tmp:
        seconds = run_labels_dag(data, Path(tmp), workers)
        labels = read_dataset(tmp, "labels")
        mentions = read_dataset(tmp, "mentions")
        sentences = read_dataset(tmp, "sentences") if int(args.get("errors", 0)) else None

    pred = {row["report_id"]: row for row in labels.to_pylist()}
    for r in reports:
        pred.setdefault(r["report_id"], {})  # rows with no text (rejected at ingest) predict blank
    pos = score(pred, gold, uncertain_positive=True)
    neg = score(pred, gold, uncertain_positive=False)
    print_scores(
        f"Open-i, {len(reports)} reports: dag=labels vs gold CXR14", [("unc→pos", pos), ("unc→neg", neg)]
    )
    hn_pos = hard_negative_fp(mentions, pred, gold, True)
    hn_neg = hard_negative_fp(mentions, pred, gold, False)
    text_seconds = seconds["parse"] + seconds["extract"]
    nf = no_finding_vs_normal(pred, gold)
    figures = [
        ("macro-F1 over the 8 (uncertain → positive)", f"{macro(pos):.3f}"),
        ("macro-F1 over the 8 (uncertain → negative)", f"{macro(neg):.3f}"),
        (
            "min F1 (uncertain → positive / negative)",
            f"{min(s[2] for s in pos.values()):.3f} / {min(s[2] for s in neg.values()):.3f}",
        ),
        (
            "hard-negative FP rate (uncertain → positive)",
            f"{hn_pos[0]}/{hn_pos[1]} = {hn_pos[0] / max(hn_pos[1], 1):.2%}",
        ),
        (
            "hard-negative FP rate (uncertain → negative)",
            f"{hn_neg[0]}/{hn_neg[1]} = {hn_neg[0] / max(hn_neg[1], 1):.2%}",
        ),
        ("No Finding vs Open-i 'normal' (P / R / F1)", " / ".join(f"{v:.3f}" for v in nf)),
        (
            "stage seconds (ingest / parse / extract)",
            f"{seconds['ingest']:.2f} / {seconds['parse']:.2f} / {seconds['extract']:.2f}",
        ),
        (
            f"parse + extract (reports/s, {workers} workers, incl. scheduling)",
            f"{labels.num_rows / text_seconds:,.0f}",
        ),
        ("mentions", f"{mentions.num_rows:,}"),
    ]
    if args.get("naive", "true") != "false":
        naive_pred, naive_s = naive_pipeline(data, reports)
        naive_scores = score(naive_pred, gold, uncertain_positive=True)
        figures += [
            ("naive design-card pipeline macro-F1", f"{macro(naive_scores):.3f}"),
            ("naive design-card pipeline (reports/s, 1 core)", f"{len(reports) / naive_s:,.0f}"),
        ]
    print_figures("Open-i figures", figures)
    if sentences is not None:
        print_errors(int(args["errors"]), reports, pred, gold, mentions, sentences)


if __name__ == "__main__":
    main(sys.argv[1:])
