"""Hardening the runner: one writer per run folder, one line for an internal error (the traceback
in the run's log), Ctrl-C that says how to resume, and runs that end without a traceback or an
abort, checked on real CLI subprocesses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

import pipeline.run as cli
from pipeline.core.errors import PipelineError
from pipeline.core.lock import lock_path, run_lock
from pipeline.run import main

TOY_DAG = "name: toy\nstages: [toy_source, toy_split]\n"
HELD_DAG = "name: held\nstages: [toy_source, held_split]\n"

# A map stage whose parts after the first wait while its `hold` file exists: a run that is
# certainly busy (a part marker written, other parts running) for as long as a test needs.
HELD_STAGE = '''
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from pipeline.core.registry import map_stage
from toy_stages import split_sections


@dataclass(frozen=True)
class HeldSplitConfig:
    hold: str = ""


@map_stage("held_split", version=1, inputs=("reports",), outputs=("sections",), config=HeldSplitConfig)
def held_split(tables, *, config):
    """toy_split's sections; parts after the first wait while config.hold exists."""
    reports = tables["reports"]
    first = reports.num_rows and reports["report_id"][0].as_py() == "r0000"
    while config.hold and not first and os.path.exists(config.hold):
        time.sleep(0.05)
    return split_sections(reports, "held_split")
'''


def flat(text: str) -> str:
    """Rich wraps long lines at the console width: compare messages with whitespace folded."""
    return " ".join(text.split())


@pytest.fixture
def toy_dag(tmp_path: Path) -> str:
    path = tmp_path / "toy.yaml"
    path.write_text(TOY_DAG)
    return str(path)


@pytest.fixture
def held(tmp_path: Path) -> dict:
    """The held DAG, its stage module on the subprocesses' path, and the hold file (present)."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "held_stages.py").write_text(HELD_STAGE)
    dag = tmp_path / "held.yaml"
    dag.write_text(HELD_DAG)
    hold = tmp_path / "hold"
    hold.touch()
    env = {
        **os.environ,
        "CLIP2CLINIC_STAGE_MODULES": "toy_stages,held_stages",
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO / "tests"), str(mods), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    args = [
        f"dag={dag}",
        f"out={tmp_path / 'run'}",
        "stages.toy_source.n_reports=30",
        f"stages.held_split.hold={hold}",
        "progress=false",
    ]
    return {"env": env, "args": args, "hold": hold, "out": tmp_path / "run"}


def start_cli(args: list[str], env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.run", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def run_cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    proc = start_cli(args, env)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_for(condition, what: str, procs: list[subprocess.Popen]) -> None:
    """Poll until ``condition()``; fail at once if a process ends first (no time limit of ours:
    pytest's timeout is the backstop)."""
    while not condition():
        for proc in procs:
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"exited {proc.returncode} before {what}:\n{out}\n{err}")
        time.sleep(0.1)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- 1. one writer per run folder -----------------------------------------------------------------


def test_a_held_run_folder_stops_a_second_run_with_exit_2(tmp_path, toy_dag, capsys):
    out = tmp_path / "run"
    with run_lock(str(out), "python -m pipeline.run dag=first"):
        code = main([f"dag={toy_dag}", f"out={out}", "progress=false"])
    err = flat(capsys.readouterr().err)
    assert code == 2
    assert (
        f"error [E_RUN_LOCKED] run folder in use by host {socket.gethostname()}, pid {os.getpid()} since"
        in err
    )
    assert "(command python -m pipeline.run dag=first): wait for it or use another out=" in err
    assert not (out / "reports").exists()  # stopped before any work


def test_a_lock_of_a_killed_run_is_taken_over(tmp_path, caplog):
    """A holder killed with SIGKILL never cleans up: the kernel frees its flock, its JSON stays."""
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pipeline.core.lock import run_lock\n"
            f"with run_lock({str(out)!r}, 'holder'):\n    print('held', flush=True)\n    time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        locked = f"pid {holder.pid} since .* \\(command holder\\)"
        with pytest.raises(PipelineError, match=locked) as exc, run_lock(str(out)):
            pass
        assert exc.value.code == "E_RUN_LOCKED"
    finally:
        holder.kill()
        holder.wait()
    assert json.loads(Path(lock_path(str(out))).read_text())["pid"] == holder.pid  # left behind
    caplog.set_level("INFO", logger="pipeline")
    with run_lock(str(out), "the new run"):
        assert json.loads(Path(lock_path(str(out))).read_text())["command"] == "the new run"
    assert f"took over the run lock left by pid {holder.pid}" in caplog.text


def test_a_stale_lock_file_of_a_dead_pid_is_taken_over(tmp_path):
    out = tmp_path / "run"
    path = Path(lock_path(str(out)))
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid(), "command": "old"}))
    with run_lock(str(out), "new"):
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_a_remote_out_takes_no_lock_and_says_so(caplog):
    with run_lock("memory://hardening/run") as path:
        assert path is None
    assert "no run lock is taken" in caplog.text


@pytest.mark.slow
def test_two_concurrent_runs_on_one_out_one_wins_one_exits_2(held):
    """Started together; the winner is held in its second stage until the loser has exited, so
    the loser certainly finds the folder in use."""
    procs = [start_cli(held["args"], held["env"]), start_cli(held["args"], held["env"])]
    try:
        wait_for(lambda: any(p.poll() is not None for p in procs), "either run ended", [])
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        _, loser_err = loser.communicate()
        held["hold"].unlink()
        winner_out, winner_err = winner.communicate(timeout=300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert winner.returncode == 0, winner_err
    assert loser.returncode == 2, loser_err
    err = flat(loser_err)
    assert f"[E_RUN_LOCKED] run folder in use by host {socket.gethostname()}, pid {winner.pid} since" in err
    assert "wait for it or use another out=" in err and "Traceback" not in loser_err
    assert "held_split" in winner_out and "Traceback" not in winner_err


# -- 2. uncoded exceptions -------------------------------------------------------------------------


def test_an_internal_error_is_one_line_with_the_log_file(tmp_path, toy_dag, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom in a stage")

    monkeypatch.setattr(cli, "run", broken)
    out = tmp_path / "run"
    assert main([f"dag={toy_dag}", f"out={out}", "progress=false"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1
    prefix = "internal error (RuntimeError: boom in a stage), please report it with the log file "
    assert lines[0].startswith(prefix)
    log_file = Path(lines[0][len(prefix) :])
    assert log_file.parent == out / "_logs" and log_file.name.startswith("run-")
    text = log_file.read_text()
    assert "Traceback" in text and "RuntimeError: boom in a stage" in text and f"dag={toy_dag}" in text


def test_a_pipeline_error_is_unchanged(tmp_path, toy_dag, capsys, monkeypatch):
    def refuses(*args, **kwargs):
        raise PipelineError("E_TEST", "what failed; how to fix it.")

    monkeypatch.setattr(cli, "run", refuses)
    assert main([f"dag={toy_dag}", f"out={tmp_path / 'run'}"]) == 2
    assert capsys.readouterr().err == "error [E_TEST] what failed; how to fix it.\n"
    assert main(["log_level=LOUD", f"out={tmp_path / 'run'}"]) == 2
    assert "[E_CONFIG_VALUE] unknown log_level 'LOUD'" in capsys.readouterr().err


def test_a_remote_out_logs_to_a_temporary_file_and_says_where(capsys, caplog, monkeypatch, toy_dag):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "run", broken)
    assert main([f"dag={toy_dag}", "out=memory://hardening/run"]) == 1
    path = Path(capsys.readouterr().err.strip().rsplit(" ", 1)[1])
    assert f"out=memory://hardening/run is not a local folder: this run's log is {path}" in caplog.text
    assert "RuntimeError: boom" in path.read_text()
    path.unlink()


# -- 3. interrupts and a clean teardown ------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_prints_one_line_exits_130_and_the_rerun_resumes(held):
    # Its own session, so that killpg reaches it and its worker processes, as Ctrl-C would.
    proc = start_cli(held["args"], held["env"], start_new_session=True)
    marker = held["out"] / "_state" / "held_split" / "part-00000.json"
    try:
        wait_for(marker.exists, "the first part of held_split was done", [proc])
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert (
        "interrupted during stage held_split; stages finished: toy_source (ran). "
        "Rerun the same command to resume" in err
    )
    done_at = marker.stat().st_mtime_ns
    held["hold"].unlink()
    again = run_cli(held["args"], held["env"])
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    assert marker.stat().st_mtime_ns == done_at  # the finished part was kept, not redone


@pytest.mark.slow
def test_a_run_and_its_no_op_reruns_end_cleanly(tmp_path):
    """The labels DAG ends by reading label_agreement for its table; a threaded Arrow read used
    to abort 1 exit in 10 to 20 at interpreter exit (exit 134). Also: no traceback at shutdown."""
    source = tmp_path / "reports.csv"
    source.write_text(
        "uid,findings,impression\n"
        "a1,No pneumothorax.,Mild cardiomegaly.\n"
        "a2,Small left pleural effusion.,Possible pneumonia.\n"
        "a3,Lungs are clear.,No acute process.\n"
    )
    out = tmp_path / "run"
    args = [
        "dag=labels",
        "dataset=table",
        f"dataset.path={source}",
        "dataset.id_column=uid",
        "dataset.text_columns=[findings,impression]",
        f"out={out}",
        "progress=false",
    ]
    first = run_cli(args)
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr, first.stderr
    assert not any("Traceback" in p.read_text() for p in (out / "_logs").glob("*.log"))
    codes = []
    for _ in range(6):
        logs = set((out / "_logs").glob("*.log"))
        again = run_cli(args)
        codes.append(again.returncode)
        assert "Traceback" not in again.stderr and "terminate called" not in again.stderr, again.stderr
        (log_file,) = set((out / "_logs").glob("*.log")) - logs
        # "skipped" unless a stage's code was edited meanwhile; either way the run ends by
        # reading label_agreement for its table, the read that used to abort.
        assert "agreement skipped" in log_file.read_text() or "agreement ran" in log_file.read_text()
    assert codes == [0] * 6


def test_finding_the_stages_imports_no_text_engine():
    """Every CLI start, worker start and no-op rerun registers the stages; spaCy (and torch,
    through thinc) cost seconds there, so they are imported when a text part first runs."""
    code = (
        "import sys; from pipeline.core.registry import all_stages; "
        "assert {'parse', 'extract', 'reread'} <= set(all_stages()); "
        "print(sorted(m for m in ('spacy', 'thinc', 'negspacy', 'scispacy', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
