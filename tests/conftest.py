"""One conftest: the shared-data fixture, temp dumps, and a Dask cluster shared by the session."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Collection
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path | None:
    """../shared/data beside the checkout (CI has it there), or $CLIP2CLINIC_SHARED_DATA."""
    env = os.environ.get("CLIP2CLINIC_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The third-party data folder; tests that need it are skipped where it is absent."""
    path = _shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is not beside this checkout")
    return path


# Test-only stages live in tests/toy_stages.py; worker processes find them through these two
# variables, which they inherit from this process.
os.environ["CLIP2CLINIC_STAGE_MODULES"] = "toy_stages"
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO / "tests"), os.environ.get("PYTHONPATH", "")) if p
)


@pytest.fixture(scope="session")
def dask_client():
    """One real LocalCluster (2 worker processes) shared by the tests that need a client."""
    from pipeline.core.runner import ClusterConfig
    from pipeline.core.runner import dask_client as make_client

    with make_client(ClusterConfig(n_workers=2)) as client:
        yield client


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, dask_client) -> Path:
    """The demo DAG run once on a generated demo dump with injected bad rows; returns `out`."""
    from pipeline.core.config import compose_run
    from pipeline.core.dag import load_dag
    from pipeline.core.runner import Runner

    base = tmp_path_factory.mktemp("demo")
    # Three epochs: the tests of this run need a trained checkpoint, not a good one (the learning
    # signal is tests/test_demo_dag.py::test_make_run_entry_point's, on the full demo).
    cfg = compose_run(
        [
            f"dataset.root={base / 'dump'}",
            "dataset.n_reports=160",
            f"out={base / 'run'}",
            "stages.train.epochs=3",
            "stages.train.progress=false",
        ]
    )
    dag = load_dag("demo")
    Runner(cfg.out, dask_client).run_dag(dag, {s.name: cfg.stage_config(s.name) for s in dag.stages})
    return Path(cfg.out)


GOLDEN_DIR = REPO / "tests" / "golden"


@pytest.fixture
def golden(request):
    """Compare rows (lists of strings, header first) with tests/golden/<name>.csv.

    ``CLIP2CLINIC_UPDATE_GOLDEN=1 pytest ...`` rewrites the file and fails on purpose, so a
    regeneration is never silent; review the diff, then rerun without it. A missing file fails.
    """
    import csv

    written: list[str] = []

    def fail_after_writing() -> None:
        if written:
            pytest.fail(f"wrote {written}; rerun without CLIP2CLINIC_UPDATE_GOLDEN and review the diff")

    request.addfinalizer(fail_after_writing)

    def check(name: str, rows: list[list[str]]) -> None:
        path = GOLDEN_DIR / f"{name}.csv"
        if os.environ.get("CLIP2CLINIC_UPDATE_GOLDEN"):
            with path.open("w", newline="") as fh:
                csv.writer(fh, lineterminator="\n").writerows(rows)
            written.append(path.name)
            return
        assert path.exists(), f"{path} is missing: regenerate it with CLIP2CLINIC_UPDATE_GOLDEN=1"
        with path.open(newline="") as fh:
            expected = list(csv.reader(fh))
        assert expected[0] == rows[0], "golden header changed"
        mismatched = [(want, got) for want, got in zip(expected[1:], rows[1:], strict=False) if want != got]
        assert len(expected) == len(rows) and not mismatched, (
            f"{path}: {len(rows) - 1} rows vs {len(expected) - 1} golden; first differences: {mismatched[:3]}"
        )

    return check


@pytest.fixture
def cyclic_garbage() -> Callable[[Collection[str]], list]:
    """A function: the objects, of types from the given top-level packages, that only a cyclic
    collection would free now (found with ``gc.DEBUG_SAVEALL``; the collector's debug flags and
    ``gc.garbage`` are left as they were). Other threads of the test process (a Dask client) may
    make cycles of their own, hence the packages."""

    def find(packages: Collection[str]) -> list:
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            return [o for o in gc.garbage if type(o).__module__.split(".")[0] in packages]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()

    return find
