"""Typed config of the ingest stage: which dump to read and how."""

from __future__ import annotations

from dataclasses import dataclass, field

DATASET_KINDS = ("mimic_cxr", "chexpert_plus", "chexpert", "table", "demo")


@dataclass(frozen=True)
class DatasetConfig:
    """The `dataset=` config group. `name` picks the adapter; the rest are its settings."""

    name: str = "demo"
    root: str | None = None  # dump folder (mimic_cxr, chexpert, demo) or fsspec URL
    path: str | None = None  # one file: CheXpert Plus CSV, a CheXpert train/valid CSV, any table
    id_column: str | None = None  # table: column holding the report id
    text_column: str | None = None  # table: one free-text column
    text_columns: tuple[str, ...] = ()  # table: several columns, each becomes a section
    subject_column: str | None = None  # table: optional
    study_column: str | None = None  # table: optional
    split_column: str | None = None  # table: optional
    reports_zip: str | None = None  # mimic_cxr: mimic-cxr-reports.zip when not unpacked under root
    # demo only: the dump is generated into root when absent
    n_reports: int = 200
    seed: int = 0
    inject_bad_rows: bool = False
    image_size: str = "small"  # small (64-128 px) or full (about 2,500 x 3,000, 12 bits stored)
    image_format: str = "dcm"  # dcm (uncompressed), dcm_j2k (JPEG 2000 lossless) or jpg (MIMIC-CXR-JPG)


@dataclass(frozen=True)
class IngestConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    # reports per partition (every downstream stage keeps these partitions); None chooses from
    # the input size and the cluster (registry.auto_part_size: 100 to 2,000, four parts a worker)
    part_size: int | None = None
    max_chars: int = 100_000  # longer reports are rejected (too_long); MIMIC's longest is ~12k
    dicom_headers: bool = True  # read DICOM headers (no pixels) when the dump has DICOMs
