"""The runner on a real LocalCluster: accounting, manifests, fingerprint skipping, resume."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from toy_stages import ToySourceConfig, ToySplitConfig

from pipeline.core.dag import build_dag
from pipeline.core.errors import PipelineError
from pipeline.core.io import read_dataset
from pipeline.core.registry import CONTENT, get_stage
from pipeline.core.runner import Runner, content_digest

DAG = ["toy_source", "toy_split"]


def run(out: Path, client, split: ToySplitConfig | None = None, force: bool = False, n_reports: int = 50):
    runner = Runner(str(out), client, force=force)
    dag = build_dag("toy", DAG)
    return runner.run_dag(
        dag, {"toy_source": ToySourceConfig(n_reports=n_reports), "toy_split": split or ToySplitConfig()}
    )


def test_accounting_and_manifests(tmp_path, dask_client):
    source, split = run(tmp_path, dask_client)
    assert source.status == "ran" and source.parts == 5
    # Rows 12, 25, 38 are unreadable (i % 13 == 12): rejected by the source.
    assert (source.rows_in, source.rows_out, source.rejected) == (50, 47, 3)
    assert split.rows_in == 47 and split.rows_in == split.rows_out + split.rejected
    assert split.rejected == len([i for i in range(50) if i % 7 == 0 and i % 13 != 12])
    manifest = json.loads((tmp_path / "sections" / "_manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == split.rows_out
    assert manifest["stage_rows"] == {
        "rows_in": 47,
        "rows_out": split.rows_out,
        "rows_rejected": split.rejected,
    }
    assert manifest["schema_version"] == 1 and "pyarrow" in manifest["packages"]
    rejects = read_dataset(str(tmp_path), "rejects")
    assert sorted(set(rejects["stage"].to_pylist())) == ["toy_source", "toy_split"]
    assert rejects.num_rows == source.rejected + split.rejected
    rej_manifest = json.loads((tmp_path / "rejects" / "_manifest.json").read_text())
    assert rej_manifest["rows"] == rejects.num_rows
    for path in (tmp_path / "sections").glob("part-*.parquet"):
        assert pq.read_schema(path).metadata[b"clip2clinic.schema"] == b"sections"


def test_part_markers_split_their_seconds_by_phase(tmp_path, dask_client):
    run(tmp_path, dask_client)
    state = tmp_path / "_state"
    marker = json.loads((state / "toy_split" / "part-00000.json").read_text())
    assert set(marker["phases"]) == {"read", "compute", "check", "write"}
    assert sum(marker["phases"].values()) <= marker["seconds"] + 1e-3
    assert marker["worker_peak_rss_mib"] > 10  # a Python process with pyarrow loaded
    source = json.loads((state / "toy_source" / "part-00000.json").read_text())
    assert set(source["phases"]) == {"compute", "check", "write"}  # a source part reads as it computes
    timings = json.loads((state / "toy_split" / "_stage.json").read_text())["timings"]
    parts = [json.loads(p.read_text()) for p in (state / "toy_split").glob("part-*.json")]
    assert timings["part_phase_seconds"]["compute"] == pytest.approx(
        sum(p["phases"]["compute"] for p in parts), abs=1e-2
    )
    assert timings["worker_peak_rss_mib"] == max(p["worker_peak_rss_mib"] for p in parts)


def test_unchanged_fingerprint_skips_and_changes_rerun(tmp_path, dask_client):
    run(tmp_path, dask_client)
    mtime = (tmp_path / "sections" / "part-00000.parquet").stat().st_mtime_ns
    again = run(tmp_path, dask_client)
    assert [r.status for r in again] == ["skipped", "skipped"]
    assert (tmp_path / "sections" / "part-00000.parquet").stat().st_mtime_ns == mtime
    changed = run(tmp_path, dask_client, split=ToySplitConfig(suffix="!"))
    assert [r.status for r in changed] == ["skipped", "ran"]
    assert all(t.endswith("!") for t in read_dataset(str(tmp_path), "sections")["text"].to_pylist())
    forced = run(tmp_path, dask_client, split=ToySplitConfig(suffix="!"), force=True)
    assert [r.status for r in forced] == ["ran", "ran"]


def test_fewer_parts_removes_stale_files(tmp_path, dask_client):
    run(tmp_path, dask_client, n_reports=50)
    run(tmp_path, dask_client, n_reports=20)
    assert len(list((tmp_path / "sections").glob("part-*.parquet"))) == 2
    assert read_dataset(str(tmp_path), "reports").num_rows == 19


def test_interrupted_stage_resumes_to_the_same_output(tmp_path, dask_client):
    flag = tmp_path / "crash"
    flag.write_text("x")
    crashing = ToySplitConfig(fail_if_exists=str(flag))
    with pytest.raises(PipelineError) as err:
        run(tmp_path / "a", dask_client, split=crashing)
    assert err.value.code == "E_PART_FAILED" and "resume" in err.value.message
    assert not (tmp_path / "a" / "sections" / "_manifest.json").exists()  # nothing marked complete
    done = sorted(p.name for p in (tmp_path / "a" / "_state" / "toy_split").glob("part-*.json"))
    assert len(done) == 4 and "part-00001.json" not in done
    mtimes = {p: (tmp_path / "a" / "_state" / "toy_split" / p).stat().st_mtime_ns for p in done}
    flag.unlink()
    source, split = run(tmp_path / "a", dask_client, split=crashing)
    assert source.status == "skipped"
    assert split.status == "resumed" and split.parts_done_before == 4
    for p, mtime in mtimes.items():  # finished parts were not redone
        assert (tmp_path / "a" / "_state" / "toy_split" / p).stat().st_mtime_ns == mtime
    run(tmp_path / "b", dask_client, split=crashing)
    for dataset in ("sections", "rejects"):
        a = read_dataset(str(tmp_path / "a"), dataset).sort_by(
            [("row_id" if dataset == "rejects" else "report_id", "ascending")]
        )
        b = read_dataset(str(tmp_path / "b"), dataset).sort_by(
            [("row_id" if dataset == "rejects" else "report_id", "ascending")]
        )
        assert a.equals(b)


def test_stage_that_loses_rows_is_refused(tmp_path, dask_client):
    runner = Runner(str(tmp_path), dask_client)
    runner.run_stage(get_stage("toy_source"), ToySourceConfig(n_reports=10))
    with pytest.raises(PipelineError) as err:
        runner.run_stage(get_stage("toy_lossy"), ToySplitConfig())
    assert err.value.code == "E_ACCOUNTING"
    assert not (tmp_path / "sentences" / "_manifest.json").exists()


def test_single_stage_without_inputs_names_them(tmp_path, dask_client):
    runner = Runner(str(tmp_path), dask_client)
    with pytest.raises(PipelineError, match="needs dataset 'reports'") as err:
        runner.run_stage(get_stage("toy_split"), ToySplitConfig())
    assert err.value.code == "E_INPUT_MISSING"


def test_optional_input_is_read_when_present_and_joins_the_fingerprint(tmp_path, dask_client):
    assert [s.name for s in build_dag("x", ["toy_join", "toy_source"]).stages] == ["toy_source", "toy_join"]
    # A DAG that also writes the optional input runs its producer first.
    order = [s.name for s in build_dag("x", ["toy_join", "toy_split", "toy_source"]).stages]
    assert order.index("toy_split") < order.index("toy_join")
    runner = Runner(str(tmp_path), dask_client)
    runner.run_stage(get_stage("toy_source"), ToySourceConfig(n_reports=20))
    first = runner.run_stage(get_stage("toy_join"), ToySplitConfig())
    statuses = set(read_dataset(str(tmp_path), "findings")["status"].to_pylist())
    assert statuses == {"absent"}  # no sections yet
    runner.run_stage(get_stage("toy_split"), ToySplitConfig())
    second = runner.run_stage(get_stage("toy_join"), ToySplitConfig())
    assert second.status == "ran" and second.fingerprint != first.fingerprint
    assert "present" in set(read_dataset(str(tmp_path), "findings")["status"].to_pylist())
    assert runner.run_stage(get_stage("toy_join"), ToySplitConfig()).status == "skipped"


def test_files_named_by_content_fields_join_the_fingerprint(tmp_path):
    @dataclass(frozen=True)
    class WithFiles:
        lexicon_dir: str | None = field(default=None, metadata={CONTENT: True})
        root: str = ""  # a plain path: never read

    folder = tmp_path / "lexicon"
    folder.mkdir()
    (folder / "a.yaml").write_text("one")
    config = WithFiles(lexicon_dir=str(folder), root=str(tmp_path))
    first = content_digest(config)
    assert set(first) == {"lexicon_dir"} and content_digest(config) == first
    (folder / "a.yaml").write_text("two")
    assert content_digest(config) != first
    assert content_digest(WithFiles()) == {}
    missing = content_digest(WithFiles(lexicon_dir=str(tmp_path / "nope.json")))
    assert set(missing) == {"lexicon_dir"}
