"""The MIMIC-CXR adapter on small hand-built dumps: a files/ tree, the reports zip, CSVs gzipped and
plain, generated DICOMs, and every reject reason and structural error it can raise."""

from __future__ import annotations

import dataclasses
import gzip
import io
import shutil
import zipfile
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from test_ingest_support import OBSERVATIONS_ALPHA, ingest

from pipeline.core.errors import PipelineError
from pipeline.core.registry import PlanContext, get_stage
from pipeline.ingest.config import DatasetConfig, IngestConfig

MAX_CHARS = 600

# (subject_id, study_id, bytes) of every report file of the hand-built dump.
REPORTS: list[tuple[str, str, bytes]] = [
    (
        "10000032",
        "50414267",
        b"FINAL REPORT\r\n EXAMINATION: CHEST\r\n\r\n FINDINGS: No pneumothorax.\r\n IMPRESSION: Normal.\r\n",
    ),
    ("10000032", "50000002", "Patient's caf\xe9 \u2013 note. IMPRESSION: ___ clear.".encode("cp1252")),
    ("10000033", "50000003", "\ufeffFINDINGS: Mild edema.\n".encode()),
    ("10000034", "50000004", b""),
    ("10000034", "50000005", b"  \n\t \n"),
    ("10000035", "50000006", b"IMPRESSION: \x81\x8d unreadable"),
    ("10000035", "50000007", b"FINDINGS:\x00 binary"),
    ("10000035", "50000008", b"FINDINGS: " + b"\x01\x02\x03" * 3 + b" lungs clear" * 5),
    ("10000035", "50000009", b"A" * (MAX_CHARS + 1)),
    ("10000036", "50414267", b"A second copy of study 50414267 under another subject."),
    # Filed under the wrong patient and sorting first: the metadata's subject decides which is kept.
    ("10000031", "50000003", b"FINDINGS: a copy under another patient."),
]
REPORT_REJECTS = {
    "s50000004": "empty_text",
    "s50000005": "empty_text",
    "s50000006": "bad_encoding",
    "s50000007": "garbled_text",
    "s50000008": "garbled_text",
    "s50000009": "too_long",
    "s50414267": "duplicate_id",  # the copy under p10000036; the p10000032 one is kept
    "s50000003": "duplicate_id",  # the copy under p10000031
    "files/p10/p10000037/notes.txt": "bad_id",
    "s50000010": "missing_file",
    "cxr-study-list.csv.gz:row 4": "missing_id",
}
IMAGE_REJECTS = {
    "mimic-cxr-2.0.0-metadata.csv.gz:row 7": "missing_id",
    "bbbb": "duplicate_id",
    "eeee": "orphan_row",  # its study has no report
    "ffff": "orphan_row",  # its report is empty
    "gggg": "bad_value",
    "hhhh": "not_dicom",
    "iiii": "corrupt_dicom",  # header cut short
    "llll": "corrupt_dicom",  # pixel data cut short
}
LABEL_REJECTS = {
    "s50000003 (chexpert)": "duplicate_id",
    "s59999999 (chexpert)": "orphan_row",
    "s50000004 (chexpert)": "orphan_row",
    "mimic-cxr-2.0.0-chexpert.csv.gz:row 8": "missing_id",
    "s50000002 (negbio)": "bad_value",
}


def write_dicom(
    path: Path,
    *,
    comments: str = "",
    view: str | None = "PA",
    photometric: str = "MONOCHROME2",
    implicit: bool = False,
    modality: str = "DX",
) -> None:
    """A small but complete DICOM file (8x8 pixels) with patient fields that must not leak."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "123456"
    ds.PatientBirthDate = "19500101"
    if comments:
        ds.add_new(0x00291010, "UN", comments.encode())  # a private blob making the header long
    ds.Modality = modality
    if view is not None:
        ds.ViewPosition = view
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = 8
    ds.Columns = 8
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(128)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(",".join(r) for r in [header, *rows]) + "\n"


def label_row(values: dict[str, str], order: list[str]) -> list[str]:
    return [values.get(o, "") for o in order]


def make_dump(root: Path, *, reports_in_zip: bool = False) -> Path:
    """The hand-built MIMIC-CXR dump described by REPORTS and the *_REJECTS maps."""
    files = root / "files"
    members = {f"files/p{s[:2]}/p{s}/s{st}.txt": data for s, st, data in REPORTS}
    members["files/p10/p10000037/notes.txt"] = b"not a report file name"
    if reports_in_zip:
        root.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(root / "mimic-cxr-reports.zip", "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    else:
        for name, data in members.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
    study = files / "p10/p10000032/s50414267"
    write_dicom(study / "aaaa.dcm", view="PA")
    write_dicom(study / "kkkk.dcm", view="LL")  # not in the metadata
    write_dicom(files / "p10/p10000032/s50000002/cccc.dcm", view=None, implicit=True)
    write_dicom(files / "p10/p10000033/s50000003/dddd.dcm", photometric="MONOCHROME1", modality="CR")
    (files / "p10/p10000033/s50000003/hhhh.dcm").write_bytes(b"plain text, not DICOM" * 10)
    healthy = (study / "aaaa.dcm").read_bytes()
    (files / "p10/p10000033/s50000003/iiii.dcm").write_bytes(healthy[:300])
    (files / "p10/p10000033/s50000003/llll.dcm").write_bytes(healthy[:-64])
    (files / "p10/p10000033/s50000003/jjjj.jpg").write_bytes(b"\xff\xd8\xff\xe0 jpeg bytes")

    meta_header = [
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
    ]

    def meta(
        dicom_id: str, subject: str, study_id: str, view: str, rows: str = "3056", cols: str = "2544"
    ) -> list[str]:
        return [
            dicom_id,
            subject,
            study_id,
            "CHEST (PA AND LAT)",
            view,
            rows,
            cols,
            "21800506",
            "213014.531",
            "CHEST (PA AND LAT)",
            "postero-anterior",
            "Erect",
        ]

    meta_rows = [
        meta("aaaa", "10000032", "50414267", "AP"),
        meta("bbbb", "10000032", "50414267", "LATERAL"),
        meta("cccc", "10000032", "50000002", "PA"),
        meta("dddd", "10000033", "50000003", ""),
        meta("bbbb", "10000032", "50414267", "LATERAL"),
        meta("", "10000032", "50414267", "PA"),
        meta("eeee", "10000099", "59999999", "PA"),
        meta("ffff", "10000034", "50000004", "PA"),
        meta("gggg", "10000032", "50000002", "PA", rows="abc"),
        meta("hhhh", "10000033", "50000003", "PA"),
        meta("iiii", "10000033", "50000003", "PA"),
        meta("llll", "10000033", "50000003", "PA"),
    ]
    (root / "mimic-cxr-2.0.0-metadata.csv.gz").write_bytes(
        gzip.compress(csv_text(meta_header, meta_rows).encode())
    )
    split_rows = [
        ["aaaa", "50414267", "10000032", "train"],
        ["bbbb", "50414267", "10000032", "train"],
        ["cccc", "50000002", "10000032", "validate"],
        ["dddd", "50000003", "10000033", "test"],
    ]
    (root / "mimic-cxr-2.0.0-split.csv").write_text(
        csv_text(["dicom_id", "study_id", "subject_id", "split"], split_rows)
    )
    (root / "cxr-study-list.csv.gz").write_bytes(
        gzip.compress(
            csv_text(
                ["subject_id", "study_id", "path"],
                [
                    ["10000032", "50414267", "files/p10/p10000032/s50414267.txt"],
                    ["10000040", "50000010", "files/p10/p10000040/s50000010.txt"],
                    ["10000041", "", "files/p10/p10000041/s.txt"],
                ],
            ).encode()
        )
    )

    alpha = ["subject_id", "study_id", *OBSERVATIONS_ALPHA]
    chexpert = [
        [
            "10000032",
            "50414267",
            *label_row(
                {"Atelectasis": "1.0", "Cardiomegaly": "-1.0", "Support Devices": "0.0"}, OBSERVATIONS_ALPHA
            ),
        ],
        ["10000032", "50000002", *label_row({"Edema": "0.0"}, OBSERVATIONS_ALPHA)],
        ["10000033", "50000003", *label_row({"No Finding": "1.0"}, OBSERVATIONS_ALPHA)],
        ["10000033", "50000003", *label_row({"No Finding": "0.0"}, OBSERVATIONS_ALPHA)],
        ["10000099", "59999999", *label_row({}, OBSERVATIONS_ALPHA)],
        ["10000034", "50000004", *label_row({}, OBSERVATIONS_ALPHA)],
        ["10000035", "", *label_row({}, OBSERVATIONS_ALPHA)],
    ]
    (root / "mimic-cxr-2.0.0-chexpert.csv.gz").write_bytes(gzip.compress(csv_text(alpha, chexpert).encode()))
    shuffled = ["study_id", "subject_id", *reversed(OBSERVATIONS_ALPHA)]
    negbio = [
        [
            "50414267",
            "10000032",
            *label_row({"Atelectasis": "1.0", "Pneumothorax": "-1.0"}, list(reversed(OBSERVATIONS_ALPHA))),
        ],
        ["50000002", "10000032", *label_row({"Edema": "2.0"}, list(reversed(OBSERVATIONS_ALPHA)))],
    ]
    (root / "mimic-cxr-2.0.0-negbio.csv").write_text(csv_text(shuffled, negbio))
    test_set = ["study_id", *[("Airspace Opacity" if o == "Lung Opacity" else o) for o in OBSERVATIONS_ALPHA]]
    (root / "mimic-cxr-2.1.0-test-set-labeled.csv").write_text(
        csv_text(
            test_set, [["50000003", *label_row({"Lung Opacity": "1.0", "Edema": "0"}, OBSERVATIONS_ALPHA)]]
        )
    )
    return root


def config(root: Path | str, **kwargs) -> IngestConfig:
    dataset = DatasetConfig(name="mimic_cxr", root=str(root), **kwargs.pop("dataset", {}))
    return IngestConfig(dataset=dataset, max_chars=MAX_CHARS, **kwargs)


@pytest.fixture(scope="module")
def dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dump(tmp_path_factory.mktemp("mimic") / "mimic-cxr")


@pytest.fixture(scope="module")
def tree(dump: Path, tmp_path_factory: pytest.TempPathFactory):
    return ingest(config(dump), tmp_path_factory.mktemp("staging"))


def test_every_row_is_accounted_for_with_its_reason(tree) -> None:
    assert tree.rejected("reports") == REPORT_REJECTS
    assert tree.rejected("images_meta") == IMAGE_REJECTS
    assert tree.rejected("official_labels") == LABEL_REJECTS
    assert tree.rows_in == {"reports": 14, "images_meta": 14, "official_labels": 10}
    assert sorted(tree.column("reports", "report_id")) == ["s50000002", "s50000003", "s50414267"]


def test_reports_are_decoded_and_normalised(tree) -> None:
    first = tree.row("reports", "report_id", "s50414267")
    assert (
        first["text"]
        == "FINAL REPORT\n EXAMINATION: CHEST\n\n FINDINGS: No pneumothorax.\n IMPRESSION: Normal.\n"
    )
    assert (first["subject_id"], first["study_id"], first["split"], first["source"]) == (
        "10000032",
        "50414267",
        "train",
        "mimic_cxr",
    )
    assert first["path"] == "files/p10/p10000032/s50414267.txt" and first["sections"] is None
    assert (
        tree.row("reports", "report_id", "s50000002")["text"]
        == "Patient's caf\xe9 \u2013 note. IMPRESSION: ___ clear."
    )
    third = tree.row("reports", "report_id", "s50000003")
    assert third["text"] == "FINDINGS: Mild edema.\n" and third["split"] == "test"


def test_images_merge_metadata_files_and_dicom_headers(tree) -> None:
    aaaa = tree.row("images_meta", "image_id", "aaaa")
    # The header's ViewPosition wins over the metadata's; size comes from the header too.
    assert (aaaa["view_position"], aaaa["rows"], aaaa["columns"], aaaa["bits_stored"]) == ("PA", 8, 8, 12)
    assert (aaaa["header_source"], aaaa["file_format"], aaaa["transfer_syntax"]) == (
        "both",
        "dcm",
        "1.2.840.10008.1.2.1",
    )
    assert aaaa["path"] == "files/p10/p10000032/s50414267/aaaa.dcm" and aaaa["split"] == "train"
    assert aaaa["report_id"] == "s50414267" and aaaa["modality"] == "DX"
    bbbb = tree.row("images_meta", "image_id", "bbbb")
    assert (bbbb["header_source"], bbbb["view_position"], bbbb["rows"], bbbb["path"]) == (
        "metadata",
        "LATERAL",
        3056,
        None,
    )
    cccc = tree.row("images_meta", "image_id", "cccc")
    # No ViewPosition in the header: the metadata's is kept; implicit VR transfer syntax.
    assert (cccc["view_position"], cccc["transfer_syntax"], cccc["split"]) == (
        "PA",
        "1.2.840.10008.1.2",
        "validate",
    )
    dddd = tree.row("images_meta", "image_id", "dddd")
    assert (dddd["photometric_interpretation"], dddd["modality"]) == ("MONOCHROME1", "CR")
    kkkk = tree.row("images_meta", "image_id", "kkkk")
    assert (kkkk["header_source"], kkkk["view_position"], kkkk["report_id"]) == ("dicom", "LL", "s50414267")
    jjjj = tree.row("images_meta", "image_id", "jjjj")
    assert (jjjj["header_source"], jjjj["file_format"], jjjj["rows"]) == ("file", "jpg", None)
    # Nothing identifying a patient leaves the header.
    assert "123456" not in str(tree.images.to_pylist()) and "Doe" not in str(tree.images.to_pylist())


def test_labels_are_read_by_name(tree) -> None:
    rows = {(r["report_id"], r["labeler"]): r for r in tree.labels.to_pylist()}
    assert set(rows) == {
        ("s50414267", "chexpert"),
        ("s50000002", "chexpert"),
        ("s50000003", "chexpert"),
        ("s50414267", "negbio"),
        ("s50000003", "radiologist"),
    }
    chexpert = rows[("s50414267", "chexpert")]
    assert (
        chexpert["Atelectasis"],
        chexpert["Cardiomegaly"],
        chexpert["Support Devices"],
        chexpert["Edema"],
    ) == (1.0, -1.0, 0.0, None)
    negbio = rows[("s50414267", "negbio")]
    assert (negbio["Atelectasis"], negbio["Pneumothorax"], negbio["Support Devices"]) == (1.0, -1.0, None)
    assert rows[("s50000003", "chexpert")]["No Finding"] == 1.0  # the first of the duplicates
    radiologist = rows[("s50000003", "radiologist")]
    assert (radiologist["Lung Opacity"], radiologist["Edema"], radiologist["Atelectasis"]) == (1.0, 0.0, None)


def test_zip_gives_the_same_reports_as_the_tree(tree, tmp_path: Path) -> None:
    zipped = make_dump(tmp_path / "zipped", reports_in_zip=True)
    got = ingest(config(zipped), tmp_path / "staging")
    assert got.reports.equals(tree.reports)
    assert got.rejected("reports") == REPORT_REJECTS
    # The zip named by dataset.reports_zip (a file:// URL) wins over loose files.
    moved = tmp_path / "elsewhere" / "reports.zip"
    moved.parent.mkdir()
    shutil.move(zipped / "mimic-cxr-reports.zip", moved)
    got = ingest(config(zipped, dataset={"reports_zip": f"file://{moved}"}), tmp_path / "staging2")
    assert got.reports.equals(tree.reports)


def test_damaged_zip_member_is_unreadable(tmp_path: Path) -> None:
    root = tmp_path / "dump"
    root.mkdir()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("files/p10/p10000001/s50000001.txt", "FINDINGS: fine.")
        zf.writestr("files/p10/p10000001/s50000002.txt", "FINDINGS: to be damaged.")
    data = bytearray(buf.getvalue())
    at = data.index(b"to be damaged")
    data[at] ^= 0xFF
    (root / "mimic-cxr-reports.zip").write_bytes(bytes(data))
    got = ingest(config(root), tmp_path / "staging")
    assert got.column("reports", "report_id") == ["s50000001"]
    assert got.rejected("reports") == {"s50000002": "unreadable_file"}


def test_a_file_gone_between_plan_and_read_is_missing(tmp_path: Path) -> None:
    root = tmp_path / "dump"
    for study in ("50000001", "50000002"):
        path = root / f"files/p10/p10000001/s{study}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("FINDINGS: fine.")
    stage = get_stage("ingest")
    cfg = config(root)
    specs = stage.plan(cfg, PlanContext(str(tmp_path / "staging"), cfg.part_size))
    (root / "files/p10/p10000001/s50000002.txt").unlink()
    result = stage.read(specs[0], cfg)
    assert result.tables["rejects"]["reason_code"].to_pylist() == ["missing_file"]


def test_parts_keep_a_study_with_its_images_and_labels(dump: Path, tmp_path: Path) -> None:
    got = ingest(config(dump, part_size=2), tmp_path / "staging")  # ingest() checks alignment per part
    assert len(got.specs) == 7  # 14 report rows
    assert got.rejected("images_meta") == IMAGE_REJECTS
    assert got.rejected("official_labels") == LABEL_REJECTS


def test_file_urls_read_like_paths(dump: Path, tree, tmp_path: Path) -> None:
    got = ingest(config(f"file://{dump}"), f"file://{tmp_path}/staging")  # type: ignore[arg-type]
    assert (
        got.reports.equals(tree.reports) and got.images.equals(tree.images) and got.labels.equals(tree.labels)
    )


def test_long_headers_and_every_source_kind_read_alike(tmp_path: Path) -> None:
    from pipeline.ingest.dicom import read_header

    write_dicom(tmp_path / "short.dcm", view="AP", implicit=True)
    write_dicom(tmp_path / "long.dcm", view="AP", implicit=True, comments="x" * 100_000)  # header > 64 KiB
    short = read_header(str(tmp_path / "short.dcm"))
    assert (short.view_position, short.rows, short.bits_stored) == ("AP", 8, 12)
    for path in (tmp_path / "short.dcm", tmp_path / "long.dcm"):
        with path.open("rb") as fh:
            assert read_header(str(path)) == read_header(path.read_bytes()) == read_header(fh) == short


def test_dicom_headers_can_be_skipped(dump: Path, tmp_path: Path) -> None:
    got = ingest(config(dump, dicom_headers=False), tmp_path / "staging")
    rejected = got.rejected("images_meta")
    assert "hhhh" not in rejected and "iiii" not in rejected
    assert set(got.column("images_meta", "header_source")) == {"metadata", "file"}


def test_specs_are_stable_and_follow_the_dump(dump: Path, tmp_path: Path) -> None:
    stage = get_stage("ingest")
    cfg = config(dump)
    ctx = PlanContext(str(tmp_path / "staging"), cfg.part_size)
    first, again = stage.plan(cfg, ctx), stage.plan(cfg, ctx)
    assert repr(first) == repr(again)
    # Part keys follow what each part reads, not where it was staged.
    elsewhere = stage.plan(cfg, PlanContext(str(tmp_path / "staging-b"), cfg.part_size))
    assert [s.part_key() for s in elsewhere] == [s.part_key() for s in first]
    copy = tmp_path / "copy"
    shutil.copytree(dump, copy)
    ctx2 = PlanContext(str(tmp_path / "staging2"), cfg.part_size)
    before = [s.part_key() for s in stage.plan(config(copy), ctx2)]
    (copy / "files/p10/p10000099/s59999999.txt").parent.mkdir(parents=True)
    (copy / "files/p10/p10000099/s59999999.txt").write_text("IMPRESSION: new.")
    after = [s.part_key() for s in stage.plan(config(copy), ctx2)]
    assert after != before


def test_structural_errors(dump: Path, tmp_path: Path) -> None:
    stage = get_stage("ingest")
    ctx = PlanContext(str(tmp_path / "staging"), 100)

    def code(cfg: IngestConfig) -> PipelineError:
        with pytest.raises(PipelineError) as info:
            stage.plan(cfg, ctx)
        return info.value

    err = code(config(tmp_path / "nowhere"))
    assert err.code == "E_DUMP_MISSING" and "dataset.root=" in err.message
    assert code(IngestConfig(dataset=DatasetConfig(name="mimic_cxr"))).code == "E_DUMP_MISSING"
    err = code(config(dump, dataset={"reports_zip": str(tmp_path / "no.zip")}))
    assert err.code == "E_DUMP_MISSING" and "dataset.reports_zip=" in err.message
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(dump / "mimic-cxr-2.0.0-metadata.csv.gz", bare)
    err = code(config(bare))
    assert err.code == "E_DUMP_LAYOUT" and "dataset.reports_zip" in err.message
    assert code(config(dump / "mimic-cxr-2.0.0-split.csv")).code == "E_DUMP_LAYOUT"
    (bare / "not-a.zip").write_bytes(b"nope")
    assert code(config(bare, dataset={"reports_zip": str(bare / "not-a.zip")})).code == "E_DUMP_LAYOUT"
    err = code(dataclasses.replace(config(dump), dataset=DatasetConfig(name="mimic")))
    assert err.code == "E_CONFIG" and "mimic_cxr" in err.message


def test_csv_without_its_columns_is_structural(dump: Path, tmp_path: Path) -> None:
    stage = get_stage("ingest")
    broken = tmp_path / "broken"
    shutil.copytree(dump, broken)
    text = (broken / "mimic-cxr-2.0.0-negbio.csv").read_text().replace("Cardiomegaly", "Cardiomegally")
    (broken / "mimic-cxr-2.0.0-negbio.csv").write_text(text)
    with pytest.raises(PipelineError) as info:
        stage.plan(config(broken), PlanContext(str(tmp_path / "s"), 100))
    assert info.value.code == "E_DUMP_COLUMNS"
    assert "'Cardiomegaly'" in info.value.message and "Did you mean 'Cardiomegally'" in info.value.message
    (broken / "mimic-cxr-2.0.0-negbio.csv").unlink()
    meta = gzip.decompress((broken / "mimic-cxr-2.0.0-metadata.csv.gz").read_bytes()).decode()
    (broken / "mimic-cxr-2.0.0-metadata.csv.gz").unlink()
    (broken / "mimic-cxr-2.0.0-metadata.csv").write_text(meta.replace("study_id", "studyid", 1))
    with pytest.raises(PipelineError) as info:
        stage.plan(config(broken), PlanContext(str(tmp_path / "s"), 100))
    assert info.value.code == "E_DUMP_COLUMNS" and "study_id" in info.value.message


@pytest.mark.shared_data
def test_real_dicom_headers(shared_data: Path, tmp_path: Path) -> None:
    """Three real chest DICOMs: JPEG Baseline with ViewPosition PA, its MONOCHROME1 twin, and an
    NIH file in implicit VR without ViewPosition, read in a MIMIC tree and directly."""
    real = {
        "siim": next((shared_data / "dicom" / "siim").glob("1.2.276*.dcm")),
        "mono1": shared_data / "dicom" / "siim" / "Fake_MONOHR1.dcm",
        "nih": next((shared_data / "dicom" / "nih-cxr14").glob("*.dcm")),
    }
    root = tmp_path / "dump"
    study = root / "files/p10/p10000001/s50000001"
    study.mkdir(parents=True)
    (root / "files/p10/p10000001/s50000001.txt").write_text("FINDINGS: Normal chest.")
    for name, path in real.items():
        shutil.copy(path, study / f"{name}.dcm")
    got = ingest(config(root), tmp_path / "staging")
    assert got.rejects.num_rows == 0
    rows = {r["image_id"]: r for r in got.images.to_pylist()}
    jpeg = "1.2.840.10008.1.2.4.50"
    assert {
        k: (
            r["view_position"],
            r["modality"],
            r["photometric_interpretation"],
            r["rows"],
            r["columns"],
            r["bits_stored"],
            r["transfer_syntax"],
            r["header_source"],
        )
        for k, r in rows.items()
    } == {
        "siim": ("PA", "CR", "MONOCHROME2", 1024, 1024, 8, jpeg, "dicom"),
        "mono1": ("PA", "CR", "MONOCHROME1", 1024, 1024, 8, jpeg, "dicom"),
        "nih": (None, "DX", "MONOCHROME2", 1024, 1024, 8, "1.2.840.10008.1.2", "dicom"),
    }
    from pipeline.ingest.dicom import HeaderProblem, read_header

    data = real["siim"].read_bytes()
    with real["siim"].open("rb") as fh:
        assert read_header(data) == read_header(fh) == read_header(str(real["siim"]))
    with pytest.raises(HeaderProblem) as info:
        read_header(data[:-100])  # compressed frames cut: no sequence delimiter at the end
    assert info.value.code == "corrupt_dicom"


def test_remote_filesystems_read_like_local_ones(dump: Path, tree, tmp_path: Path) -> None:
    """The same dump on fsspec's in-memory filesystem: listing, batched reads, DICOM headers."""
    import fsspec

    memory = fsspec.filesystem("memory")
    memory.put(str(dump), "/c2c-mimic", recursive=True)
    try:
        got = ingest(config("memory://c2c-mimic"), tmp_path / "staging")
        assert got.reports.equals(tree.reports) and got.labels.equals(tree.labels)
        assert got.images.sort_by("image_id").equals(tree.images.sort_by("image_id"))
        assert got.rejected("images_meta") == IMAGE_REJECTS
    finally:
        memory.rm("/c2c-mimic", recursive=True)
