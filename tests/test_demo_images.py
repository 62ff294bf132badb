"""Demo images show what their report states: pixel statistics per drawn finding, scenes from
mentions, the truth of what was drawn, determinism, and the full-size, JPEG 2000 and JPG options."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.core.errors import PipelineError
from pipeline.demo import TRUTH_DIR, generate_demo_dump
from pipeline.demo import dicom as dcm
from pipeline.demo.__main__ import main as cli_main
from pipeline.demo.draw import Drawn, places, projected, scene
from pipeline.demo.text import Mention

pydicom = pytest.importorskip("pydicom")


def _spec(findings: tuple[Drawn, ...] = (), **kw: object) -> dcm.DicomSpec:
    base = {
        "seed": 0,
        "dicom_id": "11111111-22222222-33333333-44444444-55555555",
        "subject_id": "10000032",
        "study_id": "50414267",
        "image_number": 1,
        "rows": 128,
        "columns": 112,
        "view": "PA",
        "modality": "DX",
        "photometric": "MONOCHROME2",
        "bits_stored": 12,
        "study_date": "21800101",
        "study_time": "101500.000",
        "procedure": "CHEST (PA AND LAT)",
        "findings": findings,
    }
    return dcm.DicomSpec(**(base | kw))  # type: ignore[arg-type]


def _img(*findings: Drawn, **kw: object) -> np.ndarray:
    """Displayed intensity in [0, 1] of the stored pixels."""
    spec = _spec(tuple(findings), **kw)
    return dcm.pixel_array(spec).astype(np.float64) / ((1 << spec.bits_stored) - 1)


def _box(img: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """Pixels with x in [x0, x1] and y in [y0, y1] (image coordinates in [-1, 1], y down)."""
    ys, xs = np.linspace(-1, 1, img.shape[0]), np.linspace(-1, 1, img.shape[1])
    return img[np.ix_((ys >= y0) & (ys <= y1), (xs >= x0) & (xs <= x1))]


def _gain(finding: Drawn, box: tuple[float, float, float, float], **kw: object) -> float:
    """Mean brightening of ``box`` by ``finding`` (same noise with and without: differences are drawings)."""
    return float((_box(_img(finding, **kw), *box) - _box(_img(**kw), *box)).mean())


# Boxes for the patient's right (image left, x < 0) and left, per zone.
RIGHT_UPPER, LEFT_UPPER = (-0.55, -0.3, -0.42, -0.2), (0.3, 0.55, -0.42, -0.2)
RIGHT_LOWER, LEFT_LOWER = (-0.58, -0.3, 0.25, 0.45), (0.3, 0.58, 0.25, 0.45)


# -- one finding at a time ---------------------------------------------------------------------------


def test_nothing_drawn_is_the_template_plus_noise() -> None:
    bare = _img()
    assert np.array_equal(bare, _img())
    noise = bare - _img(dicom_id="11111111-22222222-33333333-44444444-66666666")
    assert abs(float(noise.mean())) < 0.08 and float(noise.std()) < 0.05  # exposure and grain only


def test_cardiomegaly_widens_the_heart() -> None:
    band_left, band_right = (0.36, 0.6, 0.15, 0.45), (-0.5, -0.2, 0.15, 0.45)
    big = Drawn("cardiomegaly", size=0.6)
    assert _gain(big, band_left) > 0.05 and _gain(big, band_right) > 0.02
    assert abs(_gain(big, RIGHT_UPPER)) < 1e-3 and abs(_gain(big, LEFT_UPPER)) < 1e-3
    faint = Drawn("cardiomegaly", size=0.6, status="uncertain")
    assert 0.3 * _gain(big, band_left) < _gain(faint, band_left) < 0.7 * _gain(big, band_left)


@pytest.mark.parametrize("side", ["left", "right"])
def test_effusion_fills_the_base_of_its_side(side: str) -> None:
    effusion = Drawn("pleural_effusion", side, "lower", 0.6)
    same, other = (LEFT_LOWER, RIGHT_LOWER) if side == "left" else (RIGHT_LOWER, LEFT_LOWER)
    assert _gain(effusion, same) > 0.12
    assert abs(_gain(effusion, other)) < 1e-3
    upper = LEFT_UPPER if side == "left" else RIGHT_UPPER
    assert _gain(effusion, upper) < 0.25 * _gain(effusion, same)  # a basal meniscus, not a haze


def test_pneumothorax_has_no_markings_beyond_the_pleural_line() -> None:
    gas = (-0.645, -0.575, -0.2, 0.05)  # lateral strip of the right lung, beyond a moderate pneumothorax
    mirror = (0.575, 0.645, -0.2, 0.05)
    bare, ptx = _img(), _img(Drawn("pneumothorax", "right", "apex", 0.6))
    assert _box(ptx, *gas).mean() < _box(bare, *gas).mean() - 0.04  # more lucent
    assert _box(ptx, *gas).std() < 0.85 * _box(bare, *gas).std()  # no vessel markings
    assert np.array_equal(_box(ptx, *mirror), _box(bare, *mirror))  # the other side untouched
    line = _box(ptx - bare, -0.55, -0.2, -0.55, -0.35)  # the visceral pleural line crosses the apex
    assert line.max() > 0.08


@pytest.mark.parametrize(
    ("finding", "side", "zone", "box"),
    [
        ("consolidation", "right", "upper", RIGHT_UPPER),
        ("pneumonia", "left", "lower", LEFT_LOWER),
        ("atelectasis", "right", "lower", (-0.6, -0.25, 0.28, 0.38)),
        ("opacity", "left", "upper", LEFT_UPPER),
    ],
)
def test_focal_opacity_is_in_the_named_zone(finding: str, side: str, zone: str, box: tuple) -> None:
    drawn = Drawn(finding, side, zone, 0.5)
    here = _gain(drawn, box)
    assert here > 0.05
    for other in (RIGHT_UPPER, LEFT_UPPER, RIGHT_LOWER, LEFT_LOWER):
        if other != box and not (finding == "atelectasis" and other == RIGHT_LOWER):
            assert _gain(drawn, other) < 0.3 * here, other


def test_edema_is_a_perihilar_haze_on_both_sides() -> None:
    edema = Drawn("edema", size=0.6)
    right_in, left_in = _gain(edema, (-0.36, -0.16, -0.2, 0.15)), _gain(edema, (0.16, 0.36, -0.2, 0.15))
    right_out, left_out = _gain(edema, (-0.66, -0.56, -0.2, 0.15)), _gain(edema, (0.56, 0.66, -0.2, 0.15))
    assert right_in > 0.08 and left_in > 0.08
    assert abs(right_in - left_in) < 0.3 * right_in
    assert right_out < 0.5 * right_in and left_out < 0.5 * left_in


@pytest.mark.parametrize(("finding", "size"), [("nodule", 0.5), ("mass", 0.6), ("granuloma", 0.5)])
def test_nodule_or_mass_is_a_round_spot(finding: str, size: float) -> None:
    drawn = Drawn(finding, "left", "upper", size)
    diff = _img(drawn) - _img()
    cx, cy = 0.42, -0.3
    r = {"nodule": 0.05, "mass": 0.1, "granuloma": 0.025}[finding]
    core = _box(diff, cx - r, cx + r, cy - r, cy + r)
    assert core.max() > 0.25
    far = _box(diff, cx - 0.45, cx - 0.3, -0.6, 0.4)  # well away from the spot
    assert abs(far).max() < 1e-3


@pytest.mark.parametrize(
    ("device", "box"),
    [
        (Drawn("et_tube", detail="4.0"), (-0.02, 0.02, -0.9, -0.5)),
        (Drawn("ng_tube", detail="stomach"), (0.25, 0.4, 0.7, 0.8)),
        (Drawn("central_line", "right", detail="ij"), (-0.2, -0.1, -0.6, -0.4)),
        (Drawn("picc", "left"), (0.5, 0.9, -0.62, -0.4)),
        (Drawn("pacemaker", "left"), (0.47, 0.63, -0.72, -0.64)),
        (Drawn("sternotomy_wires"), (-0.04, 0.04, -0.52, 0.17)),
        (Drawn("chest_tube", "right"), (-0.9, -0.55, 0.1, 0.45)),
    ],
)
def test_support_devices_draw_bright_lines(device: Drawn, box: tuple) -> None:
    diff = _img(device) - _img()
    assert _box(diff, *box).max() > 0.2  # a radiopaque line (or the pacemaker's box) where it runs
    assert float((diff > 0.1).mean()) < 0.04  # thin lines, not a haze


def test_right_and_left_follow_the_radiological_convention() -> None:
    right = _img(Drawn("pleural_effusion", "right", "lower", 0.6)) - _img()
    half = right.shape[1] // 2
    assert right[:, :half].sum() > 10 * max(right[:, half:].sum(), 1e-6)  # patient's right: image left


def test_laterals_draw_what_projects() -> None:
    lat = {"view": "LATERAL"}
    assert np.array_equal(_img(Drawn("pneumothorax", "right", "apex", 0.6), **lat), _img(**lat))
    assert _gain(Drawn("cardiomegaly", size=0.6), (-0.75, -0.45, 0.1, 0.6), **lat) > 0.02
    assert _gain(Drawn("pleural_effusion", "left", "lower", 0.6), (0.1, 0.4, 0.35, 0.5), **lat) > 0.1
    both = projected(
        (Drawn("pleural_effusion", "right", "lower"), Drawn("pleural_effusion", "left", "lower")), True
    )
    assert both == (Drawn("pleural_effusion", "", "lower"),)


def test_monochrome1_and_8_bits_store_the_same_picture() -> None:
    m2 = _img(Drawn("cardiomegaly"))
    m1 = 1.0 - _img(Drawn("cardiomegaly"), photometric="MONOCHROME1")
    assert np.abs(m1 - m2).max() < 1e-3
    assert np.abs(_img(Drawn("cardiomegaly"), bits_stored=8) - m2).max() < 0.01


# -- scenes from mentions -----------------------------------------------------------------------------


def _m(finding: str, status: str, sentence: str) -> Mention:
    return Mention("impression", finding, None, status, "plain", sentence, True)


def test_scene_takes_sides_and_zones_from_the_sentences() -> None:
    rng = random.Random(0)
    drawn = scene(
        [
            _m("pleural_effusion", "present", "Small left pleural effusion."),
            _m("pneumothorax", "uncertain", "Possible tiny right apical pneumothorax."),
            _m("opacity", "present", "Patchy opacity at the right base may represent atelectasis."),
            _m("atelectasis", "uncertain", "Patchy opacity at the right base may represent atelectasis."),
            _m("consolidation", "present", "There is consolidation in the lingula."),
            _m("cardiomegaly", "absent", "Heart size is normal."),
            _m("edema", "absent", "No pulmonary edema."),
            _m("fracture", "present", "Old healed fracture of the left sixth rib."),
            _m(
                "pacemaker",
                "present",
                "Left chest wall pacemaker with leads in the right atrium and right ventricle.",
            ),
        ],
        rng,
    )
    got = {(d.finding, d.side, d.zone, d.status) for d in drawn}
    assert got == {
        ("pleural_effusion", "left", "lower", "present"),
        ("pneumothorax", "right", "apex", "uncertain"),
        ("opacity", "right", "lower", "present"),
        ("atelectasis", "right", "lower", "uncertain"),
        ("consolidation", "left", "middle", "present"),
        ("pacemaker", "left", "", "present"),
    }
    small = next(d for d in drawn if d.finding == "pleural_effusion")
    assert small.size < 0.5


def test_scene_of_absent_or_undrawable_findings_is_empty() -> None:
    mentions = [
        _m("pneumothorax", "absent", "No pneumothorax."),
        _m("pleural_effusion", "absent", "No pleural effusion."),
        _m("aortic_calcification", "present", "Calcification of the aortic knob."),
    ]
    assert scene(mentions, random.Random(1)) == ()


def test_scene_places_left_open_come_from_the_draw_stream() -> None:
    mentions = [_m("pneumonia", "present", "Findings are consistent with pneumonia.")]
    first = scene(mentions, random.Random("s/1"))
    assert first == scene(mentions, random.Random("s/1")) and first[0].side in ("left", "right")
    assert {scene(mentions, random.Random(f"s/{i}"))[0].zone for i in range(30)} >= {"upper", "lower"}


def test_places_reads_phrase_bank_locations() -> None:
    assert places("Opacity in the right upper lobe.") == [("right", "upper")]
    assert places("Mild bibasilar atelectasis.") == [("both", "lower")]
    assert places("Retrocardiac opacity.") == [("left", "retrocardiac")]
    assert places("Fullness of the left hilum.") == [("left", "hilar")]
    assert places("Bilateral pleural effusions, right greater than left.")[0] == ("both", "")


# -- dumps: truth, no text change, options -----------------------------------------------------------


def _text_digests(root: Path) -> dict[str, str]:
    skip = {f"{TRUTH_DIR}/images.csv.gz", f"{TRUTH_DIR}/params.json"}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix not in (".dcm", ".jpg") and str(p.relative_to(root)) not in skip
    }


@pytest.fixture(scope="module")
def small_dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images") / "dump"
    generate_demo_dump(root, n_reports=60, seed=11)
    return root


def test_drawn_truth_follows_the_report_mentions(small_dump: Path) -> None:
    images = pd.read_csv(small_dump / TRUTH_DIR / "images.csv.gz", dtype=str, keep_default_na=False)
    drawn = pd.read_csv(small_dump / TRUTH_DIR / "drawn.csv.gz", dtype=str, keep_default_na=False)
    mentions = pd.read_csv(small_dump / TRUTH_DIR / "mentions.csv.gz", dtype=str, keep_default_na=False)
    assert (images.drawn != "").mean() > 0.4 and len(drawn) > 50
    names = {
        "pleural_effusion": "pleural effusion",
        "et_tube": "endotracheal tube",
        "ng_tube": "nasogastric tube",
    }
    names |= {"central_line": "central venous catheter", "picc": "PICC", "chest_tube": "chest tube"}
    names |= {"support_devices": "support devices", "sternotomy_wires": "sternotomy wires"}
    names |= {
        "enlarged_cardiomediastinum": "widened mediastinum",
        "vascular_congestion": "vascular congestion",
    }
    names |= {"elevated_hemidiaphragm": "elevated hemidiaphragm"}
    for row in drawn.itertuples():
        said = mentions[
            (mentions.study_id == row.study_id) & (mentions.finding == names.get(row.finding, row.finding))
        ]
        assert row.status in set(said.status), (row.study_id, row.finding)  # drawn only as the report says
    by_image = drawn.groupby("dicom_id").apply(
        lambda g: ";".join(f"{r.finding}:{r.side}:{r.zone}:{r.status}" for r in g.itertuples())
    )
    assert dict(by_image) == {r.dicom_id: r.drawn for r in images.itertuples() if r.drawn}
    lateral = drawn[drawn.view_position.isin(["LATERAL", "LL"])]
    assert not len(lateral[lateral.finding == "pneumothorax"]) and (lateral.side == "").all()


def test_images_without_findings_are_bare_templates(small_dump: Path) -> None:
    images = pd.read_csv(small_dump / TRUTH_DIR / "images.csv.gz", dtype=str, keep_default_na=False)
    checked = {"bare": 0, "drawn": 0}
    for row in images[images.has_dcm == "1"].itertuples():
        path = (
            small_dump / f"files/p{row.subject_id[:2]}/p{row.subject_id}/s{row.study_id}/{row.dicom_id}.dcm"
        )
        ds = pydicom.dcmread(path)
        bare = dcm.pixel_array(
            _spec(
                dicom_id=row.dicom_id,
                rows=int(row.rows),
                columns=int(row.columns),
                view=row.view_position,
                photometric=row.photometric_interpretation,
                bits_stored=int(row.bits_stored),
                seed=11,
            )
        )
        same = np.array_equal(ds.pixel_array, bare)
        assert same == (row.drawn == ""), row.dicom_id
        checked["drawn" if row.drawn else "bare"] += 1
    assert checked["bare"] >= 5 and checked["drawn"] >= 20


def test_image_options_change_no_text_and_write_their_files(tmp_path: Path, small_dump: Path) -> None:
    j2k, jpg = tmp_path / "j2k", tmp_path / "jpg"
    generate_demo_dump(j2k, n_reports=60, seed=11, image_format="dcm_j2k")
    summary = generate_demo_dump(jpg, n_reports=60, seed=11, image_format="jpg")
    ref = _text_digests(small_dump)
    assert _text_digests(j2k) == ref and _text_digests(jpg) == ref
    assert summary.jpgs == summary.images > 0 and summary.dicoms == 0 and not list(jpg.rglob("*.dcm"))
    images = pd.read_csv(jpg / TRUTH_DIR / "images.csv.gz", dtype=str, keep_default_na=False)
    assert set(images.file_format) == {"jpg"} and (images.has_dcm == "0").all()
    from PIL import Image

    row = images.iloc[0]
    with Image.open(
        jpg / f"files/p{row.subject_id[:2]}/p{row.subject_id}/s{row.study_id}/{row.dicom_id}.jpg"
    ) as im:
        assert im.mode == "L" and im.format == "JPEG" and im.size == (int(row.columns), int(row.rows))
        assert np.asarray(im).max() > 240 and np.asarray(im).min() < 15  # equalised
    for path in list(j2k.rglob("*.dcm"))[:5]:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
        plain = pydicom.dcmread(small_dump / path.relative_to(j2k))
        assert np.array_equal(ds.pixel_array, plain.pixel_array)  # lossless


def test_injected_corrupt_dicoms_stay_dicoms_in_a_jpg_dump(tmp_path: Path) -> None:
    generate_demo_dump(tmp_path / "d", n_reports=30, seed=4, inject_bad_rows=True, image_format="jpg")
    injected = pd.read_csv(tmp_path / "d" / TRUTH_DIR / "injected.csv", dtype=str, keep_default_na=False)
    dicoms = injected[injected.kind.str.endswith("_dicom")]
    assert len(dicoms) == 3 and all((tmp_path / "d" / p).exists() and p.endswith(".dcm") for p in dicoms.path)


def test_full_size_dicoms_uncompressed_and_jpeg2000() -> None:
    spec = _spec((Drawn("cardiomegaly"), Drawn("pleural_effusion", "left", "lower")), rows=3056, columns=2544)
    data = dcm.dicom_bytes(spec)
    assert data == dcm.dicom_bytes(spec)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert (ds.Rows, ds.Columns, ds.BitsStored, ds.BitsAllocated) == (3056, 2544, 12, 16)
    pixels = ds.pixel_array
    assert int(pixels.max()) < 4096 and len(data) > 3056 * 2544 * 2
    j2k = dcm.dicom_bytes(dataclasses.replace(spec, compression="jpeg2000"))
    back = pydicom.dcmread(io.BytesIO(j2k))
    assert back.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless and len(j2k) < len(data)
    assert np.array_equal(back.pixel_array, pixels)
    small = _img(Drawn("cardiomegaly", size=0.6))
    big = pixels[::24, ::23].astype(np.float64) / 4095
    assert big.shape[0] > 100 and abs(big.mean() - small.mean()) < 0.05  # the same picture, larger


def test_full_size_dump_says_so_in_its_metadata(tmp_path: Path) -> None:
    generate_demo_dump(tmp_path / "d", n_reports=2, seed=3, image_size="full", image_workers=1)
    meta = pd.read_csv(tmp_path / "d" / "mimic-cxr-2.0.0-metadata.csv.gz", dtype=str)
    assert (meta.Rows.astype(int) >= 2500).all() and (meta.Columns.astype(int) >= 2500).all()
    for path in (tmp_path / "d").rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        row = meta[meta.dicom_id == path.stem].iloc[0]
        assert (ds.Rows, ds.Columns, ds.BitsStored) == (int(row.Rows), int(row.Columns), 12)


def test_bad_image_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="image_size.*full") as err:
        generate_demo_dump(tmp_path / "a", n_reports=5, image_size="ful")
    assert err.value.code == "demo_bad_argument"
    with pytest.raises(PipelineError, match="image_format"):
        generate_demo_dump(tmp_path / "b", n_reports=5, image_format="png")
    with pytest.raises(PipelineError, match="image_workers"):
        generate_demo_dump(tmp_path / "c", n_reports=5, image_workers=0)
    assert cli_main([f"out={tmp_path / 'd'}", "n_reports=5", "image_format=dicom"]) == 2
    assert not any(tmp_path.iterdir())


def test_ensure_demo_passes_the_image_options(tmp_path: Path) -> None:
    from pipeline.ingest.config import DatasetConfig, IngestConfig
    from pipeline.ingest.mimic import ensure_demo

    root = tmp_path / "demo"
    ensure_demo(IngestConfig(dataset=DatasetConfig(root=str(root), n_reports=8, image_format="jpg")))
    assert list(root.rglob("*.jpg")) and not list(root.rglob("*.dcm"))
