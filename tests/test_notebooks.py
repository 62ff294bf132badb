"""Every notebook in notebooks/ executes against the demo run, without an error and without writing
into the run (notebooks only inspect)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.py"))


def _snapshot(run: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file of a run, to see that a notebook left it as it was."""
    return {
        str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in run.rglob("*")
        if p.is_file()
    }


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebook found under notebooks/"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path: Path, demo_run: Path, tmp_path: Path, monkeypatch):
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(path)
    before = _snapshot(demo_run)
    monkeypatch.setenv("CLIP2CLINIC_RUN", str(demo_run))  # the kernel inherits it at start
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [
        f"{o.get('ename')}: {o.get('evalue')}\n  in cell: {cell.source[:200]}"
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors, "\n".join(errors)
    assert _snapshot(demo_run) == before, f"{path.name} wrote into the run"
