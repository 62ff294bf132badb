"""Writes a demo dump in the MIMIC-CXR 2.0.0 layout of FORMATS.md, with its truth beside it.

The dump is generated into ``<root>.tmp-<pid>`` and renamed to ``root`` only when complete, so an
interrupted run never leaves something that looks like a finished dump. Independent random
streams (structure, text, DICOM selection, NegBio noise, injection) keep a change of one argument
from reshuffling the rest: the same seed gives the same reports with or without
``inject_bad_rows`` and whatever ``dicom_fraction``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import gzip
import io
import json
import logging
import math
import multiprocessing
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError, did_you_mean
from pipeline.demo import dicom as dcm
from pipeline.demo import draw
from pipeline.demo.inject import DICOM_KINDS, INJECTED_KINDS, REPORT_KINDS, UNLABELED_KINDS, corrupt_report
from pipeline.demo.phrases import OBSERVATIONS, load_phrase_bank
from pipeline.demo.text import ComposedReport, ReportWriter, StudyContext

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
METADATA_COLUMNS: tuple[str, ...] = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
SPLIT_COLUMNS: tuple[str, ...] = ("dicom_id", "study_id", "subject_id", "split")
LABEL_COLUMNS: tuple[str, ...] = ("subject_id", "study_id", *OBSERVATIONS)
RECORD_COLUMNS: tuple[str, ...] = ("subject_id", "study_id", "dicom_id", "path")
STUDY_COLUMNS: tuple[str, ...] = ("subject_id", "study_id", "path")
TRUTH_DIR = "demo_truth"
# demo_truth/drawn.csv.gz: one row per thing an image shows (images without a file included).
DRAWN_COLUMNS: tuple[str, ...] = (
    "dicom_id",
    "subject_id",
    "study_id",
    "view_position",
    "finding",
    "side",
    "zone",
    "size",
    "status",
    "detail",
)
FILES = {
    "metadata": "mimic-cxr-2.0.0-metadata.csv.gz",
    "split": "mimic-cxr-2.0.0-split.csv.gz",
    "chexpert": "mimic-cxr-2.0.0-chexpert.csv.gz",
    "negbio": "mimic-cxr-2.0.0-negbio.csv.gz",
    "records": "cxr-record-list.csv.gz",
    "studies": "cxr-study-list.csv.gz",
}
_VIEW_MEANING = {
    "AP": "antero-posterior",
    "PA": "postero-anterior",
    "LATERAL": "lateral",
    "LL": "left lateral",
    "": "",
}
_SIZES = ((128, 128), (128, 104), (128, 96), (104, 128), (112, 112), (64, 64))
# image_size=full: each small shape stands for one of MIMIC-CXR's common full-size shapes (rows, columns).
_FULL_SIZES = {
    (128, 128): (2544, 3056),
    (128, 104): (3056, 2544),
    (128, 96): (3050, 2539),
    (104, 128): (2539, 3050),
    (112, 112): (3000, 2500),
    (64, 64): (2500, 3000),
}
IMAGE_SIZES = ("small", "full")
# dcm: uncompressed DICOM; dcm_j2k: JPEG 2000 lossless DICOM; jpg: MIMIC-CXR-JPG's <dicom_id>.jpg
IMAGE_FORMATS = ("dcm", "dcm_j2k", "jpg")
_SPLITS = (("train", 0.90), ("validate", 0.04), ("test", 0.06))
_EPOCH = dt.date(2110, 1, 1).toordinal()


@dataclass(frozen=True)
class DemoSummary:
    """What :func:`generate_demo_dump` wrote.

    ``reports`` counts rows of the study list (``n_reports`` plus injected duplicates),
    ``report_files`` the ``.txt`` files, ``images`` the metadata rows, ``dicoms`` the valid
    ``.dcm`` files, ``jpgs`` the ``.jpg`` files, ``injected`` the rows of ``demo_truth/injected.csv``.
    """

    root: str
    reports: int
    report_files: int
    subjects: int
    images: int
    dicoms: int
    injected: int
    seconds: float
    jpgs: int = 0  # .jpg files (image_format="jpg")


@dataclass(slots=True)
class _Image:
    dicom_id: str
    view: str
    rows: int
    columns: int
    orientation: str
    modality: str
    photometric: str
    bits_stored: int
    has_dcm: bool


@dataclass(slots=True)
class _Study:
    subject_id: str
    study_id: str
    date: str  # YYYYMMDD
    seconds: float  # time of day
    procedure: str
    portable: bool
    has_prior: bool
    images: list[_Image]
    split: str


@dataclass(frozen=True, slots=True)
class _Injected:
    kind: str
    subject_id: str
    study_id: str
    dicom_id: str
    path: str
    detail: str


def report_path(subject_id: str, study_id: str) -> str:
    """``files/pXX/pXXXXXXXX/sXXXXXXXX.txt``, relative to the dump root."""
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}.txt"


def dicom_path(subject_id: str, study_id: str, dicom_id: str) -> str:
    """``files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.dcm``, relative to the dump root."""
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.dcm"


def _float_time(seconds: float) -> str:
    """MIMIC's metadata StudyTime: HHMMSS.fff read as a float (no leading zero, trailing zeros cut)."""
    h, rem = divmod(int(seconds), 3600)
    m, s = divmod(rem, 60)
    ms = int(round((seconds - int(seconds)) * 1000)) % 1000
    frac = f"{ms:03d}".rstrip("0") or "0"
    return f"{h * 10000 + m * 100 + s}.{frac}"


def _dicom_time(seconds: float) -> str:
    h, rem = divmod(int(seconds), 3600)
    m, s = divmod(rem, 60)
    ms = int(round((seconds - int(seconds)) * 1000)) % 1000
    return f"{h:02d}{m:02d}{s:02d}.{ms:03d}"


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _plan(n_reports: int, seed: int, images_per_study: float, dicom_fraction: float) -> list[list[_Study]]:
    """Subjects (sorted by id), each with its studies in chronological order."""
    rng = random.Random(f"clip2clinic-demo/{seed}/structure")
    pick = random.Random(f"clip2clinic-demo/{seed}/dicom-selection")
    counts: list[int] = []
    total = 0
    while total < n_reports:
        c = min(1 + int(rng.expovariate(1 / 2.97)), 60, n_reports - total)  # mean ~3.5 like MIMIC-CXR
        counts.append(c)
        total += c
    subject_ids = sorted(rng.sample(range(10_000_000, 20_000_000), len(counts)))
    study_ids = rng.sample(range(50_000_000, 60_000_000), n_reports)
    splits = rng.choices([s for s, _ in _SPLITS], weights=[w for _, w in _SPLITS], k=len(counts))
    if len(counts) >= 3:  # a small demo still has every split
        for name, i in (("validate", 1), ("test", 2)):
            if name not in splits:
                splits[i] = name
    extra = images_per_study - 1.0
    subjects: list[list[_Study]] = []
    next_study = 0
    for subject_id, count, split in zip(subject_ids, counts, splits, strict=True):
        sid = str(subject_id)
        day = _EPOCH + rng.randrange(0, 30_000)
        studies: list[_Study] = []
        for j in range(count):
            day += rng.randint(0, 400) if j else 0
            portable = rng.random() < 0.55
            n_images = 1 + _poisson(rng, extra)
            if portable:
                r = rng.random()
                procedure = (
                    "CHEST (PORTABLE AP)"
                    if r < 0.85
                    else ("CHEST PORT. LINE PLACEMENT" if r < 0.95 else "CHEST (SINGLE VIEW)")
                )
                views = ["AP"] + [rng.choice(("AP", "AP", "LL", "LATERAL")) for _ in range(n_images - 1)]
            else:
                procedure = "CHEST (PA AND LAT)" if rng.random() < 0.88 else "CHEST (PRE-OP PA & LAT)"
                views = ["PA", "LATERAL" if rng.random() < 0.7 else "LL"][:n_images]
                views += [rng.choice(("PA", "LATERAL", "LL", "")) for _ in range(n_images - len(views))]
            images = []
            for view in views:
                if rng.random() < 0.03:
                    view = ""  # real metadata has images without a view position
                rows, columns = rng.choice(_SIZES)
                if view in ("PA", "LATERAL", "LL"):
                    orientation = "Erect" if rng.random() < 0.9 else ""
                else:
                    orientation = rng.choice(("Recumbent", "Recumbent", "Erect", ""))
                bits = 12 if rng.random() < 0.75 else 8
                digits = f"{rng.getrandbits(160):040x}"
                images.append(
                    _Image(
                        dicom_id=f"{digits[:8]}-{digits[8:16]}-{digits[16:24]}-{digits[24:32]}-{digits[32:]}",
                        view=view,
                        rows=rows,
                        columns=columns,
                        orientation=orientation,
                        modality="DX" if rng.random() < 0.8 else "CR",
                        photometric="MONOCHROME1" if rng.random() < 0.1 else "MONOCHROME2",
                        bits_stored=bits,
                        has_dcm=pick.random() < dicom_fraction,
                    )
                )
            studies.append(
                _Study(
                    subject_id=sid,
                    study_id=str(study_ids[next_study]),
                    date=dt.date.fromordinal(day).strftime("%Y%m%d"),
                    seconds=rng.randrange(0, 86_400_000) / 1000,
                    procedure=procedure,
                    portable=portable,
                    has_prior=j > 0,
                    images=images,
                    split=split,
                )
            )
            next_study += 1
        subjects.append(studies)
    return subjects


@contextlib.contextmanager
def _gz_csv(path: Path, columns: tuple[str, ...], level: int = 6) -> Iterator[Any]:
    """A csv writer into a gzip file whose bytes depend only on the rows (no name, mtime 0)."""
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=level) as gz,
        io.TextIOWrapper(gz, encoding="utf-8", newline="") as text,
    ):
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(columns)
        yield writer


@contextlib.contextmanager
def _plain_csv(path: Path, columns: tuple[str, ...]) -> Iterator[Any]:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        yield writer


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def _negbio(
    labels: tuple[float | None, ...], rng: random.Random
) -> tuple[tuple[float | None, ...], str | None]:
    """NegBio's row: CheXpert's with, for about 4% of studies, one observation read differently."""
    if rng.random() >= 0.04:
        return labels, None
    candidates = [i for i, v in enumerate(labels) if OBSERVATIONS[i] != "No Finding"]
    i = rng.choice(candidates)
    old = labels[i]
    # The two labelers differ mostly on hedges and on what counts as mentioned.
    new = {1.0: -1.0, -1.0: 1.0, 0.0: None, None: 0.0}[old]
    values = list(labels)
    values[i] = new
    nf = OBSERVATIONS.index("No Finding")
    sd = OBSERVATIONS.index("Support Devices")
    positive = any(v in (1.0, -1.0) for j, v in enumerate(values) if j not in (nf, sd))
    values[nf] = None if positive else 1.0
    return tuple(values), OBSERVATIONS[i]


def _validate(
    n_reports: int,
    seed: int,
    images_per_study: float,
    dicom_fraction: float,
    inject: bool,
    image_size: str = "small",
    image_format: str = "dcm",
    image_workers: int | None = None,
) -> None:
    def bad(message: str) -> PipelineError:
        return PipelineError("demo_bad_argument", message)

    if isinstance(n_reports, bool) or not isinstance(n_reports, int) or not 1 <= n_reports <= 5_000_000:
        raise bad(f"n_reports must be an integer from 1 to 5,000,000, got {n_reports!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise bad(f"seed must be an integer, got {seed!r}")
    if not isinstance(images_per_study, int | float) or not 1.0 <= images_per_study <= 20.0:
        raise bad(
            f"images_per_study must be a number from 1 to 20 (mean images per study), got {images_per_study!r}"
        )
    if not isinstance(dicom_fraction, int | float) or not 0.0 <= dicom_fraction <= 1.0:
        raise bad(f"dicom_fraction must be a number from 0 to 1, got {dicom_fraction!r}")
    if inject and n_reports < 20:
        raise bad(
            f"inject_bad_rows needs n_reports >= 20 to leave clean reports beside the bad ones, got {n_reports}"
        )
    for name, value, allowed in (
        ("image_size", image_size, IMAGE_SIZES),
        ("image_format", image_format, IMAGE_FORMATS),
    ):
        if value not in allowed:
            raise bad(
                f"{name} must be one of {', '.join(allowed)}, got {value!r}."
                + did_you_mean(str(value), allowed)
            )
    if image_workers is not None and (
        isinstance(image_workers, bool) or not isinstance(image_workers, int) or not 1 <= image_workers <= 256
    ):
        raise bad(
            f"image_workers must be an integer from 1 to 256 (or None: automatic), got {image_workers!r}"
        )


def generate_demo_dump(
    root: str | os.PathLike[str],
    *,
    n_reports: int,
    seed: int = 0,
    inject_bad_rows: bool = False,
    images_per_study: float = 1.65,
    dicom_fraction: float = 1.0,
    progress: bool = False,
    image_size: str = "small",
    image_format: str = "dcm",
    image_workers: int | None = None,
) -> DemoSummary:
    """Write a synthetic MIMIC-CXR 2.0.0 dump of ``n_reports`` studies under ``root``.

    Same arguments, same bytes. ``root`` must not exist or be an empty folder; the dump appears
    there complete or not at all. The truth (labels per study, every asserted mention, injected
    problems, what each image shows) goes to ``root/demo_truth/``, which readers of the dump must
    ignore.

    Images show what their study's report states (``pipeline.demo.draw``). ``image_size``:
    ``small`` (64 to 128 pixels a side, 8 or 12 bits stored) or ``full`` (about 2,500 x 3,000,
    12 bits stored, as MIMIC-CXR's; the metadata's Rows and Columns say so). ``image_format``:
    ``dcm`` (uncompressed DICOM), ``dcm_j2k`` (JPEG 2000 lossless DICOM) or ``jpg`` (MIMIC-CXR-JPG:
    ``<dicom_id>.jpg``, 8-bit, histogram-equalised, in the same folders, no ``.dcm``; injected
    corrupt DICOMs stay ``.dcm``). ``image_workers``: processes writing images (None: one for
    small images, up to 8 for full-size ones). Neither option changes a byte of the text, the
    labels or the mentions.

    Raises ``PipelineError``: ``demo_bad_argument`` for an argument out of range,
    ``demo_root_exists`` when ``root`` holds files, ``demo_needs_pydicom`` when DICOMs are asked
    for without pydicom installed.
    """
    _validate(
        n_reports,
        seed,
        images_per_study,
        dicom_fraction,
        inject_bad_rows,
        image_size,
        image_format,
        image_workers,
    )
    start = time.perf_counter()
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise PipelineError(
            "demo_root_exists", f"{root} already exists and is not empty: remove it or choose another out="
        )
    if dicom_fraction > 0 or inject_bad_rows:
        dcm._pydicom()  # fail before any work when pydicom is missing
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    if tmp.exists():  # left by an earlier run of this very process
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        counts = _write_dump(
            tmp,
            n_reports=n_reports,
            seed=seed,
            inject=inject_bad_rows,
            images_per_study=float(images_per_study),
            dicom_fraction=float(dicom_fraction),
            progress=progress,
            image_size=image_size,
            image_format=image_format,
            image_workers=image_workers,
        )
        if root.exists():
            root.rmdir()  # empty, checked above
        os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = DemoSummary(root=str(root), seconds=round(time.perf_counter() - start, 3), **counts)
    logger.info("demo dump: %s", summary)
    return summary


def _progress_callback(total: int, enabled: bool) -> tuple[Callable[[int], None], Callable[[], None]]:
    if not enabled:
        return (lambda n: None), (lambda: None)
    from rich.console import Console
    from rich.progress import Progress

    bar = Progress(console=Console(stderr=True), transient=True)
    task = bar.add_task("demo reports", total=total)
    bar.start()
    return (lambda n: bar.update(task, completed=n)), bar.stop


def _write_dump(
    out: Path,
    *,
    n_reports: int,
    seed: int,
    inject: bool,
    images_per_study: float,
    dicom_fraction: float,
    progress: bool,
    image_size: str = "small",
    image_format: str = "dcm",
    image_workers: int | None = None,
) -> dict[str, int]:
    bank = load_phrase_bank()
    subjects = _plan(n_reports, seed, images_per_study, dicom_fraction)
    studies = [s for subject in subjects for s in subject]
    if image_size == "full":  # after the plan: its random stream is the same either way
        for study in studies:
            for im in study.images:
                im.rows, im.columns = _FULL_SIZES[(im.rows, im.columns)]
                im.bits_stored = 12
    scenes: dict[str, tuple[draw.Drawn, ...]] = {}  # study_id -> what its images show
    writer = ReportWriter(bank, random.Random(f"clip2clinic-demo/{seed}/text"))
    negbio_rng = random.Random(f"clip2clinic-demo/{seed}/negbio")
    truth = out / TRUTH_DIR
    truth.mkdir()
    (out / "files").mkdir()

    # Injection targets come from their own stream, so clean studies read the same either way.
    inj_rng = random.Random(f"clip2clinic-demo/{seed}/inject")
    report_targets: dict[str, str] = {}  # study_id -> kind
    image_targets: dict[str, str] = {}  # dicom_id -> kind
    duplicates: list[tuple[_Study, str]] = []  # (source study, other subject)
    if inject:
        k = max(1, min(5, n_reports // 100))
        chosen = inj_rng.sample(range(len(studies)), k * (len(REPORT_KINDS) + 1) + 1)
        for i, kind in enumerate(REPORT_KINDS):
            for idx in chosen[i * k : (i + 1) * k]:
                report_targets[studies[idx].study_id] = kind
        spare = [studies[idx] for idx in chosen[len(REPORT_KINDS) * k :]]
        for source in spare[:k]:
            others = [s for s in subjects if s[0].subject_id != source.subject_id]
            if others:
                duplicates.append((source, inj_rng.choice(others)[0].subject_id))
        clean_images = [im for s in studies if s.study_id not in report_targets for im in s.images]
        for i, im in enumerate(inj_rng.sample(clean_images, min(len(clean_images), k * len(DICOM_KINDS)))):
            image_targets[im.dicom_id] = DICOM_KINDS[i % len(DICOM_KINDS)]

    injected: list[_Injected] = []
    label_rows: list[tuple[Any, ...]] = []  # (subject_id, study_id, kind, section, labels, negbio)
    disagreements: list[tuple[str, str, str, Any, Any]] = []
    report_files = 0
    update, stop = _progress_callback(len(studies), progress)
    made_dirs: set[str] = set()
    mention_columns = (
        "subject_id",
        "study_id",
        "section",
        "finding",
        "observation",
        "status",
        "kind",
        "labeled",
        "sentence",
    )

    def emit_mentions(w: Any, study: _Study, report: ComposedReport, subject_id: str) -> None:
        for m in report.mentions:
            w.writerow(
                (
                    subject_id,
                    study.study_id,
                    m.section,
                    bank.findings[m.finding].name,
                    m.observation or "",
                    m.status,
                    m.kind,
                    int(m.labeled),
                    m.sentence,
                )
            )

    try:
        with _gz_csv(truth / "mentions.csv.gz", mention_columns, level=1) as mentions_out:
            done = 0
            for subject in subjects:
                state = writer.new_subject()
                subject_dir = f"files/p{subject[0].subject_id[:2]}/p{subject[0].subject_id}"
                top = subject_dir.rsplit("/", 1)[0]
                if top not in made_dirs:
                    (out / top).mkdir()
                    made_dirs.add(top)
                (out / subject_dir).mkdir()
                for study in subject:
                    ctx = StudyContext(
                        procedure=study.procedure,
                        portable=study.portable,
                        has_prior=study.has_prior,
                        line_placement="LINE PLACEMENT" in study.procedure,
                    )
                    report = writer.compose(state, ctx)
                    # Each study's own draw stream: picks only places the report leaves open.
                    drawn = draw.scene(
                        report.mentions, random.Random(f"clip2clinic-demo/{seed}/draw/{study.study_id}")
                    )
                    if drawn:
                        scenes[study.study_id] = drawn
                    negbio, changed = _negbio(report.labels, negbio_rng)
                    kind = report_targets.get(study.study_id)
                    path = report_path(study.subject_id, study.study_id)
                    if kind is None:
                        _write(out / path, report.text.encode())
                        report_files += 1
                    else:
                        data = corrupt_report(kind, report.text, inj_rng)
                        if data is not None:
                            _write(out / path, data)
                            report_files += 1
                        detail = {
                            "long_report": f"{len(data or b'')} bytes",
                            "undecodable_report": "bytes 81 8D 8F 90 9D at the end of the first line",
                        }.get(kind, "")
                        injected.append(_Injected(kind, study.subject_id, study.study_id, "", path, detail))
                    if kind not in UNLABELED_KINDS:
                        label_rows.append(
                            (
                                study.subject_id,
                                study.study_id,
                                report.kind,
                                report.label_section,
                                report.labels,
                                negbio,
                            )
                        )
                        if changed:
                            disagreements.append(
                                (
                                    study.subject_id,
                                    study.study_id,
                                    changed,
                                    report.labels[OBSERVATIONS.index(changed)],
                                    negbio[OBSERVATIONS.index(changed)],
                                )
                            )
                        emit_mentions(mentions_out, study, report, study.subject_id)
                    done += 1
                    if done % 2000 == 0:
                        update(done)
            dup_writer = ReportWriter(bank, random.Random(f"clip2clinic-demo/{seed}/inject-text"))
            for source, other in duplicates:
                report = dup_writer.compose(
                    dup_writer.new_subject(),
                    StudyContext(procedure=source.procedure, portable=source.portable, has_prior=False),
                )
                path = report_path(other, source.study_id)
                _write(out / path, report.text.encode())
                report_files += 1
                injected.append(
                    _Injected(
                        "duplicate_study",
                        other,
                        source.study_id,
                        "",
                        path,
                        f"study also under subject {source.subject_id}",
                    )
                )
                label_rows.append(
                    (other, source.study_id, report.kind, report.label_section, report.labels, report.labels)
                )
                emit_mentions(mentions_out, source, report, other)
    finally:
        stop()

    dicoms, jpgs = _write_images(
        out, studies, seed, image_targets, injected, inj_rng, scenes, image_format, image_size, image_workers
    )
    _write_tables(out, studies, duplicates, label_rows)
    _write_truth(out, studies, label_rows, disagreements, injected, scenes, image_format)
    counts = {
        "reports": len(studies) + len(duplicates),
        "report_files": report_files,
        "subjects": len(subjects),
        "images": sum(len(s.images) for s in studies),
        "dicoms": dicoms,
        "jpgs": jpgs,
        "injected": len(injected),
    }
    params = {
        "generator": "pipeline.demo",
        "generator_version": GENERATOR_VERSION,
        "layout": "mimic-cxr-2.0.0",
        "arguments": {
            "n_reports": n_reports,
            "seed": seed,
            "inject_bad_rows": inject,
            "images_per_study": images_per_study,
            "dicom_fraction": dicom_fraction,
            "image_size": image_size,
            "image_format": image_format,
        },
        "counts": counts,
    }
    (truth / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return counts


def _write_image(task: tuple[str, dcm.DicomSpec, bool]) -> None:
    """Write one valid image file (a DICOM, or a JPG when ``task[2]``); runs in worker processes too."""
    path, spec, jpg = task
    _write(Path(path), dcm.jpg_bytes(spec) if jpg else dcm.dicom_bytes(spec))


def _image_workers(image_size: str, image_workers: int | None, n_files: int) -> int:
    if image_workers is None:
        image_workers = 1 if image_size == "small" else min(os.cpu_count() or 1, 8)
    return max(1, min(image_workers, n_files // 4))  # a pool for a handful of files costs more than it saves


def _write_images(
    out: Path,
    studies: list[_Study],
    seed: int,
    targets: dict[str, str],
    injected: list[_Injected],
    rng: random.Random,
    scenes: dict[str, tuple[draw.Drawn, ...]],
    image_format: str = "dcm",
    image_size: str = "small",
    image_workers: int | None = None,
) -> tuple[int, int]:
    """Write the selected images (and the corrupt DICOMs); returns the numbers of valid DICOMs and JPGs.

    Corrupt DICOMs are made here in study order (they draw on the injection stream) and stay
    uncompressed ``.dcm`` files whatever ``image_format``; valid files go to worker processes when
    there are several.
    """
    jpg = image_format == "jpg"
    compression = "jpeg2000" if image_format == "dcm_j2k" else ""
    tasks: list[tuple[str, dcm.DicomSpec, bool]] = []
    for study in studies:
        scene = scenes.get(study.study_id, ())
        for number, im in enumerate(study.images, 1):
            kind = targets.get(im.dicom_id)
            if not im.has_dcm and kind is None:
                continue
            path = dicom_path(study.subject_id, study.study_id, im.dicom_id)
            (out / path).parent.mkdir(exist_ok=True)
            spec = dcm.DicomSpec(
                seed=seed,
                dicom_id=im.dicom_id,
                subject_id=study.subject_id,
                study_id=study.study_id,
                image_number=number,
                rows=im.rows,
                columns=im.columns,
                view=im.view,
                modality=im.modality,
                photometric=im.photometric,
                bits_stored=im.bits_stored,
                study_date=study.date,
                study_time=_dicom_time(study.seconds),
                procedure=study.procedure,
                findings=draw.projected(scene, im.view in ("LATERAL", "LL")),
            )
            if kind is None:
                if jpg:
                    path = path[: -len(".dcm")] + ".jpg"
                else:
                    spec = dataclasses.replace(spec, compression=compression)
                tasks.append((str(out / path), spec, jpg))
                continue
            if kind == "random_bytes_dicom":
                data = dcm.random_bytes(rng)
            elif kind == "truncated_header_dicom":
                data = dcm.truncated_header(dcm.dicom_bytes(spec))
            else:
                pixel_bytes = im.rows * im.columns * (2 if im.bits_stored > 8 else 1)
                data = dcm.truncated_pixels(dcm.dicom_bytes(spec), pixel_bytes)
            _write(out / path, data)
            im.has_dcm = False  # images.csv lists valid files only
            injected.append(
                _Injected(kind, study.subject_id, study.study_id, im.dicom_id, path, f"{len(data)} bytes")
            )
    workers = _image_workers(image_size, image_workers, len(tasks))
    if workers == 1:
        for task in tasks:
            _write_image(task)
    else:  # spawned, not forked: the caller may be a process with threads (a Dask client)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for _ in pool.map(_write_image, tasks, chunksize=max(1, min(16, len(tasks) // (4 * workers)))):
                pass
    return (0, len(tasks)) if jpg else (len(tasks), 0)


def _write_tables(
    out: Path,
    studies: list[_Study],
    duplicates: list[tuple[_Study, str]],
    label_rows: list[tuple[Any, ...]],
) -> None:
    """The six CSVs of the MIMIC-CXR layout, rows ordered by subject then study."""
    ordered = sorted(studies, key=lambda s: (s.subject_id, s.study_id))
    with (
        _gz_csv(out / FILES["metadata"], METADATA_COLUMNS) as meta,
        _gz_csv(out / FILES["split"], SPLIT_COLUMNS) as split,
        _gz_csv(out / FILES["records"], RECORD_COLUMNS) as records,
    ):
        for s in ordered:
            time_text = _float_time(s.seconds)
            for im in s.images:
                meta.writerow(
                    (
                        im.dicom_id,
                        s.subject_id,
                        s.study_id,
                        s.procedure,
                        im.view,
                        im.rows,
                        im.columns,
                        s.date,
                        time_text,
                        s.procedure,
                        _VIEW_MEANING[im.view],
                        im.orientation,
                    )
                )
                split.writerow((im.dicom_id, s.study_id, s.subject_id, s.split))
                records.writerow(
                    (s.subject_id, s.study_id, im.dicom_id, dicom_path(s.subject_id, s.study_id, im.dicom_id))
                )
    study_rows = [(s.subject_id, s.study_id) for s in studies] + [
        (other, src.study_id) for src, other in duplicates
    ]
    with _gz_csv(out / FILES["studies"], STUDY_COLUMNS) as w:
        for subject_id, study_id in sorted(study_rows):
            w.writerow((subject_id, study_id, report_path(subject_id, study_id)))
    rows = sorted(label_rows, key=lambda r: (r[0], r[1]))
    with (
        _gz_csv(out / FILES["chexpert"], LABEL_COLUMNS) as chexpert,
        _gz_csv(out / FILES["negbio"], LABEL_COLUMNS) as negbio,
    ):
        for subject_id, study_id, _kind, _section, labels, negbio_labels in rows:
            chexpert.writerow((subject_id, study_id, *labels))
            negbio.writerow((subject_id, study_id, *negbio_labels))


def _write_truth(
    out: Path,
    studies: list[_Study],
    label_rows: list[tuple[Any, ...]],
    disagreements: list[tuple[str, str, str, Any, Any]],
    injected: list[_Injected],
    scenes: dict[str, tuple[draw.Drawn, ...]] | None = None,
    image_format: str = "dcm",
) -> None:
    truth = out / TRUTH_DIR
    scenes = scenes or {}
    file_format = "jpg" if image_format == "jpg" else "dcm"
    rows = sorted(label_rows, key=lambda r: (r[0], r[1]))
    with _plain_csv(
        truth / "labels.csv", ("subject_id", "study_id", "report_kind", "label_section", *OBSERVATIONS)
    ) as w:
        for subject_id, study_id, kind, section, labels, _negbio in rows:
            w.writerow((subject_id, study_id, kind, section, *labels))
    with _plain_csv(
        truth / "negbio_disagreements.csv", ("subject_id", "study_id", "observation", "chexpert", "negbio")
    ) as w:
        w.writerows(sorted(disagreements))
    with _plain_csv(
        truth / "injected.csv",
        ("kind", "reason_code", "subject_id", "study_id", "dicom_id", "path", "detail"),
    ) as w:
        for item in sorted(injected, key=lambda i: (i.kind, i.subject_id, i.study_id, i.dicom_id)):
            w.writerow(
                (
                    item.kind,
                    INJECTED_KINDS[item.kind],
                    item.subject_id,
                    item.study_id,
                    item.dicom_id,
                    item.path,
                    item.detail,
                )
            )
    with (
        _gz_csv(
            truth / "images.csv.gz",
            (
                "dicom_id",
                "subject_id",
                "study_id",
                "has_dcm",
                "view_position",
                "rows",
                "columns",
                "modality",
                "photometric_interpretation",
                "bits_stored",
                "file_format",  # dcm, jpg, or empty: no valid image file
                "drawn",  # what the image shows: finding:side:zone:status, ";"-separated (pipeline.demo.draw)
            ),
        ) as w,
        _gz_csv(truth / "drawn.csv.gz", DRAWN_COLUMNS) as long,
    ):
        for s in sorted(studies, key=lambda s: (s.subject_id, s.study_id)):
            scene = scenes.get(s.study_id, ())
            for im in s.images:
                shown = draw.projected(scene, im.view in ("LATERAL", "LL"))
                w.writerow(
                    (
                        im.dicom_id,
                        s.subject_id,
                        s.study_id,
                        int(im.has_dcm and file_format == "dcm"),
                        im.view,
                        im.rows,
                        im.columns,
                        im.modality,
                        im.photometric,
                        im.bits_stored,
                        file_format if im.has_dcm else "",
                        ";".join(d.label() for d in shown),
                    )
                )
                for d in shown:
                    long.writerow(
                        (im.dicom_id, s.subject_id, s.study_id, im.view, d.finding, d.side, d.zone)
                        + (f"{d.size:.2f}", d.status, d.detail)
                    )
