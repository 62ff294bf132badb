"""Checkpoints: atomic writes, ``latest.json``, keep-last-K, and everything an exact resume needs.

A checkpoint (``checkpoints/step-NNNNNNNN.pt``, one file written by rank 0) holds the model (not
the DDP wrapper), optimizer, scheduler, the resolved config and its identity, the step, epoch and
samples counters, and per rank the RNG states (python, numpy, torch CPU, CUDA) and the reader's
position. ``latest.json`` is replaced only after the file is in place, so a crash mid-write
leaves the previous checkpoint as latest. Loading needs only torch (``weights_only=True``: the
file holds tensors and plain containers, no pickled classes).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "clip2clinic.train"
VERSION = 1
LATEST = "latest.json"


def step_file(step: int) -> str:
    return f"step-{step:08d}.pt"


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNG states as tensors and plain values (safe for ``weights_only`` loads)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":  # this process's device only: a resume may see other GPUs
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def save(folder: Path, step: int, payload: dict[str, Any], *, keep_last: int) -> dict[str, Any]:
    """Write ``folder/step-N.pt`` atomically, point ``latest.json`` at it, drop step files beyond
    the ``keep_last`` newest. Returns {file, step, sha256, bytes}."""
    folder.mkdir(parents=True, exist_ok=True)
    name = step_file(step)
    path = folder / name
    tmp = folder / f".{name}.tmp-{uuid.uuid4().hex}"
    torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)
    digest = _sha256(tmp)
    os.replace(tmp, path)
    entry = {"file": name, "step": step, "sha256": digest, "bytes": path.stat().st_size}
    _write_json(folder / LATEST, entry)
    steps = sorted(p for p in folder.glob("step-*.pt"))
    for old in steps[: max(0, len(steps) - max(1, keep_last))]:
        old.unlink()
    return entry


def latest(folder: Path) -> Path | None:
    """The checkpoint ``latest.json`` names, or None when there is none (or it was deleted)."""
    pointer = folder / LATEST
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["file"]
    except (json.JSONDecodeError, KeyError):
        return None
    path = folder / name
    return path if path.is_file() else None


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint. Raises ValueError for a file that is not one of ours."""
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise ValueError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise ValueError(f"{path} is not a {FORMAT} v{VERSION} checkpoint")
    return data


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (config.json, summary.json)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, obj)
