"""Small, valid synthetic chest X-ray DICOMs for the demo dump, and deliberately broken ones.

Valid files are explicit VR little endian, uncompressed, Digital X-Ray (DX, For Presentation) or
Computed Radiography (CR), with a chest-like picture of a few kilobytes. Every UID and pixel is a
function of the seed and the dicom_id, so the bytes are the same on every run (for one pydicom
version: it writes its implementation version into the file meta). pydicom is imported here only,
so a dump without DICOMs needs no ``[dicom]`` extra.
"""

from __future__ import annotations

import functools
import hashlib
import io
import random
from dataclasses import dataclass

import numpy as np

from pipeline.core.errors import PipelineError

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
SOP_CLASS = {"DX": DX_STORAGE, "CR": CR_STORAGE}


@dataclass(frozen=True, slots=True)
class DicomSpec:
    """Everything that goes into one synthetic DICOM file."""

    seed: int
    dicom_id: str
    subject_id: str
    study_id: str
    image_number: int  # 1-based position in the study; each image is its own series, as in CR
    rows: int
    columns: int
    view: str  # AP, PA, LATERAL, LL, or "" for a file without ViewPosition
    modality: str  # DX or CR
    photometric: str  # MONOCHROME2 or MONOCHROME1
    bits_stored: int  # 12 (in 16 allocated) or 8
    study_date: str  # YYYYMMDD
    study_time: str  # HHMMSS.FFF
    procedure: str


def uid(seed: int, *parts: str) -> str:
    """A UUID-derived DICOM UID (``2.25.<int>``) that depends only on ``seed`` and ``parts``."""
    digest = hashlib.sha256("/".join(("clip2clinic-demo", str(seed), *parts)).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big") or 1)


def _soft(e: np.ndarray, sharpness: float = 10.0) -> np.ndarray:
    """1 inside an ellipse (e < 1), 0 outside, with a soft edge."""
    return 1.0 / (1.0 + np.exp(np.minimum((e - 1.0) * sharpness, 60.0)))  # capped: no overflow warning


@functools.lru_cache(maxsize=32)
def _template(rows: int, columns: int, lateral: bool) -> np.ndarray:
    """A chest-like picture in [0, 1] (bright bone and soft tissue, dark lungs), shared per shape."""
    y, x = np.mgrid[-1.0 : 1.0 : rows * 1j, -1.0 : 1.0 : columns * 1j]
    body = _soft((x / 0.92) ** 2 + ((y - 0.05) / 1.15) ** 2, 6.0)
    img = 0.08 + 0.55 * body + 0.12 * (y + 1.0) / 2.0  # denser toward the abdomen
    if lateral:
        lung = _soft(((x + 0.05) / 0.5) ** 2 + ((y + 0.05) / 0.6) ** 2)
        spine = _soft(((x - 0.62) / 0.12) ** 2 + (y / 1.1) ** 2)
        heart = _soft(((x + 0.25) / 0.3) ** 2 + ((y - 0.35) / 0.3) ** 2)
        img = img - 0.38 * lung + 0.3 * spine + 0.18 * heart
    else:
        lungs = _soft(((x + 0.4) / 0.28) ** 2 + ((y + 0.05) / 0.58) ** 2) + _soft(
            ((x - 0.4) / 0.28) ** 2 + ((y + 0.05) / 0.58) ** 2
        )
        spine = _soft((x / 0.07) ** 2 + (y / 1.2) ** 2)
        heart = _soft(((x - 0.08) / 0.27) ** 2 + ((y - 0.3) / 0.26) ** 2)
        diaphragm = _soft((x / 0.9) ** 2 + ((y - 1.05) / 0.4) ** 2)
        img = img - 0.4 * lungs + 0.22 * spine + 0.2 * heart + 0.2 * diaphragm
        ribs = 0.04 * (np.sin(y * 18.0) > 0.6) * np.clip(lungs, 0.0, 1.0)
        img = img + ribs
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def pixel_array(spec: DicomSpec) -> np.ndarray:
    """The stored pixel values of ``spec`` (uint16 for 12 bits stored, else uint8)."""
    base = _template(spec.rows, spec.columns, spec.view in ("LATERAL", "LL"))
    seed = int.from_bytes(hashlib.sha256(f"{spec.seed}/{spec.dicom_id}/pixels".encode()).digest()[:8], "big")
    rng = np.random.default_rng(seed)
    img = base * rng.uniform(0.85, 1.1) + rng.uniform(-0.04, 0.04) + rng.normal(0.0, 0.015, base.shape)
    max_value = (1 << spec.bits_stored) - 1
    values = np.clip(img, 0.0, 1.0) * max_value
    if spec.photometric == "MONOCHROME1":  # stored inverted: high values display dark
        values = max_value - values
    return values.round().astype(np.uint16 if spec.bits_stored > 8 else np.uint8)


def _pydicom():  # type: ignore[no-untyped-def]
    try:
        import pydicom
        from pydicom.dataset import FileDataset, FileMetaDataset
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise PipelineError(
            "demo_needs_pydicom",
            "writing demo DICOMs needs pydicom: pip install 'clip2clinic[dicom]', or pass dicom_fraction=0",
        ) from exc
    return pydicom, FileDataset, FileMetaDataset


def dicom_bytes(spec: DicomSpec) -> bytes:
    """A complete, valid DICOM file (preamble, file meta, dataset, pixels) for ``spec``."""
    pydicom, FileDataset, FileMetaDataset = _pydicom()
    sop_class = SOP_CLASS[spec.modality]
    sop_instance = uid(spec.seed, "sop", spec.dicom_id)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = spec.study_date
    ds.SeriesDate = spec.study_date
    ds.StudyTime = spec.study_time
    ds.AccessionNumber = ""
    ds.Modality = spec.modality
    if spec.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = spec.procedure
    ds.PatientName = ""  # de-identified: no names, as in MIMIC-CXR
    ds.PatientID = spec.subject_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.BodyPartExamined = "CHEST"
    if spec.view:
        ds.ViewPosition = spec.view
    ds.StudyInstanceUID = uid(spec.seed, "study", spec.study_id)
    ds.SeriesInstanceUID = uid(spec.seed, "series", spec.study_id, str(spec.image_number))
    ds.StudyID = spec.study_id
    ds.SeriesNumber = spec.image_number
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.PerformedProcedureStepDescription = spec.procedure
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = spec.photometric
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.BitsAllocated = 16 if spec.bits_stored > 8 else 8
    ds.BitsStored = spec.bits_stored
    ds.HighBit = spec.bits_stored - 1
    ds.PixelRepresentation = 0
    if spec.modality == "DX":
        ds.PresentationLUTShape = "INVERSE" if spec.photometric == "MONOCHROME1" else "IDENTITY"
    center = (1 << spec.bits_stored) // 2
    ds.WindowCenter = center
    ds.WindowWidth = 2 * center
    ds.PixelData = pixel_array(spec).tobytes()
    ds["PixelData"].VR = "OW" if spec.bits_stored > 8 else "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def truncated_header(valid: bytes) -> bytes:
    """``valid`` cut inside its file meta group (in the middle of the SOP class UID).

    pydicom reads such a file without raising and returns a dataset with no transfer syntax, no
    SOP class and no image: readers must check for those, not only for exceptions.
    """
    return valid[:170]


def truncated_pixels(valid: bytes, pixel_bytes: int) -> bytes:
    """``valid`` with the second half of its pixel data cut off: the header reads, the pixels fail."""
    return valid[: len(valid) - pixel_bytes // 2]


def random_bytes(rng: random.Random, n: int = 4096) -> bytes:
    """Bytes that are not DICOM at all (no ``DICM`` prefix at offset 128)."""
    data = bytearray(rng.getrandbits(8) for _ in range(n))
    data[128:132] = b"XXXX"
    return bytes(data)
