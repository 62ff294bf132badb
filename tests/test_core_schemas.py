"""Schemas: every YAML loads, conform() casts or refuses, stamps are written and checked."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.errors import PipelineError, reject_table
from pipeline.core.io import Store
from pipeline.core.schemas import available_schemas, conform, empty, load_schema, parse_type


def test_every_schema_loads_and_builds():
    for name in available_schemas():
        schema = load_schema(name)
        assert schema.name == name
        assert schema.columns
        arrow = schema.arrow(vector_size=8)
        assert arrow.metadata[b"clip2clinic.schema"] == name.encode()


def test_labels_have_the_exact_chexpert_names():
    names = load_schema("labels").names
    assert names[1:15] == [
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
    ]


def test_parse_type():
    assert parse_type("list<struct<name: string, start: int32>>") == pa.list_(
        pa.struct([("name", pa.string()), ("start", pa.int32())])
    )
    assert pa.types.is_fixed_size_list(parse_type("vector<float32>"))
    with pytest.raises(ValueError):
        parse_type("complex128")


def test_conform_casts_and_orders():
    t = pa.table(
        {"detail": ["x"], "reason_code": ["empty_text"], "row_id": ["1"], "dataset": ["d"], "stage": ["s"]}
    )
    out = conform(t, "rejects")
    assert out.column_names == ["stage", "dataset", "row_id", "reason_code", "detail"]


@pytest.mark.parametrize(
    "table, message",
    [
        (
            pa.table({"stage": ["s"], "dataset": ["d"], "row_id": ["1"], "reason_code": ["x"]}),
            "missing columns",
        ),
        (
            pa.table(
                {
                    "stage": ["s"],
                    "dataset": ["d"],
                    "row_id": ["1"],
                    "reason_code": ["x"],
                    "detail": [None],
                    "extra": [1],
                }
            ),
            "unknown columns",
        ),
        (
            pa.table(
                {"stage": [None], "dataset": ["d"], "row_id": ["1"], "reason_code": ["x"], "detail": [None]},
                schema=pa.schema(
                    [
                        ("stage", pa.string()),
                        ("dataset", pa.string()),
                        ("row_id", pa.string()),
                        ("reason_code", pa.string()),
                        ("detail", pa.string()),
                    ]
                ),
            ),
            "not nullable",
        ),
    ],
)
def test_conform_refuses(table, message):
    with pytest.raises(PipelineError, match=message) as err:
        conform(table, "rejects")
    assert err.value.code == "E_SCHEMA_MISMATCH"


def test_conform_refuses_duplicate_keys_and_bad_casts():
    t = empty("sections").to_pylist()
    row = {
        "report_id": "a",
        "section_idx": 0,
        "section": "findings",
        "header": None,
        "text": "x",
        "start": 0,
        "end": 1,
        "is_labeled": True,
    }
    with pytest.raises(PipelineError, match="duplicate"):
        conform(pa.Table.from_pylist([row, row]), "sections")
    with pytest.raises(PipelineError, match="does not cast"):
        conform(pa.Table.from_pylist([{**row, "start": "zero"}]), "sections")
    assert t == []


def test_unknown_schema_suggests():
    with pytest.raises(PipelineError, match="Did you mean 'reports'"):
        load_schema("reprots")


def test_unknown_reject_code_is_a_bug():
    with pytest.raises(ValueError, match="Did you mean 'empty_text'"):
        reject_table("s", "d", [("1", "empty_txt", None)])


def test_written_parts_are_stamped_and_checked(tmp_path):
    store = Store(str(tmp_path))
    store.write_table(reject_table("s", "reports", [("1", "empty_text", None)]), "rejects", 0, stage="s")
    path = store.part_path("rejects", 0, "s")
    assert pq.read_schema(path).metadata[b"clip2clinic.schema_version"] == b"1"
    # A file stamped as another dataset is refused on read.
    (tmp_path / "sections").mkdir()
    pq.write_table(conform(empty("sentences"), "sentences"), store.part_path("sections", 0))
    with pytest.raises(PipelineError) as err:
        store.read_part("sections", 0)
    assert err.value.code == "E_SCHEMA_STAMP"


def test_failed_validation_writes_nothing(tmp_path):
    store = Store(str(tmp_path))
    with pytest.raises(PipelineError):
        store.write_table(pa.table({"x": [1]}), "reports", 0)
    assert not (tmp_path / "reports").exists() or not list((tmp_path / "reports").iterdir())
