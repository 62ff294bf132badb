"""DAG files and validation: every structural mistake is caught before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.dag import available_dags, build_dag, load_dag
from pipeline.core.errors import PipelineError


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "dag.yaml"
    path.write_text(text)
    return str(path)


def test_packaged_dags_all_validate():
    names = available_dags()
    assert {"labels", "preprocess", "demo", "train", "full"} <= set(names)
    for name in names:
        dag = load_dag(name)
        assert dag.stages, name
        produced = dag.produced
        for stage in dag.stages:  # every input is written by an earlier stage
            for dataset in stage.inputs:
                if dag.from_run and dataset not in produced:
                    continue  # read from the run folder (checked before running)
                assert dataset in produced
                earlier = [s.name for s in dag.stages[: dag.stages.index(stage)]]
                assert produced[dataset] in earlier


def test_labels_dag_is_ingest_parse_extract():
    assert [s.name for s in load_dag("labels").stages] == ["ingest", "parse", "extract", "agreement"]


def test_unknown_dag_suggests():
    with pytest.raises(PipelineError, match="Did you mean 'labels'") as err:
        load_dag("lables")
    assert err.value.code == "E_DAG_UNKNOWN"


def test_unknown_stage_suggests(tmp_path):
    with pytest.raises(PipelineError, match="Did you mean 'toy_split'") as err:
        load_dag(write(tmp_path, "stages: [toy_source, toy_splt]"))
    assert err.value.code == "E_STAGE_UNKNOWN"


def test_missing_input_is_named(tmp_path):
    with pytest.raises(PipelineError, match="needs 'reports'") as err:
        load_dag(write(tmp_path, "stages: [toy_split]"))
    assert err.value.code == "E_DAG_MISSING_INPUT"


def test_a_from_run_dag_takes_its_missing_inputs_from_the_run(tmp_path):
    dag = load_dag(write(tmp_path, "from_run: true\nstages: [toy_split]"))
    assert dag.from_run and [s.name for s in dag.stages] == ["toy_split"]
    train = load_dag("train")
    assert train.from_run and [s.name for s in train.stages] == ["shards", "train", "evaluate"]
    from pipeline.run import main

    # On a run folder without the shards stage's inputs it stops before any work, naming them.
    assert main(["dag=train", f"out={tmp_path / 'empty'}", "progress=false"]) == 2
    assert not (tmp_path / "empty" / "train").exists()


def test_two_writers_of_one_dataset(monkeypatch):
    from dataclasses import replace

    from pipeline.core import registry

    registry.load_builtin_stages()
    twin = replace(registry.get_stage("toy_source"), name="toy_source_twin")
    monkeypatch.setitem(registry._REGISTRY, "toy_source_twin", twin)
    with pytest.raises(PipelineError, match="written by both") as err:
        build_dag("x", ["toy_source", "toy_source_twin"])
    assert err.value.code == "E_DAG_INVALID"


def test_bad_yaml_and_shape(tmp_path):
    with pytest.raises(PipelineError) as err:
        load_dag(write(tmp_path, "stages: [toy_source\n"))
    assert err.value.code == "E_DAG_INVALID"
    with pytest.raises(PipelineError, match="non-empty"):
        load_dag(write(tmp_path, "name: x\n"))
    with pytest.raises(PipelineError, match="Did you mean 'stages'"):
        load_dag(write(tmp_path, "stages: [toy_source]\nstagse: []\n"))


def test_order_follows_dependencies(tmp_path):
    dag = load_dag(write(tmp_path, "stages: [toy_split, toy_source]"))
    assert [s.name for s in dag.stages] == ["toy_source", "toy_split"]


def test_cycle_detected(monkeypatch):
    from dataclasses import replace

    from pipeline.core import registry

    registry.load_builtin_stages()
    a = replace(registry.get_stage("toy_split"), name="cyc_a", inputs=("sections",), outputs=("sentences",))
    b = replace(registry.get_stage("toy_split"), name="cyc_b", inputs=("sentences",), outputs=("sections",))
    monkeypatch.setitem(registry._REGISTRY, "cyc_a", a)
    monkeypatch.setitem(registry._REGISTRY, "cyc_b", b)
    with pytest.raises(PipelineError) as err:
        build_dag("cyc", ["cyc_a", "cyc_b"])
    assert err.value.code == "E_DAG_CYCLE"


def test_dataset_without_schema(monkeypatch):
    from dataclasses import replace

    from pipeline.core import registry

    registry.load_builtin_stages()
    bad = replace(registry.get_stage("toy_split"), name="bad_out", outputs=("sectoins",))
    monkeypatch.setitem(registry._REGISTRY, "bad_out", bad)
    with pytest.raises(PipelineError, match="Did you mean 'sections'") as err:
        build_dag("x", ["toy_source", "bad_out"])
    assert err.value.code == "E_SCHEMA_MISSING"
