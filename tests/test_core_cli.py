"""The CLI end to end on toy stages, and a scheduler plus workers started as separate processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cluster_fixtures import free_port, start_scheduler, start_worker, stop
from distributed import Client

from pipeline.core.config import compose_run
from pipeline.core.errors import PipelineError
from pipeline.core.io import read_dataset
from pipeline.run import main

TOY_DAG = "name: toy\nstages: [toy_source, toy_split]\n"


@pytest.fixture
def toy_dag(tmp_path: Path) -> str:
    path = tmp_path / "toy.yaml"
    path.write_text(TOY_DAG)
    return str(path)


def test_cli_runs_a_dag_file_and_prints_a_summary(tmp_path, toy_dag, capsys):
    out = tmp_path / "run"
    code = main([f"dag={toy_dag}", f"out={out}", "stages.toy_source.n_reports=30", "progress=false"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "toy_split" in printed and "sections" in printed
    assert read_dataset(str(out), "reports").num_rows == 28  # rows 12 and 25 are unreadable
    # Second run: up to date.
    assert main([f"dag={toy_dag}", f"out={out}", "stages.toy_source.n_reports=30", "progress=false"]) == 0
    assert "skipped" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, code, text",
    [
        (["dataset=mimc_cxr"], "E_CONFIG_VALUE", "Did you mean 'mimic_cxr'"),
        (["dataset.roott=/x"], "E_CONFIG_KEY", "Did you mean 'root'"),
        (["stages.toy_split.sufix=x"], "E_CONFIG_KEY", "Did you mean 'suffix'"),
        (["cluster.n_workers=two"], "E_CONFIG_VALUE", "n_workers"),
        (["profile=huge"], "E_CONFIG_VALUE", "Choose from"),
        (["colour=red"], "E_CONFIG_KEY", "unknown key 'colour'"),
        (["stages.ingest.part_size=abc"], "E_CONFIG_VALUE", "part_size expects an integer, got 'abc'"),
        (["force=maybe"], "E_CONFIG_VALUE", "force expects true or false"),
    ],
)
def test_bad_overrides_are_explained(args, code, text):
    with pytest.raises(PipelineError, match=text) as err:
        compose_run(args)
    assert err.value.code == code


def test_cli_exit_code_and_message(capsys, tmp_path):
    assert main(["dag=lables", f"out={tmp_path}"]) == 2
    assert "Did you mean 'labels'" in capsys.readouterr().err
    assert main(["stage=toy_split", f"out={tmp_path}", "progress=false"]) == 2
    assert "needs reports" in capsys.readouterr().err


def test_table_dataset_overrides_become_typed_config():
    cfg = compose_run(
        [
            "dataset=table",
            "dataset.path=r.csv",
            "dataset.id_column=uid",
            "dataset.text_columns=[indication,findings]",
            "profile=full",
        ]
    )
    assert cfg.dataset.text_columns == ("indication", "findings")
    assert cfg.out == "runs/table"


@pytest.mark.slow
def test_dag_through_a_separate_scheduler_and_workers(tmp_path, toy_dag):
    """`dask scheduler` and `dask worker` as their own processes on loopback, used by address."""
    address, scheduler = start_scheduler()
    procs = [scheduler]
    try:
        procs.append(start_worker(address, tmp_path / "scratch", nworkers=2))
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            pids = set(client.run(lambda: __import__("os").getpid()).values())
        out = tmp_path / "run"
        code = main([f"dag={toy_dag}", f"out={out}", f"cluster.address={address}", "progress=false"])
        assert code == 0
        markers = [json.loads(p.read_text()) for p in (out / "_state" / "toy_split").glob("part-*.json")]
        assert markers and {m["worker_pid"] for m in markers} <= pids  # the work ran on those workers
        assert read_dataset(str(out), "sections").num_rows > 0
    finally:
        stop(procs)


def test_unreachable_scheduler_is_a_clear_error(tmp_path, toy_dag, capsys):
    port = free_port()
    assert (
        main(
            [
                f"dag={toy_dag}",
                f"out={tmp_path}",
                f"cluster.address=tcp://127.0.0.1:{port}",
                "cluster.connect_timeout=2s",  # the default (20s) retries for that long
                "progress=false",
            ]
        )
        == 2
    )
    assert "E_CLUSTER" in capsys.readouterr().err
