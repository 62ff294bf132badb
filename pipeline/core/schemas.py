"""Dataset schemas: YAML files in ``schemas/`` turned into Arrow schemas, and checks against them.

The YAML files are the source of truth (see schemas/README.md). They ship inside the wheel as the
``pipeline.schemas`` resource package, so an installed pipeline finds them without a checkout.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from pipeline.core.errors import PipelineError, did_you_mean

SCHEMA_KEY = b"clip2clinic.schema"
VERSION_KEY = b"clip2clinic.schema_version"

_SCALARS: dict[str, pa.DataType] = {
    "string": pa.string(),
    "binary": pa.binary(),
    "bool": pa.bool_(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
}


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    nullable: bool
    description: str = ""


@dataclass(frozen=True)
class DatasetSchema:
    """One dataset's contract: name, version, key columns and typed columns."""

    name: str
    version: int
    key: tuple[str, ...]
    columns: tuple[Column, ...]
    description: str = ""

    def arrow(self, vector_size: int | None = None) -> pa.Schema:
        """The Arrow schema, with the schema name and version in its metadata.

        ``vector_size`` fixes the size of ``vector<...>`` columns (a run setting).
        """
        fields = [
            pa.field(c.name, _fix_vectors(c.type, vector_size), nullable=c.nullable) for c in self.columns
        ]
        meta = {SCHEMA_KEY: self.name.encode(), VERSION_KEY: str(self.version).encode()}
        return pa.schema(fields, metadata=meta)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


def parse_type(text: str) -> pa.DataType:
    """Parse a type string of schemas/README.md into an Arrow type. Raises ValueError."""
    text = text.strip()
    if text in _SCALARS:
        return _SCALARS[text]
    m = re.fullmatch(r"(list|vector)<(.*)>", text)
    if m:
        inner = parse_type(m.group(2))
        if m.group(1) == "vector":
            # Size 0 is a placeholder fixed by DatasetSchema.arrow(vector_size=...).
            return pa.list_(pa.field("item", inner, nullable=False), 0)
        return pa.list_(inner)
    m = re.fullmatch(r"struct<(.*)>", text)
    if m:
        return pa.struct([pa.field(n, parse_type(t)) for n, t in _split_fields(m.group(1))])
    raise ValueError(f"unknown type {text!r}")


def _split_fields(body: str) -> list[tuple[str, str]]:
    """Split 'a: string, b: list<int32>' at top-level commas."""
    parts, depth, cur = [], 0, ""
    for ch in body:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    out = []
    for part in parts:
        name, _, typ = part.partition(":")
        out.append((name.strip(), typ.strip()))
    return out


def _fix_vectors(typ: pa.DataType, size: int | None) -> pa.DataType:
    if pa.types.is_fixed_size_list(typ):
        if not size:
            raise ValueError("a vector column needs vector_size")
        return pa.list_(pa.field("item", typ.value_type, nullable=False), size)
    return typ


def schema_name(dataset: str) -> str:
    """The schema a dataset id uses: a member of a family (``shards/train``) uses the family's."""
    return dataset.split("/", 1)[0]


@functools.cache
def load_schema(name: str) -> DatasetSchema:
    """Load ``schemas/<name>.yaml`` (``shards/train``: ``schemas/shards.yaml``).

    Raises PipelineError(E_SCHEMA_*) when missing or malformed.
    """
    name = schema_name(name)
    known = available_schemas()
    if name not in known:
        raise PipelineError(
            "E_SCHEMA_MISSING",
            f"dataset {name!r} has no schema in schemas/.{did_you_mean(name, known)} "
            f"Add schemas/{name}.yaml (see schemas/README.md).",
        )
    raw = yaml.safe_load((resources.files("pipeline.schemas") / f"{name}.yaml").read_text())
    try:
        cols = tuple(
            Column(c["name"], parse_type(c["type"]), bool(c.get("nullable", True)), c.get("description", ""))
            for c in raw["columns"]
        )
        schema = DatasetSchema(
            name=raw["name"],
            version=int(raw["version"]),
            key=tuple(raw.get("key") or ()),
            columns=cols,
            description=raw.get("description", ""),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PipelineError("E_SCHEMA_INVALID", f"schemas/{name}.yaml is malformed: {exc}") from exc
    if schema.name != name:
        raise PipelineError("E_SCHEMA_INVALID", f"schemas/{name}.yaml declares name {schema.name!r}")
    unknown_keys = set(schema.key) - set(schema.names)
    if unknown_keys:
        raise PipelineError(
            "E_SCHEMA_INVALID", f"schemas/{name}.yaml: key columns {sorted(unknown_keys)} are not columns"
        )
    return schema


@functools.cache
def available_schemas() -> frozenset[str]:
    root = resources.files("pipeline.schemas")
    return frozenset(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


@functools.cache
def chexpert_observations() -> tuple[str, ...]:
    """The 14 CheXpert observation names, in the order of schemas/labels.yaml (its float32 columns).

    The labels schema is the one place these names are spelt; modules that need them ask here.
    """
    return tuple(c.name for c in load_schema("labels").columns if c.type == pa.float32())


def conform(table: pa.Table, name: str, *, vector_size: int | None = None) -> pa.Table:
    """Check ``table`` against dataset ``name`` and return it cast to the exact schema.

    Columns must match by name (order is fixed here); types must cast safely; non-nullable
    columns may hold no null; key columns must be unique within the table.
    Raises PipelineError(E_SCHEMA_MISMATCH) naming every problem found.
    """
    schema = load_schema(name)
    if vector_size is None and any(pa.types.is_fixed_size_list(c.type) for c in schema.columns):
        vector_size = _infer_vector_size(table, schema)
    target = schema.arrow(vector_size)
    problems: list[str] = []
    have, want = set(table.column_names), set(schema.names)
    if missing := sorted(want - have):
        problems.append(f"missing columns {missing}")
    if extra := sorted(have - want):
        problems.append(f"unknown columns {extra}")
    if problems:
        raise PipelineError("E_SCHEMA_MISMATCH", f"{name}: " + "; ".join(problems))
    arrays = []
    for field in target:
        col = table.column(field.name)
        try:
            col = col.cast(field.type, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            problems.append(f"column {field.name!r} ({col.type}) does not cast to {field.type}: {exc}")
            continue
        if not field.nullable and col.null_count:
            problems.append(f"column {field.name!r} has {col.null_count} nulls but is not nullable")
        arrays.append(col)
    if not problems and schema.key and table.num_rows:
        keys = table.select(list(schema.key))
        n_unique = keys.group_by(list(schema.key)).aggregate([]).num_rows
        if n_unique != table.num_rows:
            problems.append(f"key {list(schema.key)} has {table.num_rows - n_unique} duplicate rows")
    if problems:
        raise PipelineError("E_SCHEMA_MISMATCH", f"{name}: " + "; ".join(problems))
    return pa.Table.from_arrays(arrays, schema=target)


def _infer_vector_size(table: pa.Table, schema: DatasetSchema) -> int | None:
    """The size of the table's vector columns (all must agree); None for an empty table."""
    sizes = set()
    for col in schema.columns:
        if pa.types.is_fixed_size_list(col.type) and col.name in table.column_names:
            typ = table.schema.field(col.name).type
            if pa.types.is_fixed_size_list(typ):
                sizes.add(typ.list_size)
            elif table.num_rows:
                first = table.column(col.name).drop_null()
                if len(first):
                    sizes.add(len(first[0]))
    if len(sizes) > 1:
        raise PipelineError(
            "E_SCHEMA_MISMATCH", f"{schema.name}: vector columns disagree on size {sorted(sizes)}"
        )
    return sizes.pop() if sizes else 1


def empty(name: str, *, vector_size: int | None = None) -> pa.Table:
    """An empty table with dataset ``name``'s schema."""
    return load_schema(name).arrow(vector_size).empty_table()


def check_file_schema(schema: pa.Schema, name: str, where: str) -> None:
    """Check the name and version stamped in a Parquet file. Raises PipelineError(E_SCHEMA_STAMP)."""
    meta = schema.metadata or {}
    got_name = meta.get(SCHEMA_KEY, b"").decode()
    got_version = meta.get(VERSION_KEY, b"").decode()
    want = load_schema(name)
    if got_name != schema_name(name) or got_version != str(want.version):
        raise PipelineError(
            "E_SCHEMA_STAMP",
            f"{where} holds {got_name or 'an unstamped table'} v{got_version or '?'}, expected {want.name} "
            f"v{want.version}. Rerun the stage that writes it (or delete the folder) to rebuild it.",
        )


def null_count(table: pa.Table, column: str) -> int:
    return pc.sum(pc.is_null(table.column(column))).as_py() or 0
