"""Valid synthetic chest X-ray DICOMs (and JPGs) for the demo dump, and deliberately broken ones.

Valid files are Digital X-Ray (DX, For Presentation) or Computed Radiography (CR), explicit VR
little endian uncompressed or JPEG 2000 lossless, with a chest-like picture that shows what the
study's report states (``DicomSpec.findings``, drawn by :mod:`pipeline.demo.draw`): a few kilobytes
at the demo's small sizes, MIMIC-CXR's size at about 2,500 x 3,000. Every UID and pixel is a
function of the seed and the dicom_id, so the bytes are the same on every run (for one pydicom
version: it writes its implementation version into the file meta). pydicom is imported here only,
so a dump without DICOMs needs no ``[dicom]`` extra.
"""

from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.demo import draw

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
    findings: tuple[draw.Drawn, ...] = ()  # what the image shows (pipeline.demo.draw), frontal or not
    compression: str = ""  # "" uncompressed, "jpeg2000" JPEG 2000 lossless (COMPRESSIONS)


def uid(seed: int, *parts: str) -> str:
    """A UUID-derived DICOM UID (``2.25.<int>``) that depends only on ``seed`` and ``parts``."""
    digest = hashlib.sha256("/".join(("clip2clinic-demo", str(seed), *parts)).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big") or 1)


WORKING_SIZE = 512  # larger images are drawn at most this size and interpolated up
COMPRESSIONS = ("", "jpeg2000")  # uncompressed (explicit VR little endian), JPEG 2000 lossless


def _seed(spec: DicomSpec, stream: str) -> int:
    return int.from_bytes(
        hashlib.sha256(f"{spec.seed}/{spec.dicom_id}/{stream}".encode()).digest()[:8], "big"
    )


def _resize(img: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Bilinear interpolation of ``img`` to ``rows`` x ``columns`` (corners kept).

    Columns first, at the small row count; then whole rows are gathered and blended, which is
    what keeps a full-size image cheap.
    """

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
        pos = np.linspace(0.0, n_in - 1.0, n_out, dtype=np.float32)
        lo = np.minimum(pos.astype(np.int64), max(n_in - 2, 0))
        return lo, pos - lo

    x0, wx = axis(img.shape[1], columns)
    nxt = np.minimum(x0 + 1, img.shape[1] - 1)
    wide = img[:, x0] + (img[:, nxt] - img[:, x0]) * wx
    y0, wy = axis(img.shape[0], rows)
    step = np.diff(wide, axis=0, append=wide[-1:])
    out = wide[y0]
    out += step[y0] * wy[:, None]
    return out


def picture(spec: DicomSpec) -> np.ndarray:
    """The image of ``spec`` in [0, 1] as displayed (bright is dense), before quantisation.

    Drawn at the stored size up to :data:`WORKING_SIZE` pixels a side, larger images at a size
    that fits and interpolated up (so full-size files cost little more than small ones), then the
    per-image exposure and noise. The drawings come from their own stream (``draw``); the exposure
    and noise from the ``pixels`` stream, so the same image with and without findings differs only
    by what is drawn.
    """
    lateral = spec.view in ("LATERAL", "LL")
    factor = max(1, -(-max(spec.rows, spec.columns) // WORKING_SIZE))
    rows, columns = -(-spec.rows // factor), -(-spec.columns // factor)
    anat = draw.anatomy(rows, columns, lateral)
    img = anat.base
    if spec.findings:
        img = draw.render(anat, spec.findings, lateral, np.random.default_rng(_seed(spec, "draw")))
    if factor > 1:
        img = _resize(img, spec.rows, spec.columns)
    rng = np.random.default_rng(_seed(spec, "pixels"))
    sigma = 0.015 if factor == 1 else 0.005  # full-size films are less grainy per pixel
    gain, offset = rng.uniform(0.85, 1.1), rng.uniform(-0.04, 0.04)
    # Uniform noise of standard deviation sigma from bytes: ten times cheaper than normal draws.
    noise = rng.integers(0, 256, img.shape, dtype=np.uint8).astype(np.float32)
    noise *= np.float32(sigma * np.sqrt(12.0) / 256.0)
    noise += img * np.float32(gain) + np.float32(offset - sigma * np.sqrt(3.0))
    return np.clip(noise, 0.0, 1.0, out=noise)


def pixel_array(spec: DicomSpec) -> np.ndarray:
    """The stored pixel values of ``spec`` (uint16 for 12 bits stored, else uint8)."""
    max_value = (1 << spec.bits_stored) - 1
    values = picture(spec) * np.float32(max_value)
    if spec.photometric == "MONOCHROME1":  # stored inverted: high values display dark
        values = max_value - values
    return np.rint(values).astype(np.uint16 if spec.bits_stored > 8 else np.uint8)


def jpg_bytes(spec: DicomSpec, quality: int = 95) -> bytes:
    """The image of ``spec`` as MIMIC-CXR-JPG has it: 8-bit grey, histogram-equalised, JPEG.

    Photometric interpretation and bits stored do not matter here: a JPG is what is displayed.
    Raises ``PipelineError`` (``demo_needs_pillow``) without Pillow.
    """
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise PipelineError(
            "demo_needs_pillow", "writing demo JPGs needs Pillow: pip install 'clip2clinic[dicom]'"
        ) from exc
    grey = np.rint(picture(spec) * 255.0).astype(np.uint8)
    counts = np.bincount(grey.ravel(), minlength=256)
    cdf = np.cumsum(counts)
    low = cdf[counts > 0][0]
    lut = np.clip(np.rint((cdf - low) * 255.0 / max(int(cdf[-1] - low), 1)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(lut[grey], mode="L").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


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
    pixels = pixel_array(spec)
    if spec.compression == "jpeg2000":
        ds.compress(pydicom.uid.JPEG2000Lossless, pixels, encoding_plugin="pylibjpeg")
    elif spec.compression:
        raise ValueError(f"unknown compression {spec.compression!r}, expected one of {COMPRESSIONS}")
    else:
        ds.PixelData = pixels.tobytes()
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
