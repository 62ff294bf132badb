"""Clinical vectors: one fixed-size float32 vector per report from its labels and fine findings.

Layout (dimension ``14 + F``, ``F`` the number of ids in ``finding_vocabulary.yaml``):

* slots ``0..13``: the 14 CheXpert observations in ``schemas/labels.yaml`` order (No Finding first),
  from ``labels``;
* slots ``14..``: the fine findings of ``finding_vocabulary.yaml`` in file order, from ``findings``.

The vocabulary is a fixed, append-only data file, never taken from what a partition happens to
hold, so the dimension is the same across partitions and runs.

Each slot holds ``block_weight * state_value``:

============  ========  ====================================================================
state         default   why
============  ========  ====================================================================
present       +1.0      the finding is there
uncertain     +0.5      "may represent X" leans toward X: half the evidence of present
absent        -0.25     a denial is information: present against absent is a contradiction
                        (negative contribution), absent against absent a small agreement
unmentioned    0.0      no evidence either way: contributes nothing to any dot product
============  ========  ====================================================================

Block weights: observations 1.0, fine findings 0.5 (a fine finding refines its observation; it
should not outvote it). Labels map 1.0 to present, -1.0 to uncertain, 0.0 to absent and null to
unmentioned; ``No Finding`` is an observation like the others, which is what makes normal reports
similar.

What cosine similarity means with these defaults (tests/test_similarity_encoding.py checks each):

* two normal reports share the ``No Finding`` slot (+1 each) and, often, denials of the same
  findings; denials are small (-0.25), so a terse normal ("No acute process.") and a verbose one
  (four denials) still score about 0.8, and two identical templates score 1;
* two reports with different positives and nothing else in common score 0 (their positives sit in
  different slots); shared denials lift that only slightly (about 0.1);
* the same positive scores about 0.7 to 1 depending on what else each report says;
* a positive against a denial of the same finding pulls the score below 0: a normal report and an
  effusion report score negative, not merely low.

All default values are multiples of 1/8, so the vectors are exact in float32 and the top-k
kernel's dot products are exact (see ``topk.py``). Config values are free; the encoding string of
every row (``clinical.v1/vocab.v1/d<14 + F>/<hash of the values>``) records what produced it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from importlib import resources

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from pipeline.core.errors import PipelineError
from pipeline.core.schemas import chexpert_observations

ENCODING_VERSION = 1

# The 14 CheXpert observations in the order of schemas/labels.yaml (No Finding first).
OBSERVATIONS: tuple[str, ...] = chexpert_observations()
STATUSES: tuple[str, ...] = ("present", "uncertain", "absent")
_LABEL_STATE = {1.0: "present", -1.0: "uncertain", 0.0: "absent"}
_ID = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class ClinicalVectorConfig:
    """Values of the clinical vector encoding (module docstring); every row records them by hash."""

    present: float = 1.0
    uncertain: float = 0.5
    absent: float = -0.25
    observation_weight: float = 1.0  # the 14 CheXpert slots
    finding_weight: float = 0.5  # the fine-finding slots
    unknown_findings: str = "error"  # a finding id outside the vocabulary: "error" or "ignore"


@dataclass(frozen=True)
class Vocabulary:
    """The fine-finding vocabulary: its version and ids in slot order."""

    version: int
    findings: tuple[str, ...]

    @functools.cached_property
    def index(self) -> dict[str, int]:
        return {f: i for i, f in enumerate(self.findings)}


@functools.cache
def load_vocabulary() -> Vocabulary:
    """Load and validate ``finding_vocabulary.yaml``. Raises PipelineError(E_VOCABULARY_INVALID)."""
    where = "pipeline/similarity/finding_vocabulary.yaml"
    raw = yaml.safe_load((resources.files("pipeline.similarity") / "finding_vocabulary.yaml").read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("findings"), list) or "version" not in raw:
        raise PipelineError("E_VOCABULARY_INVALID", f"{where} must hold `version:` and a `findings:` list.")
    ids = [str(f) for f in raw["findings"]]
    bad = [f for f in ids if not _ID.fullmatch(f)]
    dupes = sorted({f for f in ids if ids.count(f) > 1})
    if bad or dupes or not ids:
        raise PipelineError(
            "E_VOCABULARY_INVALID",
            f"{where}: ids must be unique snake_case (bad: {bad[:5]}, duplicated: {dupes[:5]}).",
        )
    return Vocabulary(int(raw["version"]), tuple(ids))


def vector_layout(vocabulary: Vocabulary | None = None) -> tuple[str, ...]:
    """Names of the vector slots: ``observation:<CheXpert name>`` then ``finding:<id>``."""
    vocabulary = vocabulary or load_vocabulary()
    return tuple(f"observation:{o}" for o in OBSERVATIONS) + tuple(
        f"finding:{f}" for f in vocabulary.findings
    )


def vector_size(vocabulary: Vocabulary | None = None) -> int:
    return len(OBSERVATIONS) + len((vocabulary or load_vocabulary()).findings)


def check_config(config: ClinicalVectorConfig) -> None:
    """Raise PipelineError(E_CONFIG_VALUE) for values that cannot define an encoding."""
    values = {k: v for k, v in asdict(config).items() if k != "unknown_findings"}
    if not all(math.isfinite(v) for v in values.values()):
        raise PipelineError("E_CONFIG_VALUE", f"clinical_vectors: values must be finite, got {values}")
    if config.observation_weight < 0 or config.finding_weight < 0:
        raise PipelineError("E_CONFIG_VALUE", "clinical_vectors: block weights must be >= 0")
    if config.unknown_findings not in ("error", "ignore"):
        raise PipelineError(
            "E_CONFIG_VALUE",
            f"clinical_vectors.unknown_findings must be 'error' or 'ignore', got {config.unknown_findings!r}",
        )


def encoding_id(config: ClinicalVectorConfig, vocabulary: Vocabulary | None = None) -> str:
    """``clinical.v<N>/vocab.v<M>/d<size>/<hash>``: what produced a vector, in one string."""
    vocabulary = vocabulary or load_vocabulary()
    values = {k: float(v) for k, v in asdict(config).items() if k != "unknown_findings"}
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]
    return f"clinical.v{ENCODING_VERSION}/vocab.v{vocabulary.version}/d{vector_size(vocabulary)}/{digest}"


@dataclass
class Encoded:
    """Vectors of the encodable reports, and the reports that could not be encoded."""

    report_ids: list[str]
    vectors: np.ndarray  # (n, 14 + F) float32
    counts: np.ndarray  # (n, 3) int16: slots present / uncertain / absent (No Finding excluded)
    rejected: list[tuple[str, str, str]]  # (report_id, reason_code, detail)


def encode(labels: pa.Table, findings: pa.Table, config: ClinicalVectorConfig) -> Encoded:
    """Encode each ``labels`` row with the ``findings`` rows of the same report.

    A label outside {1, 0, -1, null} or a finding status outside present / absent / uncertain
    rejects that report (``bad_value``). A finding id outside the vocabulary raises
    PipelineError(E_VOCABULARY_UNKNOWN) unless ``config.unknown_findings == "ignore"``. Findings of
    reports absent from ``labels`` are ignored. Never mutates its inputs.
    """
    check_config(config)
    vocabulary = load_vocabulary()
    n = labels.num_rows
    n_obs = len(OBSERVATIONS)
    state_value = {"present": config.present, "uncertain": config.uncertain, "absent": config.absent}
    vectors = np.zeros((n, vector_size(vocabulary)), np.float64)
    counts = np.zeros((n, 3), np.int64)
    bad: dict[int, str] = {}
    for j, obs in enumerate(OBSERVATIONS):
        values = labels.column(obs).to_numpy(zero_copy_only=False).astype(np.float64)
        known = np.isnan(values) | np.isin(values, list(_LABEL_STATE))
        for i in np.flatnonzero(~known):
            bad.setdefault(int(i), f"{obs} = {values[i]!r} (labels are 1, 0, -1 or null)")
        for code, state in _LABEL_STATE.items():
            hit = values == code
            vectors[hit, j] = config.observation_weight * state_value[state]
            if j > 0:  # No Finding is a summary, not a finding: not counted
                counts[hit, STATUSES.index(state)] += 1
    if findings.num_rows:
        row = pc.index_in(findings.column("report_id"), value_set=labels.column("report_id"))
        row = row.to_numpy(zero_copy_only=False)
        ours = ~np.isnan(row.astype(np.float64))
        finding_ids = findings.column("finding").to_pylist()
        statuses = findings.column("status").to_pylist()
        unknown = sorted(
            {finding_ids[i] for i in np.flatnonzero(ours) if finding_ids[i] not in vocabulary.index}
        )
        if unknown and config.unknown_findings == "error":
            raise PipelineError(
                "E_VOCABULARY_UNKNOWN",
                f"findings use ids outside pipeline/similarity/finding_vocabulary.yaml: {unknown[:10]}. "
                "Append them to that file (append-only; bump its version), or set "
                "stages.clinical_vectors.unknown_findings=ignore to drop them.",
            )
        for i in np.flatnonzero(ours):
            r = int(row[i])
            slot = vocabulary.index.get(finding_ids[i])
            if slot is None:
                continue
            status = statuses[i]
            if status not in state_value:
                bad.setdefault(r, f"finding {finding_ids[i]} has status {status!r}")
                continue
            vectors[r, n_obs + slot] = config.finding_weight * state_value[status]
            counts[r, STATUSES.index(status)] += 1
    keep = np.array([i not in bad for i in range(n)], dtype=bool)
    ids = labels.column("report_id").to_pylist()
    return Encoded(
        report_ids=[ids[i] for i in np.flatnonzero(keep)],
        vectors=vectors[keep].astype(np.float32),
        counts=counts[keep].astype(np.int16),
        rejected=[(ids[i], "bad_value", detail) for i, detail in sorted(bad.items())],
    )


def clinical_vectors_table(encoded: Encoded, config: ClinicalVectorConfig) -> pa.Table:
    """The ``clinical_vectors`` table of :func:`encode`'s result (schema in schemas/)."""
    n, dim = encoded.vectors.shape
    vector = pa.FixedSizeListArray.from_arrays(pa.array(encoded.vectors.reshape(-1), pa.float32()), dim)
    return pa.table(
        {
            "report_id": pa.array(encoded.report_ids, pa.string()),
            "vector": vector,
            "encoding": pa.array([encoding_id(config)] * n, pa.string()),
            "n_present": pa.array(encoded.counts[:, 0], pa.int16()),
            "n_uncertain": pa.array(encoded.counts[:, 1], pa.int16()),
            "n_absent": pa.array(encoded.counts[:, 2], pa.int16()),
        }
    )


def vectors_of(table: pa.Table, column: str = "vector") -> np.ndarray:
    """A ``vector<float32>`` column as an ``(n, d)`` float32 array (no copy when possible)."""
    col = table.column(column).combine_chunks() if table.num_rows else None
    if col is None:
        size = table.schema.field(column).type.list_size
        return np.zeros((0, max(size, 0)), np.float32)
    if col.null_count:
        raise PipelineError("E_SCHEMA_MISMATCH", f"column {column!r} holds null vectors")
    size = col.type.list_size
    # flatten() honours a slice's offset; .values would not
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, size)
