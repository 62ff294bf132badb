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
INDEX = "checkpoints.json"  # an entry per kept step file: what a summary or a resume check reads


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
    the ``keep_last`` newest, and keep ``checkpoints.json`` (their entries) in step. Returns the
    entry: {file, step, epoch, sha256, bytes, identity}, so nobody reloads a multi-GB file to
    learn them."""
    folder.mkdir(parents=True, exist_ok=True)
    name = step_file(step)
    path = folder / name
    tmp = folder / f".{name}.tmp-{uuid.uuid4().hex}"
    torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)
    digest = _sha256(tmp)
    os.replace(tmp, path)
    entry = {
        "file": name,
        "step": step,
        "epoch": int(payload["epoch"]),
        "sha256": digest,
        "bytes": path.stat().st_size,
        "identity": payload["identity"],
    }
    _write_json(folder / LATEST, entry)
    steps = sorted(p for p in folder.glob("step-*.pt"))
    for old in steps[: max(0, len(steps) - max(1, keep_last))]:
        old.unlink()
    kept = {e["file"]: e for e in entries(folder)}
    kept[name] = entry
    _write_json(folder / INDEX, [kept[p.name] for p in sorted(folder.glob("step-*.pt")) if p.name in kept])
    return entry


def entries(folder: Path) -> list[dict[str, Any]]:
    """The entries of ``checkpoints.json`` whose step files still exist, in step order."""
    try:
        listed = json.loads((folder / INDEX).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    return [e for e in listed if (folder / e["file"]).is_file()]


def latest_entry(folder: Path) -> dict[str, Any] | None:
    """The entry ``latest.json`` holds, or None when there is none (or its file was deleted)."""
    try:
        entry = json.loads((folder / LATEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return entry if isinstance(entry, dict) and (folder / entry.get("file", "")).is_file() else None


def latest(folder: Path) -> Path | None:
    """The checkpoint ``latest.json`` names, or None when there is none (or it was deleted)."""
    entry = latest_entry(folder)
    return folder / entry["file"] if entry else None


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
