"""Scoring a CLIP checkpoint on a test split: zero-shot AUROC, retrieval, CXR-Align, negation probe.

The pieces, each usable on its own (notebooks, the ``evaluate`` stage, ``bench/evaluate.py``):

* :func:`load_model` reads one of our checkpoints (or builds the untrained model of its config)
  and returns the model with its tokenizer;
* :func:`read_test_set`, :func:`align_items_from_table`, :func:`read_published_align`,
  :func:`probe_pairs_from_table` turn the run's tables into :class:`EvalData`;
* :func:`score` embeds every image and every distinct text once and computes every figure
  (numpy, :mod:`pipeline.train.metrics`), returning a JSON-ready dict plus the ROC curves.

Definitions (also in the README):

* **Zero-shot.** Per observation, the image's probability of the positive class is the softmax,
  at the model's logit scale, of its similarity to the mean positive prompt embedding against
  the mean negative one (ranked by the logit difference, which the softmax only squashes). Truth
  is the report's CheXpert-style label, ours (``labels``) or the dump's official labeler's
  (``TestSet.with_official_labels``): 1 positive; 0 and blank negative (a finding the report does
  not mention is taken as absent); -1 as ``uncertain`` says (left out by default). AUROC with a
  percentile bootstrap interval resampling whole studies.
* **Retrieval.** Candidates are the distinct report texts of the split (two studies with the
  same words are one candidate). Image to text: the rank of the image's report text; text to
  image: the rank of the best-ranked image of that text. Ties count against the model.
* **CXR-Align.** One item per (benchmark row, image of its study): Task A is right when the
  image is nearer ``report`` than ``negation``, Task B when nearer ``report`` than ``omitted``;
  ``omitted_over_negation`` when nearer ``omitted`` than ``negation`` (the denial alone pushed
  the text away). Intervals: percentile bootstrap over studies (Wilson's with ``bootstrap=0``).
* **Negation probe.** Per ``negation_pairs`` row and image of its study: is the original sentence
  nearer the image than its polarity flip. Only the text differs between the two, one sentence
  each: it asks whether the text tower turns a single negation into a different place in the
  shared space (nothing is trained on these pairs).
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import torch
import yaml

from pipeline.train import checkpoint as ckpt
from pipeline.train import metrics
from pipeline.train.augment import AugmentConfig, decode_valid
from pipeline.train.config import TrainConfig, from_dict
from pipeline.train.model import CLIPModel, build_text_tower

# schemas/labels.yaml order (the shards' ``labels`` list); a test checks they agree.
OBSERVATIONS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
# The five observations of the CheXpert competition, the usual headline mean.
CHEXPERT5 = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
UNCERTAIN = ("exclude", "positive", "negative")
DEFAULT_PROMPTS = Path(__file__).with_name("prompts.yaml")


# -- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreSettings:
    """How figures are computed (the ``evaluate`` stage's knobs of the same names)."""

    uncertain: str = "exclude"  # -1 labels: exclude | positive | negative
    bootstrap: int = (
        1000  # resamples (of whole studies) for every interval; 0: Wilson for shares, none for AUROC
    )
    level: float = 0.95  # interval coverage
    seed: int = 0
    ks: tuple[int, ...] = (1, 5, 10)
    batch_size: int = 64  # images or texts per forward
    # An observation enters the mean AUROC with at least this many positives and negatives (its
    # own AUROC is reported either way; one positive makes an AUROC of a single rank).
    min_positives: int = 5


def read_prompts(path: str | Path | None = None) -> dict[str, dict[str, list[str]]]:
    """The prompt bank ``{observation: {"positive": [...], "negative": [...]}}`` (default: ours).

    Raises ValueError for an unknown observation or an empty prompt list.
    """
    path = Path(path) if path else DEFAULT_PROMPTS
    data = yaml.safe_load(path.read_text())
    bank = data.get("observations") if isinstance(data, dict) else None
    if not isinstance(bank, dict) or not bank:
        raise ValueError(f"{path}: expected a mapping 'observations: {{name: {{positive, negative}}}}'")
    out = {}
    for name, sides in bank.items():
        if name not in OBSERVATIONS:
            raise ValueError(f"{path}: {name!r} is not a CheXpert observation ({', '.join(OBSERVATIONS)})")
        pos, neg = (sides or {}).get("positive"), (sides or {}).get("negative")
        if not pos or not neg or not all(isinstance(t, str) and t.strip() for t in [*pos, *neg]):
            raise ValueError(f"{path}: {name!r} needs non-empty lists of positive and negative prompts")
        out[name] = {"positive": list(pos), "negative": list(neg)}
    return out


# -- the model -----------------------------------------------------------------------------------


@dataclass
class Loaded:
    """A model ready to score, and what it is."""

    name: str
    model: CLIPModel
    tokenizer: Any
    config: TrainConfig
    info: dict[str, Any]  # file, sha256, step, epoch, samples, preset, identity, train_folder


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file from ``path``: the file itself, or a training folder's final checkpoint
    (``summary.json``), else its latest. Raises ValueError when there is none."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for folder in (path, path / "train"):  # a training folder, or a run's out
            summary = folder / "summary.json"
            if summary.exists():
                final = json.loads(summary.read_text()).get("final")
                for candidate in (folder / str(final), folder / "checkpoints" / str(final)):
                    if final and candidate.is_file():
                        return candidate
            found = ckpt.latest(folder / "checkpoints")
            if found:
                return found
    raise ValueError(
        f"checkpoint {path}: not a checkpoint file, nor a training folder (or run) holding one; "
        "give a train/checkpoints/step-NNNNNNNN.pt file"
    )


def load_model(
    path: str | Path, *, device: str | torch.device = "cpu", untrained: bool = False, name: str = ""
) -> Loaded:
    """The model of checkpoint ``path`` (a file or training folder), on ``device``, in eval mode.

    ``untrained``: the same architecture, tokenizer and seed with the weights it started from
    (the pretrained text tower when its config had one), the reference a trained model must beat.
    The tokenizer is the training folder's ``tokenizer/``. Raises ValueError for an unreadable
    checkpoint, weights that do not fit its config, or a training folder without its tokenizer.
    """
    file = resolve_checkpoint(path)
    data = ckpt.load(file)
    config = from_dict(data["config"])
    folder = file.parent.parent if file.parent.name == "checkpoints" else file.parent
    text_cfg = config.model.text
    if text_cfg.path == "tiny":
        tokenizer_dir = folder / "tokenizer"
        if not (tokenizer_dir / "tokenizer.json").exists():
            raise ValueError(
                f"{file}: its tiny text tower's tokenizer is not in {tokenizer_dir}; keep the checkpoint "
                "inside its training folder (train/checkpoints/...)"
            )
        scratch: contextlib.AbstractContextManager[Any] = contextlib.nullcontext(str(tokenizer_dir))
    else:
        scratch = tempfile.TemporaryDirectory()  # build_text_tower saves a copy we do not need
    if not untrained:  # the state dict replaces every weight: do not read them twice
        text_cfg = replace(text_cfg, pretrained=False)
    image_cfg = config.model.image if untrained else replace(config.model.image, weights="")
    model_cfg = replace(config.model, text=text_cfg, image=image_cfg)
    with scratch as tokenizer_dir:
        torch.manual_seed(config.seed)  # the trainer's initial weights (pipeline/train/loop.py)
        text, tokenizer = build_text_tower(text_cfg, tokenizer_dir=tokenizer_dir, texts=None)
        model = CLIPModel(model_cfg, text=text, concepts=int(data["concepts"]), channels=config.data.channels)
    if not untrained:
        model.load_weights(data["model"], source=str(file))
    model.to(device).eval()
    info = {
        "file": str(file),
        "sha256": None if untrained else _known_sha256(file),
        "step": 0 if untrained else int(data["step"]),
        "epoch": 0 if untrained else int(data["epoch"]),
        "samples": 0 if untrained else int(data.get("samples", 0)),
        "preset": config.preset,
        "identity": data.get("identity"),
        "train_folder": str(folder),
        "untrained": untrained,
    }
    default = "untrained" if untrained else f"{config.preset}@{info['step']}"
    return Loaded(name or default, model, tokenizer, config, info)


def _known_sha256(file: Path) -> str:
    """The file's sha256 from its folder's ``checkpoints.json`` when listed at this size, else
    computed (a multi-GB file is read once either way, by torch.load)."""
    size = file.stat().st_size
    for entry in ckpt.entries(file.parent):
        if entry.get("file") == file.name and entry.get("bytes") == size and entry.get("sha256"):
            return str(entry["sha256"])
    return ckpt._sha256(file)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The trainer's autocast (pipeline/train/loop.py): bf16 on CUDA for auto, fp32 on CPU."""
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


@torch.no_grad()
def encode_images(
    loaded: Loaded,
    pngs: Sequence[bytes],
    *,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Unit image embeddings (N, D) float32 (NaN rows for undecodable images) and an (N,) mask of
    the decodable ones. The eval view: centre square, resized to the trained resolution."""
    model, cfg = loaded.model, loaded.config
    device = next(model.parameters()).device
    view = AugmentConfig(resolution=cfg.data.resolution, channels=cfg.data.channels, train=False)
    out = np.full((len(pngs), cfg.model.embed_dim), np.nan, np.float32)
    good = np.zeros(len(pngs), bool)
    for start in range(0, len(pngs), batch_size):
        chunk = pngs[start : start + batch_size]
        positions = np.arange(start, start + len(chunk))
        images, ok = decode_valid(chunk, positions, seed=0, epoch=0, cfg=view)
        if ok.any():
            with _autocast(device, cfg.precision):
                emb = model.encode_image(images.to(device))
            out[positions[ok]] = emb.float().cpu().numpy()
        good[positions] = ok
        if progress:
            progress(len(chunk))
    return out, good


@torch.no_grad()
def encode_texts(
    loaded: Loaded,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Unit text embeddings (N, D) float32, in ``texts`` order. Texts are batched by length (less
    padding) and truncated at the trained ``max_length``."""
    model, cfg = loaded.model, loaded.config
    device = next(model.parameters()).device
    out = np.zeros((len(texts), cfg.model.embed_dim), np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        enc = loaded.tokenizer(
            [texts[i] for i in rows],
            padding=True,
            truncation=True,
            max_length=cfg.model.text.max_length,
            return_tensors="pt",
        )
        with _autocast(device, cfg.precision):
            emb = model.encode_text(enc["input_ids"].to(device), enc["attention_mask"].to(device))
        out[rows] = emb.float().cpu().numpy()
        if progress:
            progress(len(rows))
    return out


# -- the data ------------------------------------------------------------------------------------


@dataclass
class TestSet:
    """The images of a split with their report text and labels (the shards' rows)."""

    image_ids: list[str]
    report_ids: list[str]
    texts: list[str]
    labels: np.ndarray  # (N, 14) float32: 1, 0, -1, NaN (blank)
    pngs: list[bytes]
    views: list[str | None]
    truth: str = "labels"  # where ``labels`` came from: our labels, or an official labeler's
    unlabelled: np.ndarray | None = None  # (N,) bool: no truth for this image (left out of AUROC)

    def with_official_labels(self, official: pa.Table, labeler: str) -> TestSet:
        """The same images with ``labeler``'s rows of the ``official_labels`` table as truth
        (the dump's CheXpert or NegBio labels); images of reports it lacks are left out.

        Raises ValueError when the table has no row of that labeler.
        """
        rows = [r for r in official.to_pylist() if r["labeler"] == labeler]
        if not rows:
            found = sorted(set(official.column("labeler").to_pylist())) if official.num_rows else []
            raise ValueError(
                f"truth={labeler!r}: official_labels has no such labeler (it has {found or 'none'})"
            )
        by_report = {r["report_id"]: [np.nan if r[o] is None else r[o] for o in OBSERVATIONS] for r in rows}
        labels = np.array(
            [by_report.get(r, [np.nan] * len(OBSERVATIONS)) for r in self.report_ids], np.float32
        )
        missing = np.array([r not in by_report for r in self.report_ids], bool)
        return replace(self, labels=labels, truth=labeler, unlabelled=missing)

    def __len__(self) -> int:
        return len(self.image_ids)

    def images_of(self) -> dict[str, list[int]]:
        by_report: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(self.report_ids):
            by_report[r].append(i)
        return by_report


@dataclass
class AlignItems:
    """CXR-Align items: one per (benchmark row, image)."""

    source: str  # "run" (the run's cxr_align dataset) or "json" (a published-shape file)
    image: list[int] = field(default_factory=list)  # row in the image list the source scores
    report: list[str] = field(default_factory=list)
    negation: list[str] = field(default_factory=list)
    omitted: list[str] = field(default_factory=list)
    location: list[str] = field(default_factory=list)
    chosen: list[str] = field(default_factory=list)
    group: list[str] = field(default_factory=list)  # the study: resampled as one in the intervals
    rows: int = 0  # benchmark rows read
    unmatched: int = 0  # rows whose study has no image here

    def __len__(self) -> int:
        return len(self.image)

    def add(self, image: int, row: dict[str, Any], group: str) -> None:
        self.image.append(image)
        self.group.append(group)
        for key in ("report", "negation", "omitted", "location", "chosen"):
            getattr(self, key).append(str(row.get(key) or ""))


@dataclass
class ProbePairs:
    """Negation probe items: one per (negation_pairs row, image of its study)."""

    image: list[int] = field(default_factory=list)
    original: list[str] = field(default_factory=list)
    flipped: list[str] = field(default_factory=list)
    method: list[str] = field(default_factory=list)
    direction: list[str] = field(default_factory=list)  # "present->absent", ...
    group: list[str] = field(default_factory=list)  # the report: resampled as one in the intervals
    rows: int = 0
    unmatched: int = 0

    def __len__(self) -> int:
        return len(self.image)


@dataclass
class EvalData:
    test: TestSet
    align: list[AlignItems] = field(default_factory=list)
    align_pngs: dict[str, list[bytes]] = field(default_factory=dict)  # source -> its own images
    probe: ProbePairs | None = None
    fingerprints: dict[str, Any] = field(default_factory=dict)


TEST_COLUMNS = ["image_id", "report_id", "text", "labels", "image", "view_position"]


def read_test_set(folder: str | Path, *, max_samples: int = 0) -> TestSet:
    """The samples of one split's shard folder (``<run>/shards/test``), in shard order.

    Raises ValueError when the folder has no ``_index.json`` or no samples.
    """
    folder = Path(folder)
    index_file = folder / "_index.json"
    if not index_file.exists():
        raise ValueError(f"{folder} has no _index.json: build the shards first (stage=shards)")
    index = json.loads(index_file.read_text())
    tables = [pq.read_table(folder / s["file"], columns=TEST_COLUMNS) for s in index.get("shards", [])]
    table = pa.concat_tables(tables) if tables else None
    if table is None or table.num_rows == 0:
        raise ValueError(f"{folder} holds no samples to evaluate on")
    if max_samples and table.num_rows > max_samples:
        table = table.slice(0, max_samples)
    labels = table.column("labels").to_pylist()
    matrix = np.array([[np.nan if v is None else v for v in row] for row in labels], np.float32)
    if matrix.shape[1:] != (len(OBSERVATIONS),):
        raise ValueError(
            f"{folder}: labels hold {matrix.shape[1:]} values per sample, not {len(OBSERVATIONS)}"
        )
    return TestSet(
        image_ids=table.column("image_id").to_pylist(),
        report_ids=table.column("report_id").to_pylist(),
        texts=table.column("text").to_pylist(),
        labels=matrix,
        pngs=table.column("image").to_pylist(),
        views=table.column("view_position").to_pylist(),
    )


def align_items_from_table(table: pa.Table, test: TestSet) -> AlignItems:
    """Items of the run's ``cxr_align`` dataset: each row against every test image of its report."""
    items = AlignItems("run")
    by_report = test.images_of()
    for row in table.to_pylist():
        if row["report_id"] not in by_report and row.get("split") not in (None, "test"):
            continue  # a benchmark row of another split: not part of this evaluation
        items.rows += 1
        images = by_report.get(row["report_id"], [])
        if not images:
            items.unmatched += 1
        for i in images:
            items.add(i, row, row["report_id"])
    return items


ALIGN_KEYS = ("report", "chosen", "negation", "omitted", "location")


def read_published_align(path: str | Path) -> dict[str, dict[str, Any]]:
    """A CXR-Align JSON file in the published shape: ``{dataset: {id: {report, chosen, negation,
    omitted, location}}}``, every value a string (``id``: MIMIC's dicom_id; a report id in a file
    ``python -m pipeline.hardneg export`` wrote for a dump without images; other keys of an item
    are kept). Returns ``{id: item}`` over every dataset key, each item with its ``dataset``.

    Raises ValueError naming the first entry that is not of that shape, or an id under two
    dataset keys.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cxr_align_json={path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"cxr_align_json={path}: expected {{dataset: {{dicom_id: item}}}}")
    rows: dict[str, dict[str, Any]] = {}
    for key, items in data.items():
        if not isinstance(items, dict):
            raise ValueError(
                f"cxr_align_json={path}: {key!r} holds {type(items).__name__}, not {{dicom_id: item}}"
            )
        for dicom_id, item in items.items():
            if not isinstance(item, dict):
                raise ValueError(f"cxr_align_json={path}: {key}/{dicom_id} is not an object")
            missing = [k for k in ALIGN_KEYS if not isinstance(item.get(k), str)]
            if missing:
                raise ValueError(
                    f"cxr_align_json={path}: {key}/{dicom_id} lacks {', '.join(missing)} (strings)"
                )
            if str(dicom_id) in rows:
                raise ValueError(
                    f"cxr_align_json={path}: {dicom_id} is under both "
                    f"{rows[str(dicom_id)]['dataset']!r} and {key!r}"
                )
            rows[str(dicom_id)] = {**item, "dataset": key}
    return rows


def read_images(folder: str | Path, image_ids: Iterable[str]) -> pa.Table:
    """``image_id``, ``png`` and ``report_id`` of the named images of an ``images`` dataset folder,
    streamed part by part (MIMIC's 377k PNGs are tens of GB; only the wanted ones are kept)."""
    wanted = pa.array(sorted(set(image_ids)), pa.string())
    files = sorted(str(p) for p in Path(folder).glob("part-*.parquet"))
    if not files or not len(wanted):
        return pa.table(
            {
                "image_id": pa.array([], pa.string()),
                "png": pa.array([], pa.binary()),
                "report_id": pa.array([], pa.string()),
            }
        )
    dataset = pds.dataset(files, format="parquet")
    return dataset.to_table(
        columns=["image_id", "png", "report_id"], filter=pc.field("image_id").isin(wanted)
    )


def align_items_from_json(
    rows: dict[str, dict[str, Any]], images: pa.Table
) -> tuple[AlignItems, list[bytes]]:
    """Items of a published CXR-Align file, their images found in the run's ``images`` rows by
    ``image_id`` (MIMIC's dicom_id; :func:`read_images`); returns the items and the PNGs they index."""
    items = AlignItems("json")
    pngs: list[bytes] = []
    columns = images.column_names
    found = {
        r["image_id"]: (r["png"], r.get("report_id") if "report_id" in columns else None)
        for r in images.to_pylist()
        if r["image_id"] in rows
    }
    for dicom_id, row in rows.items():
        items.rows += 1
        if dicom_id not in found:
            items.unmatched += 1
            continue
        png, report_id = found[dicom_id]
        items.add(len(pngs), row, report_id or dicom_id)
        pngs.append(png)
    return items, pngs


def probe_pairs_from_table(table: pa.Table, test: TestSet) -> ProbePairs:
    """Probe items of the run's ``negation_pairs`` rows of the test split's reports."""
    pairs = ProbePairs()
    by_report = test.images_of()
    for row in table.to_pylist():
        if row["report_id"] not in by_report and row.get("split") != "test":
            continue  # another split's pair: not part of this evaluation
        pairs.rows += 1
        images = by_report.get(row["report_id"], [])
        if not images:
            pairs.unmatched += 1
        for i in images:
            pairs.group.append(row["report_id"])
            pairs.image.append(i)
            pairs.original.append(row["original"])
            pairs.flipped.append(row["flipped"])
            pairs.method.append(row["method"])
            pairs.direction.append(f"{row['original_status']}->{row['flipped_status']}")
    return pairs


# -- scoring -------------------------------------------------------------------------------------


def _truth(labels: np.ndarray, uncertain: str, unlabelled: np.ndarray | None = None) -> np.ndarray:
    """Binary truth with NaN for left-out rows: 1 -> 1, 0 and blank -> 0, -1 per ``uncertain``;
    ``unlabelled`` rows (no truth at all) are left out."""
    truth = np.where(np.isnan(labels), 0.0, labels).astype(np.float64)
    truth[labels == -1] = {"exclude": np.nan, "positive": 1.0, "negative": 0.0}[uncertain]
    if unlabelled is not None:
        truth[unlabelled] = np.nan
    return truth


def _nan(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _proportion(hits: np.ndarray, groups: Sequence[str], settings: ScoreSettings) -> dict[str, Any]:
    """A share with its interval: a percentile bootstrap resampling whole studies (the items of
    one study share its texts and are not independent), or Wilson's with ``bootstrap=0``."""
    n = len(hits)
    acc = float(hits.mean()) if n else math.nan
    if settings.bootstrap and n:
        lo, hi = metrics.interval(
            metrics.bootstrap_means(hits, groups, n=settings.bootstrap, seed=settings.seed), settings.level
        )
    else:
        lo, hi = metrics.wilson_interval(float(hits.sum()), n, settings.level)
    return {"accuracy": _nan(acc), "ci": [_nan(lo), _nan(hi)], "n": n, "studies": len(set(groups))}


def _pair_hits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pair: 1 when a > b, 0.5 on a tie, else 0."""
    return (a > b).astype(np.float64) + 0.5 * (a == b)


def _by(
    keys: Sequence[str], hits: np.ndarray, groups: Sequence[str], settings: ScoreSettings
) -> dict[str, Any]:
    by: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        by[key].append(i)
    return {k: _proportion(hits[idx], [groups[i] for i in idx], settings) for k, idx in sorted(by.items())}


def align_figures(
    image: np.ndarray,
    report: np.ndarray,
    negation: np.ndarray,
    omitted: np.ndarray,
    *,
    locations: Sequence[str],
    chosen: Sequence[str],
    groups: Sequence[str],
    settings: ScoreSettings = ScoreSettings(),
) -> dict[str, Any]:
    """CXR-Align accuracies from unit embeddings, one row per item (all (N, D)): Task A (image
    nearer report than negation), Task B (report over omitted), omitted over negation, and Task
    A per denial location and per chosen finding. ``groups``: each item's study."""
    s_r, s_n, s_o = ((image * t).sum(axis=1) for t in (report, negation, omitted))
    task_a = _pair_hits(s_r, s_n)
    return {
        "task_a": _proportion(task_a, groups, settings),
        "task_b": _proportion(_pair_hits(s_r, s_o), groups, settings),
        "omitted_over_negation": _proportion(_pair_hits(s_o, s_n), groups, settings),
        "task_a_by_location": _by(locations, task_a, groups, settings),
        "task_a_by_finding": _by(chosen, task_a, groups, settings),
    }


def score(
    loaded: Loaded,
    data: EvalData,
    prompts: dict[str, dict[str, list[str]]],
    settings: ScoreSettings = ScoreSettings(),
    *,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every figure for one model on ``data``: a JSON-ready dict, and the curves for the plots
    (``{"roc": {observation: (fpr, tpr)}}``). Raises ValueError for a bad ``settings.uncertain``."""
    if settings.uncertain not in UNCERTAIN:
        raise ValueError(f"uncertain={settings.uncertain!r}: choose one of {', '.join(UNCERTAIN)}")
    timings: dict[str, float] = {}
    test = data.test

    def tick(what: str, total: int) -> Callable[[int], None] | None:
        if progress is None:
            return None
        done = [0]

        def step(n: int) -> None:
            done[0] += n
            progress(what, done[0], total)

        return step

    start = time.perf_counter()
    image_emb, good = encode_images(
        loaded, test.pngs, batch_size=settings.batch_size, progress=tick("images", len(test))
    )
    align_emb = {}
    for source, pngs in data.align_pngs.items():
        align_emb[source], _ = encode_images(loaded, pngs, batch_size=settings.batch_size)
    timings["encode_images"] = time.perf_counter() - start

    # Every distinct text once: reports, prompts, CXR-Align texts, probe sentences.
    start = time.perf_counter()
    texts: dict[str, int] = {}

    def want(items: Iterable[str]) -> None:
        for t in items:
            texts.setdefault(t, len(texts))

    want(test.texts)
    for sides in prompts.values():
        want(sides["positive"])
        want(sides["negative"])
    for items in data.align:
        want(items.report)
        want(items.negation)
        want(items.omitted)
    if data.probe is not None:
        want(data.probe.original)
        want(data.probe.flipped)
    text_list = list(texts)
    text_emb = encode_texts(
        loaded, text_list, batch_size=settings.batch_size, progress=tick("texts", len(text_list))
    )
    timings["encode_texts"] = time.perf_counter() - start

    def emb(items: Sequence[str]) -> np.ndarray:
        return text_emb[[texts[t] for t in items]]

    scale = float(loaded.model.scale().detach().cpu())
    keep = np.flatnonzero(good)
    if not len(keep):
        raise ValueError(f"none of the {len(test)} test images decodes: rebuild the shards (stage=shards)")
    groups = np.array(test.report_ids, dtype=object)[keep]
    result: dict[str, Any] = {
        "samples": len(test),
        "undecodable_images": int((~good).sum()),
        "logit_scale": scale,
    }

    # Zero-shot classification.
    start = time.perf_counter()
    names = [n for n in OBSERVATIONS if n in prompts]
    truth = _truth(
        test.labels[keep][:, [OBSERVATIONS.index(n) for n in names]],
        settings.uncertain,
        None if test.unlabelled is None else test.unlabelled[keep],
    )
    # The pair softmax's probability of the positive class is sigmoid(scale * (s_pos - s_neg)):
    # the logit difference ranks the same and never saturates into ties (at scale 100 the
    # float64 softmax is exactly 1 beyond a cosine gap of 0.37).
    probs = np.zeros((len(keep), len(names)))
    for k, name in enumerate(names):
        pos = emb(prompts[name]["positive"]).mean(axis=0)
        neg = emb(prompts[name]["negative"]).mean(axis=0)
        direction = pos / np.linalg.norm(pos) - neg / np.linalg.norm(neg)
        probs[:, k] = scale * (image_emb[keep].astype(np.float64) @ direction)
    boot = (
        metrics.bootstrap_aurocs(truth, probs, groups=groups, n=settings.bootstrap, seed=settings.seed)
        if settings.bootstrap
        else np.full((0, len(names)), np.nan)
    )
    observations, curves = {}, {}
    for k, name in enumerate(names):
        y = truth[:, k]
        ok = ~np.isnan(y)
        value = metrics.auroc(y[ok], probs[ok, k])
        lo, hi = (
            metrics.interval(boot[:, k], settings.level) if not math.isnan(value) else (math.nan, math.nan)
        )
        observations[name] = {
            "auroc": _nan(value),
            "ci": [_nan(lo), _nan(hi)],
            "positives": int((y[ok] == 1).sum()),
            "negatives": int((y[ok] == 0).sum()),
            "excluded": int((~ok).sum()),
            "in_mean": bool(
                not math.isnan(value)
                and min((y[ok] == 1).sum(), (y[ok] == 0).sum()) >= settings.min_positives
            ),
        }
        if not math.isnan(value):
            curves[name] = metrics.roc_curve(y[ok], probs[ok, k])

    def mean_of(subset: Sequence[str]) -> dict[str, Any]:
        cols = [k for k, n in enumerate(names) if n in subset and observations[n]["in_mean"]]
        if not cols:
            return {"auroc": None, "ci": [None, None], "observations": []}
        value = float(np.mean([observations[names[k]]["auroc"] for k in cols]))
        per = boot[:, cols]
        lo, hi = metrics.interval(
            per[~np.isnan(per).any(axis=1)].mean(axis=1) if len(per) else per, settings.level
        )
        return {"auroc": value, "ci": [_nan(lo), _nan(hi)], "observations": [names[k] for k in cols]}

    mean = mean_of(names)
    result["zero_shot"] = {
        "observations": observations,
        "mean": mean,
        "chexpert5": mean_of(CHEXPERT5),
        "truth": test.truth,
        "uncertain": settings.uncertain,
        "bootstrap": settings.bootstrap,
        # resamples that held both classes of every observation in the mean (the mean's interval)
        "bootstrap_used": int(
            (~np.isnan(boot[:, [names.index(n) for n in mean["observations"]]]).any(axis=1)).sum()
        ),
        "min_positives": settings.min_positives,
    }
    timings["zero_shot"] = time.perf_counter() - start

    # Retrieval over distinct report texts.
    start = time.perf_counter()
    distinct = list(dict.fromkeys(test.texts[i] for i in keep))
    column = {t: j for j, t in enumerate(distinct)}
    sim = image_emb[keep] @ emb(distinct).T
    correct = np.zeros(sim.shape, bool)
    correct[np.arange(len(keep)), [column[test.texts[i]] for i in keep]] = True
    retrieval = {}
    for direction, s, c in (("image_to_text", sim, correct), ("text_to_image", sim.T, correct.T)):
        ranks = metrics.retrieval_ranks(s, c)
        retrieval[direction] = {
            **{f"recall@{k}": _nan(v) for k, v in metrics.recall_at_k(ranks, settings.ks).items()},
            "median_rank": float(np.median(ranks)),
            "mean_rank": float(np.mean(ranks)),
            "queries": int(s.shape[0]),
            "candidates": int(s.shape[1]),
        }
    result["retrieval"] = retrieval
    timings["retrieval"] = time.perf_counter() - start

    # CXR-Align Tasks A and B.
    start = time.perf_counter()
    result["cxr_align"] = {}
    for items in data.align:
        images = align_emb.get(items.source, image_emb)[items.image] if len(items) else np.zeros((0, 1))
        valid = ~np.isnan(images).any(axis=1) if len(items) else np.zeros(0, bool)

        def pick(values: list[str], valid=valid) -> list[str]:
            return [t for t, v in zip(values, valid, strict=True) if v]

        figures = align_figures(
            images[valid],
            emb(pick(items.report)),
            emb(pick(items.negation)),
            emb(pick(items.omitted)),
            locations=pick(items.location),
            chosen=pick(items.chosen),
            groups=pick(items.group),
            settings=settings,
        )
        result["cxr_align"][items.source] = {**figures, "rows": items.rows, "unmatched_rows": items.unmatched}
    timings["cxr_align"] = time.perf_counter() - start

    # Text-only negation probe.
    start = time.perf_counter()
    if data.probe is not None:
        p = data.probe
        valid = good[p.image] if len(p) else np.zeros(0, bool)
        idx = np.array(p.image, np.int64)[valid]
        s_orig = (image_emb[idx] * emb([t for t, v in zip(p.original, valid, strict=True) if v])).sum(axis=1)
        s_flip = (image_emb[idx] * emb([t for t, v in zip(p.flipped, valid, strict=True) if v])).sum(axis=1)
        hits = _pair_hits(s_orig, s_flip)
        groups = [g for g, v in zip(p.group, valid, strict=True) if v]
        result["negation_probe"] = {
            **_proportion(hits, groups, settings),
            "by_method": _by([m for m, v in zip(p.method, valid, strict=True) if v], hits, groups, settings),
            "by_direction": _by(
                [d for d, v in zip(p.direction, valid, strict=True) if v], hits, groups, settings
            ),
            "rows": p.rows,
            "unmatched_rows": p.unmatched,
        }
    timings["negation_probe"] = time.perf_counter() - start
    result["seconds"] = timings
    return result, {"roc": curves}
