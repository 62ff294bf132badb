"""Shared helpers of the ingest tests (imported by the other test_ingest_* files), and tests of the
adapters' file helpers."""

from __future__ import annotations

import codecs
import gzip
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.errors import REJECT_REASONS
from pipeline.core.registry import PartResult, PlanContext, get_stage
from pipeline.core.schemas import conform
from pipeline.ingest import files as ingest_files
from pipeline.ingest.common import PartSpec
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.files import Location, TextSniff, digest, pick_file, sniff_text, walk_files

OUTPUTS = ("reports", "images_meta", "official_labels")

OBSERVATIONS_ALPHA = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
]


@dataclass
class Ingested:
    """Everything one ingest produced, parts concatenated, with the accounting already checked."""

    specs: list[PartSpec]
    parts: list[PartResult]
    tables: dict[str, pa.Table] = field(default_factory=dict)
    rows_in: dict[str, int] = field(default_factory=dict)

    @property
    def reports(self) -> pa.Table:
        return self.tables["reports"]

    @property
    def images(self) -> pa.Table:
        return self.tables["images_meta"]

    @property
    def labels(self) -> pa.Table:
        return self.tables["official_labels"]

    @property
    def rejects(self) -> pa.Table:
        return self.tables["rejects"]

    def rejected(self, dataset: str) -> dict[str, str]:
        """row_id -> reason_code of the rejects of ``dataset``."""
        t = self.rejects.filter(pc.equal(self.rejects["dataset"], dataset))
        return dict(zip(t["row_id"].to_pylist(), t["reason_code"].to_pylist(), strict=True))

    def column(self, dataset: str, name: str) -> list:
        return self.tables[dataset][name].to_pylist()

    def row(self, dataset: str, key: str, value: str) -> dict:
        rows = [r for r in self.tables[dataset].to_pylist() if r[key] == value]
        assert len(rows) == 1, (key, value, rows)
        return rows[0]


def ingest(config: IngestConfig, staging: Path, *, aligned: bool = True) -> Ingested:
    """Plan and read every part as the runner would (specs pickled in between), checking per part:
    schemas, reject codes, rows_in == rows out + rejects per dataset, and (``aligned``) that every
    image and label row sits in the part of its report."""
    stage = get_stage("ingest")
    specs = stage.plan(config, PlanContext(staging_dir=str(staging), part_size=config.part_size))
    parts = [stage.read(pickle.loads(pickle.dumps(spec)), config) for spec in specs]
    for index, result in enumerate(parts):
        assert set(result.tables) == {*OUTPUTS, "rejects"}
        for name, table in result.tables.items():
            assert conform(table, name).equals(table)
        rejects = result.tables["rejects"]
        assert set(rejects["reason_code"].to_pylist()) <= set(REJECT_REASONS)
        by_dataset = rejects["dataset"].to_pylist()
        for dataset in OUTPUTS:
            n_out = result.tables[dataset].num_rows
            assert result.rows_in[dataset] == n_out + by_dataset.count(dataset), (index, dataset)
        if aligned and result.tables["reports"].num_rows:
            ids = set(result.tables["reports"]["report_id"].to_pylist())
            assert set(result.tables["images_meta"]["report_id"].to_pylist()) <= ids
            assert set(result.tables["official_labels"]["report_id"].to_pylist()) <= ids
    out = Ingested(specs, parts)
    for name in (*OUTPUTS, "rejects"):
        out.tables[name] = pa.concat_tables([p.tables[name] for p in parts]) if parts else None
    out.rows_in = {d: sum(p.rows_in[d] for p in parts) for d in OUTPUTS}
    if parts and out.reports.num_rows:
        assert len(set(out.column("reports", "report_id"))) == out.reports.num_rows
        assert len(set(out.column("images_meta", "image_id"))) == out.images.num_rows
    return out


# -- tests of the file helpers ---------------------------------------------------------------------


def test_location_join_keeps_url_form(tmp_path: Path) -> None:
    local = Location.of(str(tmp_path))
    assert local.local and local.join("a", "b.txt").url == f"{tmp_path}/a/b.txt"
    url = Location.of(f"file://{tmp_path}")
    assert url.local and url.join("a").url == f"file://{tmp_path}/a" and url.join("a").path == f"{tmp_path}/a"


def test_walk_files_lists_relative_sorted(tmp_path: Path) -> None:
    for rel in ("b/2.txt", "b/1.txt", "a/x/3.dcm", "top.csv"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert list(walk_files(Location.of(str(tmp_path)))) == ["top.csv", "a/x/3.dcm", "b/1.txt", "b/2.txt"]
    assert sorted(walk_files(Location.of(f"file://{tmp_path}"))) == [
        "a/x/3.dcm",
        "b/1.txt",
        "b/2.txt",
        "top.csv",
    ]


def test_pick_file_prefers_newest_version_then_plain() -> None:
    names = [
        "mimic-cxr-2.0.0-chexpert.csv.gz",
        "mimic-cxr-2.1.0-chexpert.csv.gz",
        "mimic-cxr-2.1.0-chexpert.csv",
    ]
    assert pick_file(names, r"mimic-cxr-2\.\d+\.\d+-chexpert\.csv(\.gz)?") == "mimic-cxr-2.1.0-chexpert.csv"
    assert pick_file(names, r"nothing") is None
    assert digest("a", "b") != digest("ab") and digest("a") == digest("a")


def _sniff(tmp_path: Path, data: bytes, name: str = "t.csv") -> TextSniff:
    (tmp_path / name).write_bytes(data)
    return sniff_text(Location.of(str(tmp_path / name)))


def test_sniff_text_tells_encodings_by_bom_and_by_nul_bytes(tmp_path: Path) -> None:
    text = "uid,report\nr1,Épanchement \u2013 pleural\n"
    for encoding, bom in (
        ("utf-16-le", codecs.BOM_UTF16_LE),
        ("utf-16-be", codecs.BOM_UTF16_BE),
        ("utf-32-le", codecs.BOM_UTF32_LE),
        ("utf-32-be", codecs.BOM_UTF32_BE),
        ("utf-8", codecs.BOM_UTF8),
    ):
        assert _sniff(tmp_path, bom + text.encode(encoding)) == TextSniff(
            None, encoding, "by its byte-order mark", len(bom)
        )
        if encoding != "utf-8":
            assert _sniff(tmp_path, text.encode(encoding)) == TextSniff(None, encoding, "by its NUL bytes")
    gz = _sniff(tmp_path, gzip.compress(text.encode("utf-16-le")), "t.csv")  # gzip told by its bytes
    assert (gz.compression, gz.encoding) == ("gzip", "utf-16-le")
    # UTF-8 with a garbled row (NUL and control bytes) stays UTF-8 text: that row is a reject.
    garbled = "uid,report\nr1,FINDINGS: \x00\x01\x02\x03 no effusion \x04\x05\x06\n" * 20
    assert _sniff(tmp_path, garbled.encode()) == TextSniff(None)
    assert _sniff(tmp_path, "caf\xe9,x\n".encode("cp1252")) == TextSniff(None)


def test_utf16_is_re_encoded_a_chunk_at_a_time(tmp_path: Path, monkeypatch) -> None:
    """A multi-GB UTF-16 file is never read whole: reads of the file stay at TRANSCODE_CHUNK."""
    monkeypatch.setattr(ingest_files, "TRANSCODE_CHUNK", 1000)
    text = "uid,report\n" + "".join(f'r{i},"Ligne {i}\nsuite \u2013 é"\n' for i in range(2000))
    data = codecs.BOM_UTF16_BE + text.encode("utf-16-be")
    sizes: list[int] = []

    class Recording(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            sizes.append(-1 if size is None else size)
            return super().read(size)

    stream = ingest_files._Utf8Stream(Recording(data[2:]), "utf-16-be")
    assert stream.read() == text.encode("utf-8")
    assert sizes and max(sizes) == 1000 and -1 not in sizes
    (tmp_path / "big.csv").write_bytes(data)
    with ingest_files.open_text(Location.of(str(tmp_path / "big.csv"))) as fh:
        assert fh.read(11) == b"uid,report\n"
