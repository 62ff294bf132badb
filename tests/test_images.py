"""The images stage: real DICOMs, hand-computed windows, every reject reason, no identifier in any
output, determinism, compressed transfer syntaxes, JPG/PNG trees, resizing."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    MPEG2MPML,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from pipeline.core.config import compose_run
from pipeline.core.errors import PipelineError
from pipeline.core.io import Store, read_dataset
from pipeline.core.registry import get_stage
from pipeline.core.runner import Runner
from pipeline.core.schemas import load_schema
from pipeline.demo.dicom import DicomSpec, dicom_bytes
from pipeline.images.common import target_size
from pipeline.images.config import ImagesConfig
from pipeline.images.dicom import syntax_problem
from pipeline.images.stage import images
from pipeline.ingest.config import DatasetConfig

TINY = ImagesConfig(views=("all",), min_side=1)


def write_dicom(path: Path, pixels: np.ndarray, syntax=ExplicitVRLittleEndian, **attrs) -> Path:
    """A minimal valid DICOM of ``pixels`` (2-D uint8/uint16/int16); ``attrs`` set or override."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.PixelData = pixels.tobytes()
    for key, value in attrs.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def meta_table(rows: list[dict]) -> pa.Table:
    """An images_meta table from partial rows (image_id, path, view_position, file_format...)."""
    schema = load_schema("images_meta").arrow()
    full = [
        {"header_source": "file", **{c: None for c in schema.names if c != "header_source"}, **r}
        for r in rows
    ]
    return pa.Table.from_pylist(full, schema=schema)


def run_stage(root: Path, rows: list[dict], config: ImagesConfig = TINY, dataset: str = "mimic_cxr"):
    cfg = replace(config, dataset=DatasetConfig(name=dataset, root=str(root)))
    out = images({"images_meta": meta_table(rows)}, config=cfg)
    return out["images"], out["rejects"]


def picture(images_table: pa.Table, image_id: str) -> np.ndarray:
    row = images_table.filter(pa.compute.equal(images_table["image_id"], image_id))
    assert row.num_rows == 1, f"{image_id} not in images"
    return np.asarray(Image.open(io.BytesIO(row["png"][0].as_py())))


def chest(rows: int = 300, columns: int = 250, bits: int = 12) -> np.ndarray:
    """A smooth chest-like picture: dark lungs either side of a bright mediastinum."""
    y, x = np.mgrid[-1 : 1 : rows * 1j, -1 : 1 : columns * 1j]
    lungs = np.exp(-(((np.abs(x) - 0.45) / 0.25) ** 2 + (y / 0.6) ** 2))
    img = 0.7 - 0.5 * lungs + 0.05 * np.sin(9 * y)
    return np.rint(img * ((1 << bits) - 1)).astype(np.uint16 if bits > 8 else np.uint8)


def lungs_darker(arr: np.ndarray) -> bool:
    h, w = arr.shape
    band = arr[int(h * 0.3) : int(h * 0.6)]
    lungs = np.r_[
        band[:, int(w * 0.2) : int(w * 0.35)].ravel(), band[:, int(w * 0.65) : int(w * 0.8)].ravel()
    ]
    mediastinum = band[:, int(w * 0.46) : int(w * 0.54)]
    return float(lungs.mean()) + 20 < float(mediastinum.mean())


# -- real files ----------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_real_dicoms(shared_data):
    siim = shared_data / "dicom" / "siim"
    nih = next((shared_data / "dicom" / "nih-cxr14").glob("*.dcm"))
    mono2 = next(p for p in siim.glob("*.dcm") if p.name != "Fake_MONOHR1.dcm")
    rows = [
        {"image_id": "nih", "path": str(nih)},
        {"image_id": "mono2", "path": str(mono2)},
        {"image_id": "mono1", "path": str(siim / "Fake_MONOHR1.dcm")},
    ]
    table, rejects = run_stage(shared_data, rows, ImagesConfig(unknown_view="keep"))  # views: PA, AP
    assert rejects.num_rows == 0, rejects.to_pylist()
    by_id = {r["image_id"]: r for r in table.drop_columns(["png"]).to_pylist()}
    assert by_id["nih"]["view_position"] is None  # no ViewPosition: kept (unknown_view=keep)
    assert by_id["mono2"]["view_position"] == "PA"
    assert {r["window_source"] for r in by_id.values()} == {"percentile"}
    assert by_id["mono1"]["photometric_interpretation"] == "MONOCHROME1"
    for image_id in by_id:
        arr = picture(table, image_id)
        assert arr.shape == (512, 512) and arr.std() > 20
    # The twin stores the same pixels labelled MONOCHROME1: displayed, it is the negative.
    mono1, mono2_arr = picture(table, "mono1").astype(int), picture(table, "mono2").astype(int)
    assert np.abs((255 - mono1) - mono2_arr).max() <= 1
    assert lungs_darker(mono2_arr) and lungs_darker(255 - mono1) and not lungs_darker(mono1)
    assert lungs_darker(picture(table, "nih"))
    excluded = run_stage(shared_data, rows[:1], ImagesConfig())[1]  # unknown views: excluded by default
    assert excluded["reason_code"].to_pylist() == ["view_excluded"]
    assert "unknown_view=keep" in excluded["detail"][0].as_py()


def test_pydicom_data_rg1_monochrome1(tmp_path):
    data = pytest.importorskip("pydicom.data")
    try:
        path = data.get_testdata_file("RG1_UNCR.dcm", download=False)
    except Exception:  # noqa: BLE001 - pydicom-data not installed
        path = None
    if not path:
        pytest.skip("pydicom-data is not installed")
    table, rejects = run_stage(
        tmp_path, [{"image_id": "rg1", "path": path}], ImagesConfig(unknown_view="keep")
    )
    assert rejects.num_rows == 0, rejects.to_pylist()
    row = table.drop_columns(["png"]).to_pylist()[0]
    assert row["window_source"] == "window" and row["photometric_interpretation"] == "MONOCHROME1"
    assert (row["source_rows"], row["source_columns"], row["bits_stored"]) == (1955, 1841, 15)
    assert (row["height"], row["width"]) == (544, 512)
    ds = pydicom.dcmread(path)
    ref = pydicom.pixels.apply_voi_lut(pydicom.pixels.apply_modality_lut(ds.pixel_array, ds), ds)
    ref = Image.fromarray(np.rint(255 - ref / (2**15 - 1) * 255).astype(np.uint8)).resize(
        (512, 544), Image.Resampling.LANCZOS, reducing_gap=2.0
    )
    assert np.abs(picture(table, "rg1").astype(int) - np.asarray(ref).astype(int)).max() <= 1


# -- windows against hand-computed values --------------------------------------------------------


def test_rescale_then_window_hand_computed(tmp_path):
    # stored 400..700 -> modality 2p - 100 = 700..1300; LINEAR window c=1000, w=401 (PS3.3 C.11.2.1.2)
    pixels = np.array([[400, 500], [600, 700]], np.uint16)
    attrs = {"RescaleSlope": 2, "RescaleIntercept": -100, "WindowCenter": 1000, "WindowWidth": 401}
    write_dicom(tmp_path / "w2.dcm", pixels, BitsStored=12, **attrs)
    write_dicom(tmp_path / "w1.dcm", pixels, BitsStored=12, PhotometricInterpretation="MONOCHROME1", **attrs)
    # the same picture with junk in the 4 bits above BitsStored
    write_dicom(tmp_path / "junk.dcm", pixels | 0xA000, BitsStored=12, **attrs)
    table, rejects = run_stage(tmp_path, [{"image_id": n, "path": f"{n}.dcm"} for n in ("w2", "w1", "junk")])
    assert rejects.num_rows == 0, rejects.to_pylist()
    # ((x - 999.5) / 400 + 0.5) * 255 for 900 and 1100; 700 is below, 1300 above the window
    expected = np.array([[0, 64], [192, 255]])
    assert picture(table, "w2").tolist() == expected.tolist()
    assert picture(table, "w1").tolist() == (255 - expected).tolist()
    assert picture(table, "junk").tolist() == expected.tolist()
    row = table.drop_columns(["png"]).to_pylist()[0]
    assert (row["window_source"], row["window_center"], row["window_width"]) == ("window", 1000.0, 401.0)


def test_voi_lut_and_percentile_hand_computed(tmp_path):
    item = pydicom.Dataset()
    item.LUTDescriptor = [4, 100, 8]  # 4 entries, first mapped value 100, 8 bits
    item.add_new("LUTData", "US", [0, 50, 100, 200])
    pixels = np.array([[90, 101], [102, 200]], np.uint16)
    write_dicom(tmp_path / "lut.dcm", pixels, VOILUTSequence=[item], WindowCenter=10, WindowWidth=5)
    ramp = np.arange(16, dtype=np.uint16).reshape(4, 4)
    write_dicom(tmp_path / "ramp.dcm", ramp, BitsStored=12, RescaleSlope=1, RescaleIntercept=-5)
    cfg = replace(TINY, percentile_low=0.0, percentile_high=100.0)
    table, rejects = run_stage(
        tmp_path, [{"image_id": "lut", "path": "lut.dcm"}, {"image_id": "ramp", "path": "ramp.dcm"}], cfg
    )
    assert rejects.num_rows == 0, rejects.to_pylist()
    # the VOI LUT wins over the window; its output scaled by the descriptor's 8 bits
    assert picture(table, "lut").tolist() == [[0, 50], [100, 200]]
    assert picture(table, "ramp").tolist() == np.rint(np.arange(16) / 15 * 255).reshape(4, 4).tolist()
    rows = {r["image_id"]: r for r in table.drop_columns(["png"]).to_pylist()}
    assert rows["lut"]["window_source"] == "voi_lut" and rows["lut"]["window_center"] is None
    assert (rows["ramp"]["window_source"], rows["ramp"]["window_center"], rows["ramp"]["window_width"]) == (
        "percentile",
        2.5,
        15.0,
    )


def test_voi_lut_longer_than_its_output_range_and_under_declared_depth(tmp_path):
    # An 8-bit LUT of 4,096 entries (pydicom 3.0's apply_voi wraps its index at 256 here).
    ramp8 = pydicom.Dataset()
    ramp8.LUTDescriptor = [4096, 0, 8]
    ramp8.add_new("LUTData", "US", [i // 16 for i in range(4096)])
    pixels = np.array([[0, 1000], [2000, 4095]], np.uint16)
    write_dicom(tmp_path / "lut8.dcm", pixels, BitsStored=12, VOILUTSequence=[ramp8])
    # A 16-bit descriptor over 12-bit values (common in CR): scaled by the bits the values use;
    # inputs beyond the last mapped value take the last entry.
    short = pydicom.Dataset()
    short.LUTDescriptor = [1000, 1000, 16]
    short.add_new("LUTData", "US", [round(i * 4095 / 999) for i in range(1000)])
    write_dicom(tmp_path / "lut16.dcm", np.array([[0, 1500], [1999, 3000]], np.uint16), BitsStored=12,
                VOILUTSequence=[short])  # fmt: skip
    rows = [{"image_id": "lut8", "path": "lut8.dcm"}, {"image_id": "lut16", "path": "lut16.dcm"}]
    table, rejects = run_stage(tmp_path, rows, TINY)
    assert rejects.num_rows == 0, rejects.to_pylist()
    assert picture(table, "lut8").tolist() == [[0, 62], [125, 255]]
    assert picture(table, "lut16").tolist() == [[0, 128], [255, 255]]


# -- rejects ---------------------------------------------------------------------------------------


def test_every_reject_reason(tmp_path):
    good = chest(120, 100)
    write_dicom(tmp_path / "lateral.dcm", good, ViewPosition="LATERAL")
    write_dicom(tmp_path / "ct.dcm", good, Modality="CT")
    write_dicom(tmp_path / "flat.dcm", np.full((100, 100), 7, np.uint16))
    write_dicom(tmp_path / "small.dcm", chest(32, 32))
    write_dicom(tmp_path / "long.dcm", chest(64, 640))
    write_dicom(tmp_path / "nopix.dcm", good, PixelData=None)
    valid = write_dicom(tmp_path / "ok.dcm", good).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(valid[: len(valid) - good.nbytes // 2])
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "random.dcm").write_bytes(b"\x01" * 128 + b"XXXX" + bytes(range(256)) * 8)
    (tmp_path / "dir.dcm").mkdir()
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    mpeg = write_dicom(tmp_path / "mpeg.dcm", good)
    ds = pydicom.dcmread(mpeg)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 64])
    ds.save_as(mpeg)
    broken = write_dicom(tmp_path / "badjpeg.dcm", good.astype(np.uint8), BitsStored=8)
    ds = pydicom.dcmread(broken)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xdb" + b"\x13" * 200])
    ds.save_as(broken)
    cases = {
        "nopath": (None, "missing_file"),
        "gone": ("gone.dcm", "missing_file"),
        "dir": ("dir.dcm", "unreadable_file"),
        "empty": ("empty.dcm", "corrupt_dicom"),
        "cut": ("cut.dcm", "corrupt_dicom"),
        "random": ("random.dcm", "not_dicom"),
        "lateral": ("lateral.dcm", "view_excluded"),
        "nopix": ("nopix.dcm", "no_pixel_data"),
        "mpeg": ("mpeg.dcm", "unsupported_transfer_syntax"),
        "badjpeg": ("badjpeg.dcm", "undecodable_image"),
        "garbage": ("garbage.jpg", "undecodable_image"),
        "ct": ("ct.dcm", "not_xray"),
        "flat": ("flat.dcm", "constant_image"),
        "small": ("small.dcm", "bad_image_size"),
        "long": ("long.dcm", "bad_image_size"),
        "meta_lateral": ("ok.dcm", "view_excluded"),
    }
    rows = [{"image_id": k, "path": p} for k, (p, _) in cases.items()]
    rows[-1]["view_position"] = "LL"
    rows.append({"image_id": "ok", "path": "ok.dcm"})
    table, rejects = run_stage(tmp_path, rows, ImagesConfig(unknown_view="keep"))
    got = dict(zip(rejects["row_id"].to_pylist(), rejects["reason_code"].to_pylist(), strict=True))
    assert got == {k: code for k, (_, code) in cases.items()}
    assert table["image_id"].to_pylist() == ["ok"]
    details = dict(zip(rejects["row_id"].to_pylist(), rejects["detail"].to_pylist(), strict=True))
    assert "no decoder" in details["mpeg"] and "gdcmconv" in details["mpeg"]
    assert "LATERAL" in details["lateral"] and "min_side" in details["small"] and "CT" in details["ct"]


def test_unsupported_syntax_detail_names_the_package():
    detail = syntax_problem(
        "JPEG-LS Lossless (1.2.840.10008.1.2.4.80)", ["pyjpegls - requires numpy and pyjpegls>=1.2"]
    )
    assert "pyjpegls" in detail and "pip install" in detail


def test_structural_errors(tmp_path):
    with pytest.raises(PipelineError, match="dataset.root="):
        images(
            {"images_meta": meta_table([])},
            config=ImagesConfig(dataset=DatasetConfig(name="chexpert_plus", path="x.csv")),
        )
    with pytest.raises(PipelineError, match="percentile_low"):
        run_stage(tmp_path, [], ImagesConfig(percentile_low=60.0, percentile_high=40.0))
    with pytest.raises(PipelineError, match="unknown_view"):
        run_stage(tmp_path, [], ImagesConfig(unknown_view="maybe"))


# -- compressed syntaxes, JPG/PNG trees, resizing -----------------------------------------------------


def test_jpeg2000_and_rle_equal_uncompressed(tmp_path):
    pixels = chest(200, 160)
    write_dicom(tmp_path / "raw.dcm", pixels, BitsStored=12, ViewPosition="PA")
    write_dicom(tmp_path / "j2k.dcm", pixels, JPEG2000Lossless, BitsStored=12, ViewPosition="PA")
    write_dicom(tmp_path / "rle.dcm", pixels, RLELossless, BitsStored=12, ViewPosition="PA")
    rows = [{"image_id": n, "path": f"{n}.dcm"} for n in ("raw", "j2k", "rle")]
    table, rejects = run_stage(tmp_path, rows, replace(TINY, size=128))
    assert rejects.num_rows == 0, rejects.to_pylist()
    sha = dict(zip(table["image_id"].to_pylist(), table["sha256"].to_pylist(), strict=True))
    assert sha["j2k"] == sha["raw"] == sha["rle"]
    assert picture(table, "raw").shape == (160, 128)


def test_jpg_tree_png_and_chexpert_plus_stems(tmp_path):
    arr = chest(400, 300, bits=8)
    jpg = tmp_path / "files/p10/p10000001/s50000001/a.jpg"
    jpg.parent.mkdir(parents=True)
    Image.fromarray(arr).save(jpg, quality=95)
    table, rejects = run_stage(
        tmp_path,
        [
            {
                "image_id": "a",
                "path": str(jpg.relative_to(tmp_path)),
                "view_position": "PA",
                "file_format": "jpg",
            }
        ],
        replace(TINY, size=150),
    )
    assert rejects.num_rows == 0, rejects.to_pylist()
    row = table.drop_columns(["png"]).to_pylist()[0]
    assert (row["source_format"], row["window_source"], row["bits_stored"]) == ("jpg", "file", 8)
    assert (row["source_rows"], row["source_columns"], row["height"], row["width"]) == (400, 300, 200, 150)
    small = np.asarray(Image.fromarray(arr).resize((150, 200), Image.Resampling.LANCZOS)).astype(int)
    assert np.abs(picture(table, "a").astype(int) - small).mean() < 3  # drafted decode ~ full decode
    # CheXpert Plus: the CSV says .jpg, the release ships .png (16-bit here: percentile window)
    png = tmp_path / "plus/train/patient1/study1/view1_frontal.png"
    png.parent.mkdir(parents=True)
    Image.fromarray(chest(300, 250, bits=16).astype(np.uint16)).save(png)
    table, rejects = run_stage(
        tmp_path / "plus",
        [{"image_id": "p", "path": "train/patient1/study1/view1_frontal.jpg"}],
        TINY,
        "chexpert_plus",
    )
    assert rejects.num_rows == 0, rejects.to_pylist()
    row = table.drop_columns(["png"]).to_pylist()[0]
    assert (row["source_format"], row["window_source"], row["bits_stored"]) == ("png", "percentile", 16)
    assert lungs_darker(picture(table, "p"))


def test_resize_keeps_aspect_and_never_enlarges():
    assert target_size(3000, 2500, 512) == (614, 512)
    assert target_size(2500, 3000, 512) == (512, 614)
    assert target_size(400, 300, 512) == (400, 300)
    assert target_size(512, 700, 512) == (512, 700)


# -- through the runner: identifiers, determinism, the demo dump ---------------------------------------

PLANTED = {
    "PatientName": "Zqxplantname^Wvyk",
    "PatientID": "PIDQX918273",
    "PatientBirthDate": "19230817",
    "InstitutionName": "Qzinstitution Hospital",
    "InstitutionAddress": "77 Qzaddress Road",
    "ReferringPhysicianName": "Zqdoctor^Phys",
    "PerformingPhysicianName": "Zqperformer^Dr",
    "OperatorsName": "Zqoperator^Op",
    "StudyDate": "20870419",
    "SeriesDate": "20870420",
    "AcquisitionDateTime": "20870421101010",
    "AccessionNumber": "ACCQZ55501",
    "StudyID": "STUDYQZ77",
    "OtherPatientIDs": "OPIDQZ31",
}


def test_no_identifier_reaches_any_output_and_runs_are_deterministic(tmp_path, dask_client):
    dump = tmp_path / "dump"
    rows = []
    for i, (syntax, photometric) in enumerate(
        [
            (ExplicitVRLittleEndian, "MONOCHROME2"),
            (RLELossless, "MONOCHROME1"),
            (JPEG2000Lossless, "MONOCHROME2"),
        ]
    ):
        path = f"files/p10/p1000000{i}/s5000000{i}/img{i}.dcm"
        write_dicom(
            dump / path,
            chest(90, 80),
            syntax,
            PhotometricInterpretation=photometric,
            ViewPosition="AP",
            **PLANTED,
        )
        rows.append({"image_id": f"img{i}", "path": path, "report_id": f"s5000000{i}"})
    rows.append({"image_id": "gone", "path": "files/p10/missing.dcm"})
    runs = []
    for name in ("run1", "run2"):
        out = tmp_path / name
        store = Store(str(out))
        store.write_table(meta_table(rows[:2]), "images_meta", 0)
        store.write_table(meta_table(rows[2:]), "images_meta", 1)
        store.write_json(store.manifest_path("images_meta"), {"complete": True, "fingerprint": "test-meta"})
        config = ImagesConfig(dataset=DatasetConfig(name="mimic_cxr", root=str(dump)))
        report = Runner(str(out), dask_client).run_stage(get_stage("images"), config)
        assert (report.rows_in, report.rows_out, report.rejected) == (4, 3, 1)
        runs.append(read_dataset(str(out), "images").sort_by("image_id"))
        for file in out.rglob("*"):
            if file.is_file():
                blob = file.read_bytes()
                for key, value in PLANTED.items():
                    for needle in {value, value.split("^")[0], value.replace("^", " ")}:
                        assert needle.encode() not in blob, f"{key} found in {file}"
    assert runs[0]["sha256"].to_pylist() == runs[1]["sha256"].to_pylist()
    assert runs[0]["png"].to_pylist() == runs[1]["png"].to_pylist()
    for png in runs[0]["png"].to_pylist():  # no ancillary chunk that could carry text or time
        chunks, pos = [], 8
        while pos < len(png):
            length = int.from_bytes(png[pos : pos + 4], "big")
            chunks.append(png[pos + 4 : pos + 8])
            pos += length + 12
        assert set(chunks) == {b"IHDR", b"IDAT", b"IEND"}


def test_demo_dump_end_to_end(tmp_path, dask_client):
    cfg = compose_run(
        [f"dataset.root={tmp_path / 'dump'}", "dataset.n_reports=24", f"out={tmp_path / 'run'}"]
    )
    runner = Runner(cfg.out, dask_client)
    runner.run_stage(get_stage("ingest"), cfg.stage_config("ingest"))
    report = runner.run_stage(get_stage("images"), cfg.stage_config("images"))
    assert report.rows_out > 0 and report.rows_in == report.rows_out + report.rejected
    table = read_dataset(cfg.out, "images")
    assert set(table["source_format"].to_pylist()) == {"dcm"}
    assert set(table["view_position"].drop_null().to_pylist()) <= {"PA", "AP"}
    for png, h, w in zip(
        table["png"].to_pylist(), table["height"].to_pylist(), table["width"].to_pylist(), strict=True
    ):
        arr = np.asarray(Image.open(io.BytesIO(png)))
        assert arr.shape == (h, w) and arr.dtype == np.uint8 and arr.std() > 5
    demo = DicomSpec(
        seed=0, dicom_id="x", subject_id="10000001", study_id="50000001", image_number=1, rows=128,
        columns=128, view="PA", modality="DX", photometric="MONOCHROME1", bits_stored=12,
        study_date="21100101", study_time="101010.000", procedure="CHEST (PA AND LAT)",
    )  # fmt: skip
    (tmp_path / "one.dcm").write_bytes(dicom_bytes(demo))
    one, rejects = run_stage(tmp_path, [{"image_id": "x", "path": "one.dcm"}], ImagesConfig(), "demo")
    assert rejects.num_rows == 0 and lungs_darker(picture(one, "x"))
