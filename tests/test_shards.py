"""The shards stage: the plan's pure parts on tiny frames, then the demo run's real shards."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.core.io import Store, read_dataset
from pipeline.core.schemas import chexpert_observations
from pipeline.shards.plan import (
    ShardsConfig,
    assign_splits,
    cut_shards,
    neighbour_groups,
    training_text,
)
from pipeline.shards.stage import SPLITS, read_index, read_shards

# -- the plan ------------------------------------------------------------------------------------


def _sections(rows: list[tuple[str, int, str, str]]) -> pl.LazyFrame:
    return pl.DataFrame(rows, schema=["report_id", "section_idx", "section", "text"], orient="row").lazy()


def test_training_text_takes_findings_then_impression_else_fallback() -> None:
    sections = _sections(
        [
            ("a", 0, "indication", "Cough."),
            ("a", 1, "impression", "No effusion."),
            ("a", 2, "findings", "Lungs are\n clear."),  # config order wins over report order
            ("b", 0, "impression", "Small left effusion."),
            ("c", 0, "last_paragraph", "Heart size normal."),
            ("d", 0, "indication", "Fever."),
            ("e", 0, "findings", "   "),
        ]
    )
    got = {r["report_id"]: r for r in training_text(sections, ShardsConfig()).collect().to_dicts()}
    assert got["a"]["text"] == "Lungs are clear. No effusion."
    assert got["a"]["text_source"] == "findings+impression"
    assert (got["b"]["text"], got["b"]["text_source"]) == ("Small left effusion.", "impression")
    assert got["c"]["text_source"] == "last_paragraph"
    assert "d" not in got and "e" not in got  # no text: the stage rejects their images (no_text)
    only_impression = training_text(sections, ShardsConfig(text_sections=("impression",))).collect()
    assert (
        dict(zip(only_impression["report_id"], only_impression["text"], strict=True))["a"] == "No effusion."
    )


def _reports(n_subjects: int, per_subject: int = 3, split: str | None = None) -> pl.DataFrame:
    rows = [(f"r{s}-{k}", f"p{s}", split, False) for s in range(n_subjects) for k in range(per_subject)]
    return pl.DataFrame(rows, schema=["report_id", "subject_id", "split", "in_benchmark"], orient="row")


def test_derived_split_is_patient_level_deterministic_and_near_the_ratios() -> None:
    reports = _reports(3000)
    a = assign_splits(reports, ShardsConfig())
    assert a.equals(assign_splits(reports, ShardsConfig()))
    joined = reports.drop("split").join(a, on="report_id")
    per_subject = joined.group_by("subject_id").agg(pl.col("split").n_unique())
    assert per_subject["split"].max() == 1  # no subject in two splits
    share = Counter(joined.group_by("subject_id").agg(pl.col("split").first())["split"].to_list())
    assert abs(share["train"] / 3000 - 0.9) < 0.03 and share["validate"] and share["test"]
    assert set(a["split_source"]) == {"derived"}
    other = assign_splits(reports, ShardsConfig(seed=1))
    assert not a.equals(other)


def test_dump_split_is_kept_and_benchmark_subjects_never_train() -> None:
    reports = pl.DataFrame(
        [
            ("r1", "p1", "validate", False),
            ("r2", "p1", None, False),  # the subject's dump split covers its unsplit report
            ("r3", "p2", None, True),  # derived, and in CXR-Align: test
            ("r4", "p2", None, False),
            ("r5", None, "bogus", False),  # not a split name: derived, by report
        ],
        schema=["report_id", "subject_id", "split", "in_benchmark"],
        orient="row",
    )
    got = dict(assign_splits(reports, ShardsConfig()).select("report_id", "split").iter_rows())
    assert got["r1"] == got["r2"] == "validate"
    assert got["r3"] == got["r4"] == "test"
    assert got["r5"] in SPLITS
    derived = dict(
        assign_splits(reports, ShardsConfig(split="derived")).select("report_id", "split").iter_rows()
    )
    assert derived["r1"] == derived["r2"]
    with pytest.raises(ValueError, match="split=auto"):
        assign_splits(reports, ShardsConfig(split="dump"))
    with pytest.raises(ValueError, match="split_ratios"):
        assign_splits(reports, ShardsConfig(split_ratios=(1.0, 0.0)))


def test_neighbour_groups_take_unassigned_same_split_neighbours() -> None:
    ids = [f"r{i}" for i in range(200)]
    splits = ["train" if i < 150 else "test" for i in range(200)]
    rng = np.random.default_rng(0)
    neighbours = [[f"r{j}" for j in rng.choice(200, 8, replace=False) if j != i] for i in range(200)]
    config = ShardsConfig(group_size=4, neighbor_share=0.5)
    group = neighbour_groups(ids, splits, neighbours, config)
    assert (group == neighbour_groups(ids, splits, neighbours, config)).all()
    sizes = Counter(group.tolist())
    assert max(sizes.values()) <= 4 and max(sizes.values()) > 1
    for g in sizes:
        members = np.flatnonzero(group == g)
        assert len({splits[m] for m in members}) == 1
    grouped = sum(n for n in sizes.values() if n > 1)
    assert grouped > 0.5 * len(ids)  # anchors plus their neighbours
    alone = neighbour_groups(ids, splits, neighbours, ShardsConfig(neighbor_share=0.0))
    assert len(set(alone.tolist())) == len(ids)


def test_cut_shards_never_splits_a_group_and_respects_the_size() -> None:
    group = np.arange(500)
    samples = np.random.default_rng(1).integers(1, 5, 500)
    shard, rank = cut_shards(group, samples, ShardsConfig(shard_size=50), "train")
    per_shard = Counter()
    for s, n in zip(shard.tolist(), samples.tolist(), strict=True):
        per_shard[s] += n
    assert max(per_shard.values()) <= 50
    assert sorted(per_shard) == list(range(len(per_shard)))
    assert sorted(rank.tolist()) == list(range(500))
    # shards follow the rank order: a later rank is never in an earlier shard
    order = np.argsort(rank)
    assert (np.diff(shard[order]) >= 0).all()
    big = cut_shards(np.arange(3), np.array([120, 1, 1]), ShardsConfig(shard_size=50), "train")[0]
    assert Counter(big.tolist())[big[0]] == 1  # an oversized group gets a shard of its own


# -- the demo run's shards -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shards(demo_run: Path) -> dict[str, object]:
    return {split: read_shards(str(demo_run), split) for split in SPLITS}


def test_every_image_is_a_sample_or_a_reject(demo_run: Path, shards: dict) -> None:
    images = read_dataset(str(demo_run), "images", columns=["image_id", "report_id"])
    rejects = read_dataset(str(demo_run), "rejects")
    mine = rejects.filter(pc.equal(rejects["stage"], "shards"))
    sample_ids = [i for t in shards.values() for i in t["image_id"].to_pylist()]
    assert len(sample_ids) == len(set(sample_ids))
    image_rejects = set(mine.filter(pc.not_equal(mine["reason_code"], "no_image"))["row_id"].to_pylist())
    assert set(sample_ids) | image_rejects == set(images["image_id"].to_pylist())
    assert not set(sample_ids) & image_rejects
    record = json.loads((demo_run / "_state" / "shards" / "_stage.json").read_text())
    assert record["rows_in"] == record["rows_out"] + record["rejected"]
    assert record["rows_out"] == len(sample_ids)
    reports = set(read_dataset(str(demo_run), "reports", columns=["report_id"])["report_id"].to_pylist())
    imageless = set(mine.filter(pc.equal(mine["reason_code"], "no_image"))["row_id"].to_pylist())
    assert imageless == reports - set(images["report_id"].to_pylist())


def test_samples_carry_their_own_reports_parts(demo_run: Path, shards: dict) -> None:
    out = str(demo_run)
    labels = read_dataset(out, "labels").to_pylist()
    labels = {r["report_id"]: [r[o] for o in chexpert_observations()] for r in labels}
    columns = ["report_id", "entity_id", "text", "start", "end"]
    entities = read_dataset(out, "kg_entities", columns=columns).to_pylist()
    texts: dict[str, list[tuple[int, int, str, str]]] = {}
    for e in entities:
        texts.setdefault(e["report_id"], []).append((e["start"], e["end"], e["entity_id"], e["text"]))
    negated = read_dataset(
        out, "negated_reports", columns=["report_id", "negation", "template_set"]
    ).to_pylist()
    negations: dict[str, set[str]] = {}
    for n in negated:
        if n["template_set"] == "train":
            negations.setdefault(n["report_id"], set()).add(n["negation"])
    vectors = read_dataset(out, "clinical_vectors", columns=["report_id", "vector"]).to_pylist()
    vectors = {v["report_id"]: v["vector"] for v in vectors}
    topk = read_dataset(out, "similarity_topk", columns=["report_id", "neighbor_id", "rank"]).to_pylist()
    first = {t["report_id"]: t["neighbor_id"] for t in topk if t["rank"] == 1}
    checked_graphs = checked_negations = 0
    for table in shards.values():
        for row in table.drop(["image"]).to_pylist():
            rid = row["report_id"]
            assert row["labels"] == labels[rid]
            assert row["clinical_vector"] == pytest.approx(vectors[rid])
            # nodes in entity offset order (start, end, entity_id), as the edge indices assume
            assert row["node_texts"] == [e[3] for e in sorted(texts.get(rid, []))]
            n_nodes = len(row["node_concept_ids"])
            assert len(row["node_label_ids"]) == n_nodes
            assert all(0 <= i < n_nodes for i in row["edge_source"] + row["edge_target"])
            assert len(row["edge_source"]) == len(row["edge_target"]) == len(row["edge_types"])
            checked_graphs += bool(n_nodes)
            assert set(row["negated_reports"]) == negations.get(rid, set())
            checked_negations += bool(row["negated_reports"])
            if rid in first:
                assert row["neighbor_ids"][0] == first[rid]
            assert row["text"] and row["text_source"]
    assert checked_graphs and checked_negations


def test_no_benchmark_report_trains_and_no_subject_is_in_two_splits(demo_run: Path, shards: dict) -> None:
    benchmark = set(read_dataset(str(demo_run), "cxr_align", columns=["report_id"])["report_id"].to_pylist())
    assert benchmark, "the demo run should have CXR-Align rows"
    assert not benchmark & set(shards["train"]["report_id"].to_pylist())
    subjects: dict[str, set[str]] = {}
    for split, table in shards.items():
        for subject in table["subject_id"].to_pylist():
            subjects.setdefault(subject, set()).add(split)
    assert all(len(s) == 1 for s in subjects.values())


def test_index_matches_the_files_and_groups_are_contiguous(demo_run: Path, shards: dict) -> None:
    store = Store(str(demo_run))
    for split in SPLITS:
        index = read_index(str(demo_run), split)
        assert index["samples"] == shards[split].num_rows
        assert index["schema"] == "shards" and index["fingerprint"]
        for entry in index["shards"]:
            path = demo_run / "shards" / split / entry["file"]
            meta = pq.ParquetFile(path).metadata
            assert meta.num_rows == entry["samples"] == index["sizes"][entry["file"]]
            assert meta.num_row_groups == entry["row_groups"]
            assert path.stat().st_size == entry["bytes"]
            groups = pq.read_table(path, columns=["group_id"])["group_id"].to_pylist()
            runs = [g for i, g in enumerate(groups) if i == 0 or groups[i - 1] != g]
            assert len(runs) == len(set(runs)) == entry["groups"]  # contiguous
        manifest = store.read_json(store.manifest_path(f"shards/{split}"))
        assert manifest["complete"] and manifest["rows"] == index["samples"]


def test_golden_shard_index(demo_run: Path, golden) -> None:
    rows = [["split", "file", "samples", "groups", "row_groups", "order_sha256"]]
    for split in SPLITS:
        for entry in read_index(str(demo_run), split)["shards"]:
            table = pq.read_table(
                demo_run / "shards" / split / entry["file"], columns=["image_id", "group_id"]
            )
            order = "\n".join(
                f"{i} {g}"
                for i, g in zip(table["image_id"].to_pylist(), table["group_id"].to_pylist(), strict=True)
            )
            rows.append(
                [split, entry["file"], str(entry["samples"]), str(entry["groups"]), str(entry["row_groups"]),
                 hashlib.sha256(order.encode()).hexdigest()[:16]]
            )  # fmt: skip
    golden("demo_shard_index", rows)


@pytest.mark.slow
def test_resume_rebuilds_only_the_lost_shard(tmp_path: Path, demo_run: Path, dask_client) -> None:
    import shutil

    from pipeline.core.config import compose_run
    from pipeline.core.registry import get_stage
    from pipeline.core.runner import Runner

    out = tmp_path / "run"
    shutil.copytree(demo_run, out)
    cfg = compose_run([f"out={out}", "stages.shards.shard_size=40"])
    stage = get_stage("shards")
    runner = Runner(str(out), dask_client)
    first = runner.run_stage(stage, cfg.stage_config("shards"))
    assert first.status == "ran"
    train = read_index(str(out), "train")["shards"]
    assert len(train) >= 2
    before = {e["file"]: pq.read_table(out / "shards" / "train" / e["file"]) for e in train}
    lost = train[1]["file"]
    (out / "shards" / "train" / lost).unlink()
    (out / "_state" / "shards" / lost.replace(".parquet", ".json")).unlink()
    (out / "_state" / "shards" / "_stage.json").unlink()
    again = runner.run_stage(stage, cfg.stage_config("shards"))
    assert again.status == "resumed"
    for name, table in before.items():
        assert pq.read_table(out / "shards" / "train" / name).equals(table)
    assert runner.run_stage(stage, cfg.stage_config("shards")).status == "skipped"
    # Fewer shards, then the first setting again: the markers of the parts the middle run did not
    # write are gone with their files, so nothing is taken for finished that is not there.
    bigger = compose_run([f"out={out}", "stages.shards.shard_size=400"]).stage_config("shards")
    runner.run_stage(stage, bigger)
    assert len(read_index(str(out), "train")["shards"]) < len(train)
    back = runner.run_stage(stage, cfg.stage_config("shards"))
    assert back.status == "ran"
    assert [e["file"] for e in read_index(str(out), "train")["shards"]] == [e["file"] for e in train]
    for name, table in before.items():
        assert pq.read_table(out / "shards" / "train" / name).equals(table)


def test_shrink_png_keeps_aspect_never_enlarges_and_is_deterministic() -> None:
    import io

    from PIL import Image

    from pipeline.shards.stage import shrink_png

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (600, 500), dtype=np.uint8)).save(buffer, "PNG")
    data, height, width = shrink_png(buffer.getvalue(), 256)
    assert (height, width) == (307, 256)
    assert Image.open(io.BytesIO(data)).size == (256, 307)
    assert shrink_png(buffer.getvalue(), 256)[0] == data
    same = shrink_png(data, 300)  # shorter side 256 <= 300: untouched
    assert same == (data, 307, 256)
