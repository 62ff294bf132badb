"""Reruns redo only what changed (per-part fingerprints), part sizes follow the input and the
cluster, and a run with nothing to do starts no cluster."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from pipeline.core.config import compose_run
from pipeline.core.dag import load_dag
from pipeline.core.errors import PipelineError
from pipeline.core.io import read_dataset
from pipeline.core.registry import AUTO_PART_MAX, AUTO_PART_MIN, auto_part_size, get_stage
from pipeline.core.runner import Runner


def write_table(path: Path, n: int, edit: int | None = None) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["uid", "report"])
        for i in range(n):
            finding = "Small left pleural effusion." if i % 3 == 0 else "No pleural effusion."
            if i == edit:  # as long as the sentence it replaces
                finding = f"{'Right pneumothorax.':<{len(finding)}}"
            writer.writerow([f"r{i:04d}", f"FINDINGS: Heart size is normal.\nIMPRESSION: {finding}"])


def labels_run(out: Path, table: Path, client, *overrides: str):
    cfg = compose_run(
        [
            "dataset=table",
            f"dataset.path={table}",
            "dataset.id_column=uid",
            "dataset.text_column=report",
            f"out={out}",
            *overrides,
        ]
    )
    dag = load_dag("labels")
    runner = Runner(cfg.out, client)
    return {r.stage: r for r in runner.run_dag(dag, {s.name: cfg.stage_config(s.name) for s in dag.stages})}


def part_mtimes(out: Path, dataset: str) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted((out / dataset).glob("part-*.parquet"))}


def no_cluster():
    raise AssertionError("a run with nothing to do must not start a cluster")


def test_one_row_edit_reruns_its_part_and_descendants_only(tmp_path: Path, dask_client) -> None:
    table, out = tmp_path / "reports.csv", tmp_path / "run"
    write_table(table, 300)
    first = labels_run(out, table, dask_client, "stages.ingest.part_size=100")
    assert first["ingest"].parts == 3
    before = {d: part_mtimes(out, d) for d in ("reports", "sentences", "labels")}

    # The same size and modification time: only the bytes tell that row 151 changed.
    stat = table.stat()
    write_table(table, 300, edit=151)
    os.utime(table, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert table.stat().st_size == stat.st_size
    again = labels_run(out, table, dask_client, "stages.ingest.part_size=100")
    for stage in ("ingest", "parse", "extract"):
        assert (again[stage].status, again[stage].parts_done_before) == ("resumed", 2), stage
    assert again["agreement"].status == "ran"  # a corpus stage follows every part
    for dataset, mtimes in before.items():
        now = part_mtimes(out, dataset)
        assert [name for name in mtimes if now[name] != mtimes[name]] == ["part-00001.parquet"], dataset
    assert not list((out / "_state" / "ingest").glob("staging*"))

    # The rerun ends where a fresh run on the edited table does.
    fresh = tmp_path / "fresh"
    labels_run(fresh, table, dask_client, "stages.ingest.part_size=100")
    for dataset in ("reports", "mentions", "labels", "rejects"):
        assert read_dataset(str(out), dataset).equals(read_dataset(str(fresh), dataset)), dataset
    labels = read_dataset(str(out), "labels").to_pylist()
    assert next(r for r in labels if r["report_id"] == "r0151")["Pneumothorax"] == 1.0


def test_touched_file_reruns_nothing_and_starts_no_cluster(tmp_path: Path, dask_client) -> None:
    table, out = tmp_path / "reports.csv", tmp_path / "run"
    write_table(table, 120)
    labels_run(out, table, dask_client)
    os.utime(table)  # touched, the same bytes
    reports = labels_run(out, table, no_cluster)
    assert [r.status for r in reports.values()] == ["skipped"] * len(load_dag("labels").stages)
    assert not list((out / "_state" / "ingest").glob("staging*"))


def test_an_unchanged_tree_is_not_listed_again_and_a_new_study_is_seen(tmp_path: Path, dask_client) -> None:
    out = tmp_path / "run"
    cfg = compose_run([f"dataset.root={tmp_path / 'demo'}", "dataset.n_reports=30", f"out={out}"])
    ingest = get_stage("ingest"), cfg.stage_config("ingest")
    first = Runner(cfg.out, dask_client).run_stage(*ingest)
    assert first.status == "ran"
    # The folders' times and the CSVs' bytes are the same: skipped without a listing or a cluster.
    assert Runner(cfg.out, no_cluster).run_stage(*ingest).status == "skipped"
    assert not list((out / "_state" / "ingest").glob("staging*"))
    new = tmp_path / "demo" / "files" / "p19" / "p19999999" / "s59999999.txt"
    new.parent.mkdir(parents=True)
    new.write_text("FINDINGS: No pleural effusion.\nIMPRESSION: Normal chest.")
    again = Runner(cfg.out, dask_client).run_stage(*ingest)
    assert again.status in ("ran", "resumed") and again.rows_in == first.rows_in + 1


def test_part_sizes_follow_the_input_and_the_cluster(tmp_path: Path, dask_client) -> None:
    assert auto_part_size(10, 2) == AUTO_PART_MIN
    assert auto_part_size(77_000, 2) == AUTO_PART_MAX  # 39 parts: about 20 a worker
    assert auto_part_size(227_835, 64) == 890  # a big cluster: four parts a worker
    table, out = tmp_path / "reports.csv", tmp_path / "run"
    write_table(table, 1000)
    # No part size set: 1,000 rows on the test cluster's 2 worker threads give 8 parts of 125.
    report = labels_run(out, table, dask_client)["ingest"]
    assert report.parts == 8 and report.rows_in == 1000


def test_agreement_without_official_labels_needs_no_cluster(tmp_path: Path, dask_client) -> None:
    table, out = tmp_path / "reports.csv", tmp_path / "run"
    write_table(table, 50)
    labels_run(out, table, dask_client)
    report = Runner(str(out), no_cluster, force=True).run_stage(
        get_stage("agreement"), get_stage("agreement").config()
    )
    assert report.status == "ran" and report.rows_in == 50
    assert read_dataset(str(out), "label_agreement").num_rows == 0


def test_a_table_without_rows_is_a_structural_error(tmp_path: Path, dask_client) -> None:
    table = tmp_path / "reports.csv"
    table.write_text("uid,report\n")
    with pytest.raises(PipelineError) as err:
        labels_run(tmp_path / "run", table, dask_client)
    assert err.value.code == "E_DUMP_EMPTY"
    assert not list((tmp_path / "run" / "_state" / "ingest").glob("staging*"))


def test_manifest_counts_rows_read_as_windows_1252(tmp_path: Path, dask_client) -> None:
    table = tmp_path / "reports.csv"
    table.write_bytes(
        b"uid,report\n"
        b"a,FINDINGS: Caf\xe9 normal. No effusion.\n"  # Windows-1252, not UTF-8
        b"b,FINDINGS: No effusion.\n"
    )
    cfg = compose_run(
        ["dataset=table", f"dataset.path={table}", "dataset.id_column=uid", "dataset.text_column=report"]
    )
    out = tmp_path / "run"
    Runner(str(out), dask_client).run_stage(get_stage("ingest"), cfg.stage_config("ingest"))
    manifest = json.loads((out / "reports" / "_manifest.json").read_text())
    assert manifest["notes"] == {"rows_read_as_cp1252": 1} and manifest["rows"] == 2
