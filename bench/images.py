"""Throughput of the images stage: full-size DICOMs and MIMIC-CXR-JPG-like JPGs on Dask workers.

    python bench/images.py [sizes=1000] [workers=2] [part_size=500] [pool=16] [kinds=dcm,jpg]
    python bench/images.py sizes=1000,5000,20000     # the scaling figures (about 15 minutes)

For each kind and corpus size, images_meta parts are written straight into a run folder (rows
point at a pool of ``pool`` distinct files, so the dump fits on any disk; the files are then in
the page cache, so the figure is decode + window + resize + PNG, not the disk), and the images
stage runs through the real runner. DICOMs: 3,000 x 2,500, 12 bits stored in 16, uncompressed,
from pipeline.demo.dicom. JPGs: the same pictures as 8-bit quality-95 JPEGs (MIMIC-CXR-JPG's
setting). Prints images/s and each worker's peak RSS per size (flat in the size = bounded memory).
"""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from _common import mib, print_figures, timed, worker_peak_rss  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.core.io import Store  # noqa: E402
from pipeline.core.registry import get_stage  # noqa: E402
from pipeline.core.runner import ClusterConfig, Runner, dask_client  # noqa: E402
from pipeline.core.schemas import load_schema  # noqa: E402
from pipeline.demo.dicom import DicomSpec, dicom_bytes, pixel_array  # noqa: E402
from pipeline.images.config import ImagesConfig  # noqa: E402
from pipeline.ingest.config import DatasetConfig  # noqa: E402


def make_pool(root: Path, kind: str, pool: int) -> list[str]:
    """``pool`` distinct full-size files of ``kind`` under root; their relative paths."""
    paths = []
    for i in range(pool):
        spec = DicomSpec(
            seed=0, dicom_id=f"bench-{i}", subject_id=f"1{i:07d}", study_id=f"5{i:07d}", image_number=1,
            rows=3000, columns=2500, view="PA", modality="DX", photometric="MONOCHROME2", bits_stored=12,
            study_date="21100101", study_time="101010.000", procedure="CHEST (PA AND LAT)",
        )  # fmt: skip
        rel = f"files/p1{i % 10}/p1{i:07d}/s5{i:07d}/bench-{i}.{kind}"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "dcm":
            path.write_bytes(dicom_bytes(spec))
        else:
            buffer = io.BytesIO()
            Image.fromarray((pixel_array(spec) >> 4).astype(np.uint8)).save(buffer, format="JPEG", quality=95)
            path.write_bytes(buffer.getvalue())
        paths.append(rel)
    return paths


def write_meta(out: Path, paths: list[str], n: int, part_size: int, kind: str) -> None:
    store = Store(str(out))
    schema = load_schema("images_meta").arrow()
    for index, start in enumerate(range(0, n, part_size)):
        ids = range(start, min(n, start + part_size))
        rows = [
            {
                **{c: None for c in schema.names},
                "image_id": f"img{i:07d}",
                "path": paths[i % len(paths)],
                "file_format": kind,
                "view_position": "PA",
                "header_source": "file",
            }
            for i in ids
        ]
        store.write_table(pa.Table.from_pylist(rows, schema=schema), "images_meta", index)
    store.write_json(store.manifest_path("images_meta"), {"complete": True, "fingerprint": f"bench-{n}"})


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    sizes = [int(s) for s in args.get("sizes", "1000").split(",")]
    workers = int(args.get("workers", 2))
    part_size = int(args.get("part_size", 500))
    pool = int(args.get("pool", 16))
    kinds = args.get("kinds", "dcm,jpg").split(",")
    work = Path(args.get("dir") or tempfile.mkdtemp(prefix="bench-images-"))
    rows: list[tuple[str, str]] = []
    try:
        for kind in kinds:
            root = work / f"dump-{kind}"
            with timed() as gen:
                paths = make_pool(root, kind, pool)
            size = sum((root / p).stat().st_size for p in paths) / len(paths)
            rows.append(
                (f"{kind}: pool of {pool} files generated", f"{gen['seconds']:.1f} s, {mib(size)} each")
            )
            config = ImagesConfig(dataset=DatasetConfig(name="mimic_cxr", root=str(root)))
            for n in sizes:
                # a fresh cluster per size: worker peak RSS is then that run's own
                with dask_client(ClusterConfig(n_workers=workers)) as client:
                    out = work / f"run-{kind}-{n}"
                    write_meta(out, paths, n, part_size, kind)
                    with timed() as run:
                        report = Runner(str(out), client).run_stage(get_stage("images"), config)
                    peak = worker_peak_rss(client)
                png = sum(p.stat().st_size for p in (out / "images").glob("*.parquet"))
                rows += [
                    (
                        f"{kind} n={n}: images/s on {workers} workers",
                        f"{report.rows_out / run['seconds']:,.1f}",
                    ),
                    (f"{kind} n={n}: rejected", str(report.rejected)),
                    (f"{kind} n={n}: worker peak RSS (max)", mib(max(peak.values()))),
                    (
                        f"{kind} n={n}: output bytes per image",
                        f"{png / max(report.rows_out, 1) / 1024:,.0f} KiB",
                    ),
                ]
                shutil.rmtree(out, ignore_errors=True)
        print_figures(f"images stage (part_size={part_size})", rows)
    finally:
        if "dir" not in args:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
