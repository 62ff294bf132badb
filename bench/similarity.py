"""Exact top-k clinical neighbours at MIMIC-CXR scale: scaling, memory, and the naive dense baseline.

    python bench/similarity.py [n_reports=227835] [workers=2] [k=32] [scales=25000,50000,100000]
                               [naive=20000] [sample=300] [within_split=true] [checks=true]
                               [dir=...] [keep=false]

Vectors are synthetic but shaped like MIMIC-CXR (see :func:`generate`): a prevalence-weighted
sampler over the 14 CheXpert observations (the CheXpert labeler's MIMIC-CXR rates) and their fine
findings, a third of the reports normal, and denials drawn from a few Zipf-weighted templates as
radiologists write them, so many normal reports are identical. They go through the real encoder
(pipeline/similarity/encoding.py) and the real stage on a LocalCluster, one fresh cluster per
scale so each worker's peak RSS is that run's.

Prints, per scale: the stage's wall time, the peak RSS of the client plus every cluster process,
the workers' peak RSS, and the distinct vectors (groups) the kernel searches. Then, in the same
run: the naive dense numpy top-k (every score, a full stable sort per row, one process) against
the stage on a subset (speed ratio, identical output required), and the full-scale output
against brute force for a random sample of reports (identical output required).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ["CLIP2CLINIC_STAGE_MODULES"] = "pipeline.similarity.stage"  # workers inherit it

from _common import PeakRSS, mib, print_figures, timed, worker_peak_rss  # noqa: E402

from pipeline.core.io import Store, read_dataset  # noqa: E402
from pipeline.core.registry import get_stage  # noqa: E402
from pipeline.core.runner import ClusterConfig, Runner, dask_client  # noqa: E402
from pipeline.similarity.encoding import (  # noqa: E402
    OBSERVATIONS,
    ClinicalVectorConfig,
    clinical_vectors_table,
    encode,
)
from pipeline.similarity.stage import SimilarityConfig  # noqa: E402
from pipeline.similarity.topk import dense_topk  # noqa: E402

# (observation, P(present), P(uncertain), fine findings with relative frequencies). Rates are the
# CheXpert labeler's on MIMIC-CXR studies, rounded (Johnson et al. 2019, MIMIC-CXR-JPG).
OBSERVATION_RATES = [
    ("Enlarged Cardiomediastinum", 0.035, 0.04, [("enlarged_cardiomediastinum", 1.0)]),
    ("Cardiomegaly", 0.20, 0.03, [("cardiomegaly", 1.0)]),
    ("Lung Lesion", 0.03, 0.006, [("lung_nodule", 0.5), ("lung_mass", 0.2), ("calcified_nodule", 0.1),
                                   ("lung_neoplasm", 0.1), ("metastases", 0.05), ("cavitary_lesion", 0.05)]),
    ("Lung Opacity", 0.23, 0.02, [("opacity", 0.6), ("airspace_disease", 0.1), ("infiltrate", 0.05),
                                   ("interstitial_opacity", 0.1), ("scarring", 0.1), ("peribronchial_thickening", 0.05)]),
    ("Edema", 0.12, 0.06, [("pulmonary_edema", 1.0)]),
    ("Consolidation", 0.05, 0.02, [("consolidation", 1.0)]),
    ("Pneumonia", 0.07, 0.08, [("pneumonia", 1.0)]),
    ("Atelectasis", 0.21, 0.045, [("atelectasis", 1.0)]),
    ("Pneumothorax", 0.045, 0.005, [("pneumothorax", 1.0)]),
    ("Pleural Effusion", 0.25, 0.025, [("pleural_effusion", 1.0)]),
    ("Pleural Other", 0.009, 0.003, [("pleural_thickening", 0.5), ("pleural_scarring", 0.2), ("pleural_plaque", 0.2),
                                      ("fibrosis", 0.1)]),
    ("Fracture", 0.02, 0.002, [("rib_fracture", 0.5), ("fracture", 0.2), ("vertebral_fracture", 0.15),
                                ("clavicle_fracture", 0.1), ("humeral_fracture", 0.05)]),
    ("Support Devices", 0.29, 0.001, [("endotracheal_tube", 0.2), ("enteric_tube", 0.2), ("central_venous_catheter", 0.15),
                                       ("picc", 0.15), ("pacemaker", 0.1), ("sternotomy_wires", 0.1), ("chest_tube", 0.05),
                                       ("support_device", 0.05)]),
]  # fmt: skip
# Fine findings outside the 14 observations, with their prevalence among abnormal reports.
EXTRA_FINDINGS = [
    ("vascular_congestion", 0.06), ("hiatal_hernia", 0.02), ("granuloma", 0.02), ("degenerative_changes", 0.03),
    ("emphysema", 0.03), ("hyperinflation", 0.02), ("low_lung_volumes", 0.06), ("calcification", 0.02),
    ("tortuous_aorta", 0.03), ("aortic_atherosclerosis", 0.02), ("scoliosis", 0.015), ("elevated_hemidiaphragm", 0.02),
    ("heart_failure", 0.02), ("lymphadenopathy", 0.01), ("bronchiectasis", 0.005), ("subcutaneous_emphysema", 0.01),
]  # fmt: skip
# What normal phrasings deny, and how often a template includes each denial.
DENIALS = {
    "pneumothorax": 0.9, "pleural_effusion": 0.9, "consolidation": 0.85, "cardiomegaly": 0.6, "pulmonary_edema": 0.3,
    "opacity": 0.4, "enlarged_cardiomediastinum": 0.4, "fracture": 0.15, "pneumonia": 0.1,
}  # fmt: skip
P_NORMAL = 0.33
SPLITS = (("train", 0.978), ("validate", 0.008), ("test", 0.014))  # MIMIC-CXR's split sizes


def generate(n: int, seed: int = 0) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(labels, findings, reports) tables of ``n`` synthetic reports (see the module docstring)."""
    rng = np.random.default_rng(seed)
    observation_of = {f: o for o, _p, _u, fines in OBSERVATION_RATES for f, _ in fines}

    def templates(count: int, scale: float) -> tuple[list[list[str]], np.ndarray]:
        sets = [[f for f, p in DENIALS.items() if rng.random() < p * scale] for _ in range(count)]
        zipf = 1.0 / np.arange(1, count + 1) ** 1.05
        return sets, zipf / zipf.sum()

    normal_templates, normal_p = templates(60, 1.0)
    abnormal_templates, abnormal_p = templates(300, 0.7)
    ids = [f"s{50_000_000 + i * 7:08d}" for i in rng.permutation(n)]
    labels = {o: np.full(n, np.nan, np.float32) for o in OBSERVATIONS}
    found_rows: list[tuple[int, str, str]] = []
    scale = 1.0 / (1.0 - P_NORMAL)
    rank = {"absent": 1, "uncertain": 2, "present": 3}
    for i in range(n):
        found: dict[str, str] = {}
        if rng.random() < P_NORMAL:
            found.update(dict.fromkeys(normal_templates[rng.choice(60, p=normal_p)], "absent"))
            if rng.random() < 0.25:
                found["normal_study"] = "present"
            if rng.random() < 0.08:
                found[
                    str(rng.choice(["picc", "central_venous_catheter", "sternotomy_wires", "pacemaker"]))
                ] = "present"
        else:
            found.update(dict.fromkeys(abnormal_templates[rng.choice(300, p=abnormal_p)], "absent"))
            for _obs, p_present, p_uncertain, fines in OBSERVATION_RATES:
                u = rng.random()
                if u < (p_present + p_uncertain) * scale:
                    status = "present" if u < p_present * scale else "uncertain"
                    names, weights = zip(*fines, strict=True)
                    p = np.array(weights) / sum(weights)
                    found[names[rng.choice(len(names), p=p)]] = status
                    if len(names) > 1 and rng.random() < 0.15:
                        found[names[rng.choice(len(names), p=p)]] = status
            for finding, p in EXTRA_FINDINGS:
                if rng.random() < p:
                    found[finding] = "present" if rng.random() < 0.85 else "uncertain"
            if all(s == "absent" for s in found.values()):
                found["opacity"] = "present"
        per_observation: dict[str, str] = {}
        for finding, status in found.items():
            obs = observation_of.get(finding)
            if obs and rank[status] > rank.get(per_observation.get(obs, ""), 0):
                per_observation[obs] = status
        for obs, status in per_observation.items():
            labels[obs][i] = {"present": 1.0, "uncertain": -1.0, "absent": 0.0}[status]
        blocking = any(s != "absent" for o, s in per_observation.items() if o != "Support Devices") or any(
            s != "absent" for f, s in found.items() if f not in observation_of and f != "normal_study"
        )
        if not blocking:
            labels["No Finding"][i] = 1.0
        found_rows.extend((i, f, s) for f, s in found.items())
    split_names, split_p = zip(*SPLITS, strict=True)
    splits = rng.choice(len(split_names), n, p=split_p)
    labels_table = pa.table({"report_id": ids, **labels})
    findings = pa.table(
        {
            "report_id": [ids[i] for i, _, _ in found_rows],
            "finding": [f for _, f, _ in found_rows],
            "status": [s for _, _, s in found_rows],
        }
    )
    reports = pa.table({"report_id": ids, "split": [split_names[s] for s in splits]})
    return labels_table, findings, reports


def write_inputs(out: Path, vectors: pa.Table, reports: pa.Table, part_size: int = 2000) -> None:
    """clinical_vectors and reports parts with complete manifests, as the upstream stages write them."""
    store = Store(str(out))
    n = vectors.num_rows
    for index, a in enumerate(range(0, n, part_size)):
        store.write_table(vectors.slice(a, part_size), "clinical_vectors", index)
        part = reports.slice(a, part_size)
        m = part.num_rows
        store.write_table(
            pa.table(
                {
                    "report_id": part["report_id"],
                    "subject_id": pa.nulls(m, pa.string()),
                    "study_id": pa.nulls(m, pa.string()),
                    "split": part["split"],
                    "source": pa.array(["synthetic"] * m),
                    "path": pa.nulls(m, pa.string()),
                    "text": pa.array([""] * m),
                    "sections": pa.nulls(
                        m,
                        pa.list_(
                            pa.struct([("name", pa.string()), ("start", pa.int32()), ("end", pa.int32())])
                        ),
                    ),
                }
            ),
            "reports",
            index,
        )
    for dataset in ("clinical_vectors", "reports"):
        store.write_json(
            store.manifest_path(dataset), {"complete": True, "fingerprint": f"bench-{dataset}-{n}"}
        )


def run_stage(out: Path, config: SimilarityConfig, workers: int) -> dict[str, Any]:
    """Run the similarity stage in a fresh process on a fresh LocalCluster: wall time and peak RSS.

    A separate process keeps the generated corpus out of the measured client's memory.
    """
    command = [sys.executable, __file__, "stage", f"out={out}", f"workers={workers}", f"k={config.k}"]
    command.append(f"within_split={str(config.within_split).lower()}")
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _stage_process(args: dict[str, str]) -> None:
    config = SimilarityConfig(k=int(args["k"]), within_split=args["within_split"] == "true")
    stage = get_stage("similarity")  # imports every stage module (spaCy, torch ...) outside the timing
    with dask_client(ClusterConfig(n_workers=int(args["workers"]))) as client:
        client.run(get_stage, "similarity")  # and so do the workers
        baseline = PeakRSS(children=True)._sample()
        with PeakRSS(children=True) as total_rss, timed() as run:
            report = Runner(args["out"], client, force=True).run_stage(stage, config)
        workers_rss = worker_peak_rss(client)
    figures = {
        "seconds": run["seconds"],
        "baseline_rss": baseline,
        "total_rss": total_rss.peak,
        "worker_rss": max(workers_rss.values()),
        "rows_in": report.rows_in,
        "rows": report.datasets["similarity_topk"],
        "parts": report.parts,
    }
    print(json.dumps(figures))


def stage_triplets(out: Path, ids: pa.Array, only: pa.Array | None = None) -> tuple[np.ndarray, ...]:
    """similarity_topk as (report, neighbor, rank, score, clinical), ids as indices into sorted ``ids``."""
    table = read_dataset(str(out), "similarity_topk")
    if only is not None:
        table = table.filter(pc.is_in(table["report_id"], value_set=only))
    table = table.sort_by([("report_id", "ascending"), ("rank", "ascending")])
    ordered = ids.take(pc.sort_indices(ids))
    return (
        pc.index_in(table["report_id"], value_set=ordered).to_numpy(),
        pc.index_in(table["neighbor_id"], value_set=ordered).to_numpy(),
        table["rank"].to_numpy(),
        table["score"].to_numpy(),
        table["clinical_score"].to_numpy(),
    )


def identical(got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...]) -> bool:
    report, neighbor, rank, score, parts = want
    expected = (report, neighbor, rank, score, parts[0])
    return all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(got, expected, strict=True))


def groups_of(vectors: np.ndarray) -> int:
    return len(np.unique(np.ascontiguousarray(vectors).view(np.dtype((np.void, vectors.shape[1] * 4)))))


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    n = int(args.get("n_reports", 227_835))
    workers = int(args.get("workers", 2))
    k = int(args.get("k", 32))
    scales = sorted({*(int(s) for s in args.get("scales", "25000,50000,100000").split(",") if s), n})
    checks = args.get("checks", "true") == "true"  # brute-force sample, within split, naive baseline
    n_naive = min(n, int(args.get("naive", 20_000)))
    n_sample = int(args.get("sample", 300))
    work = Path(args.get("dir") or tempfile.mkdtemp(prefix="bench-similarity-"))
    config = SimilarityConfig(k=k)
    rows: list[tuple[str, str]] = [
        ("vectors", "synthetic, MIMIC-shaped: prevalence-weighted CheXpert observations + fine findings, "
                    f"{P_NORMAL:.0%} normal from Zipf-weighted denial templates (many identical)"),
    ]  # fmt: skip
    rows.append(("machine load (1, 5, 15 min) at the start", ", ".join(f"{x:.1f}" for x in os.getloadavg())))
    try:
        with timed() as gen:
            labels, findings, reports = generate(n)
            encoded = encode(labels, findings, ClinicalVectorConfig())
            vectors = clinical_vectors_table(encoded, ClinicalVectorConfig())
            x, ids = encoded.vectors, vectors["report_id"].combine_chunks()
            del labels, findings, encoded
        rows.append(("generated and encoded", f"{n:,} reports, d={x.shape[1]}, {gen['seconds']:.1f} s"))
        for size in (*scales, n_naive):
            write_inputs(work / f"n{size}", vectors.slice(0, size), reports.slice(0, size))
        del vectors, reports
        for scale in scales:
            figures = run_stage(work / f"n{scale}", config, workers)
            rows.append(
                (
                    f"top-{k}, {scale:,} reports",
                    f"{figures['seconds']:.1f} s wall, {scale / figures['seconds']:,.0f} reports/s, "
                    f"{groups_of(x[:scale]):,} distinct vectors, {figures['parts']} parts",
                )
            )
            rows.append(
                (
                    f"  peak RSS at {scale:,}",
                    f"{mib(figures['total_rss'])} client + cluster (idle after imports: "
                    f"{mib(figures['baseline_rss'])}), {mib(figures['worker_rss'])} max per worker",
                )
            )
        if not checks:
            print_figures(f"similarity: exact top-{k}, {workers} workers", rows)
            return
        full = work / f"n{n}"
        sample = np.sort(np.random.default_rng(1).choice(n, min(n_sample, n), replace=False))
        ordered = ids.take(pc.sort_indices(ids))
        want = dense_topk(ids, [x], [1.0], k, rows=sample, chunk=256)
        got = stage_triplets(full, ids, only=ordered.take(pa.array(sample)))
        rows.append(
            (
                f"identical to brute force at {n:,}",
                f"{identical(got, want)} ({len(sample)} random reports against all {n:,})",
            )
        )
        if args.get("within_split", "true") == "true":
            figures = run_stage(full, SimilarityConfig(k=k, within_split=True), workers)
            rows.append(
                (
                    f"top-{k} within split, {n:,}",
                    f"{figures['seconds']:.1f} s wall, {mib(figures['total_rss'])} peak RSS",
                )
            )
        subset = work / f"n{n_naive}"
        blocked = run_stage(subset, config, workers)
        with PeakRSS() as naive_rss:
            started = time.perf_counter()
            want = dense_topk(ids[:n_naive], [x[:n_naive]], [1.0], k, chunk=1024)
            naive_seconds = time.perf_counter() - started
        rows.append(
            (
                f"naive dense numpy, {n_naive:,} reports",
                f"{naive_seconds:.1f} s (one process), {mib(naive_rss.peak)} RSS; "
                f"stage {blocked['seconds']:.1f} s: {naive_seconds / blocked['seconds']:.1f}x faster",
            )
        )
        rows.append(
            (
                "  naive extrapolated to the full corpus",
                f"~{naive_seconds * (n / n_naive) ** 2 / 60:,.0f} min (quadratic)",
            )
        )
        rows.append(
            (
                f"identical to naive at {n_naive:,}",
                str(identical(stage_triplets(subset, ids[:n_naive]), want)),
            )
        )
        rows.append(
            ("machine load (1, 5, 15 min) at the end", ", ".join(f"{x:.1f}" for x in os.getloadavg()))
        )
        print_figures(f"similarity: exact top-{k}, {workers} workers", rows)
    finally:
        if args.get("keep", "false") != "true":
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["stage"]:
        _stage_process(dict(a.split("=", 1) for a in sys.argv[2:]))
    else:
        main(sys.argv[1:])
