"""The shared text checks and the section helpers of the ingest stage."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from pipeline.ingest.text import (
    check_text,
    decode_id,
    decode_text,
    decode_text_as,
    locate_sections,
    not_utf8_rows,
    sectioned_text,
)


def test_decode_utf8_then_cp1252_then_give_up() -> None:
    assert decode_text("caf\xe9 \u2013".encode()) == "caf\xe9 \u2013"
    assert decode_text("caf\xe9 \u2013".encode("cp1252")) == "caf\xe9 \u2013"
    assert decode_text(b"\x81\x8d\x8f\x90\x9d") is None  # undefined in cp1252, invalid UTF-8
    assert decode_text("\ufeffFINDINGS".encode()) == "FINDINGS"
    assert decode_text(b"a\r\nb\rc\n") == "a\nb\nc\n"
    assert decode_text(None) == ""
    assert decode_id(b" 42 ") == "42" and decode_id(b"\xff1") == "\xff1" and decode_id(None) == ""


def test_check_text_reasons() -> None:
    assert check_text("FINDINGS: Clear lungs.", 100) is None
    assert check_text(None, 100)[0] == "bad_encoding"
    assert check_text("abc\x00def", 100)[0] == "garbled_text"
    assert check_text("x" * 50 + "\x01\x02", 100)[0] == "garbled_text"  # 2 of 52 > 1%
    assert check_text("x" * 300 + "\x0c", 1000) is None  # one stray form feed is not garbage
    assert check_text("tabs\tand\nnewlines are fine", 100) is None
    assert check_text("", 100) == ("empty_text", "empty")
    assert check_text(" \n\t", 100) == ("empty_text", "whitespace only")
    assert check_text("x" * 101, 100)[0] == "too_long"
    assert check_text("x" * 100, 100) is None


def test_sectioned_text_spans_point_at_bodies() -> None:
    text, spans = sectioned_text(
        [("indication", " Cough. "), ("comparison", ""), ("findings", "Clear.\nNo effusion.")]
    )
    assert text == "INDICATION: Cough.\n\nFINDINGS: Clear.\nNo effusion."
    assert [(s["name"], text[s["start"] : s["end"]]) for s in spans] == [
        ("indication", "Cough."),
        ("findings", "Clear.\nNo effusion."),
    ]
    assert sectioned_text([("clinical_history", "x")])[0] == "CLINICAL HISTORY: x"
    assert sectioned_text([("a", " "), ("b", "")]) == ("", [])


@given(
    st.lists(
        st.tuples(st.sampled_from(["findings", "impression", "indication"]), st.text(max_size=30)), max_size=5
    )
)
def test_sectioned_text_spans_property(bodies: list[tuple[str, str]]) -> None:
    text, spans = sectioned_text(bodies)
    expected = [(name, body.strip()) for name, body in bodies if body.strip()]
    assert [(s["name"], text[s["start"] : s["end"]]) for s in spans] == expected
    assert all(a["end"] <= b["start"] for a, b in zip(spans, spans[1:], strict=False))


def test_locate_sections_in_the_report() -> None:
    report = "NARRATIVE: PA and lateral.\n\nFINDINGS: Lungs are\n  clear.\n\nIMPRESSION:\nNormal."
    spans = locate_sections(
        report,
        [
            ("narrative", "PA and lateral."),
            ("findings", "Lungs are clear."),
            ("impression", "Normal."),
            ("summary", "not there"),
            ("history", ""),
        ],
    )
    assert [(s["name"], report[s["start"] : s["end"]]) for s in spans] == [
        ("narrative", "PA and lateral."),
        ("findings", "Lungs are\n  clear."),
        ("impression", "Normal."),
    ]
    assert locate_sections(report, [("summary", "absent")]) is None
    # A body found twice is placed after the previous section, and never on top of another span.
    twice = "FINDINGS: Normal.\nIMPRESSION: Normal."
    spans = locate_sections(twice, [("findings", "Normal."), ("impression", "Normal.")])
    assert [(s["name"], s["start"]) for s in spans] == [("findings", 10), ("impression", 30)]


def test_decode_text_as_says_which_encoding_it_assumed() -> None:
    assert decode_text_as("caf\xe9".encode()) == ("caf\xe9", "utf-8")
    assert decode_text_as("caf\xe9 \u2013".encode("cp1252")) == ("caf\xe9 \u2013", "cp1252")
    assert decode_text_as(b"\x81\x8d") == (None, "")
    assert decode_text_as(None) == ("", "utf-8") and decode_text_as("x\r\n") == ("x\n", "utf-8")


def test_not_utf8_rows() -> None:
    a = pa.array([b"ok", "caf\xe9".encode("cp1252"), None, b"fine"], pa.binary())
    b = pa.array([b"\xff", b"ok", b"ok", b"ok"], pa.binary())
    assert not_utf8_rows([a, b]) == [0, 1]
    assert not_utf8_rows([pa.array([b"x", None], pa.binary())]) == []
