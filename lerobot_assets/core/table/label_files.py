"""Label files and label columns: reading CSV / parquet / JSON label files into :class:`Label` s, declared
new columns (``next.success:bool=false``), and the values a column's type accepts.

Frame ranges are half-open, like a Python slice: ``frame_start`` is the first frame changed and
``frame_end`` the first frame *not* changed; either one absent means the start / end of the episode.
Every problem of a file is reported (:class:`LabelError`), naming the file and the line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import deeplake
import numpy as np
import pyarrow.parquet as pq

from lerobot_assets.core.errors import LeRobotAssetsError


LabelValue = bool | int | float | str
MAIN = "main"

#: Types a new label column may be declared with, and their Deeplake types.
COLUMN_TYPES = {
    "text": deeplake.types.Text,
    "bool": deeplake.types.Bool,
    "int64": deeplake.types.Int64,
    "float32": deeplake.types.Float32,
}

LABEL_FIELDS = ("episode", "frame_start", "frame_end", "column", "value")
_COLUMN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,99}")
_BRANCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_COLUMN_SPEC = re.compile(r"\s*([^:\s]+)\s*:\s*(\w+)\s*=(.*)", re.DOTALL)
#: A label file's header block: CSV lines ``# new-column: next.success:bool=false`` before the header row;
#: a JSON object's ``new_columns`` list; a parquet file's ``new_columns`` schema metadata (a JSON list).
HEADER_PREFIX = "# new-column:"
_INT = re.compile(r"[+-]?\d+")
_BOOL_WORDS = {"true": True, "false": False}


class LabelError(LeRobotAssetsError):
    """A label file or label list cannot be applied; ``problems`` lists every reason, not just the first."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        self.problems = list(problems)
        super().__init__(" ".join([message, "; ".join(self.problems)]) if self.problems else message)


@dataclass(frozen=True)
class Label:
    """One column set to one value for an episode, or for frames ``frame_start`` <= f < ``frame_end`` of it.

    ``line`` is where the label was read (a CSV line, else the record's position), for messages.
    """

    episode: int
    column: str
    value: LabelValue
    frame_start: int | None = None
    frame_end: int | None = None
    line: int | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in LABEL_FIELDS}


@dataclass(frozen=True)
class ColumnSpec:
    """A declared label column: its name, type (one of :data:`COLUMN_TYPES`) and the value of unlabelled rows."""

    name: str
    type: str
    default: LabelValue

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "default": self.default}


@dataclass(frozen=True)
class LabelFile:
    """What a label file holds: its labels and the new columns its header block declares."""

    labels: list[Label]
    columns: dict[str, ColumnSpec]


def check_branch(branch: str) -> str:
    """Return ``branch`` if labels may be written onto it: a safe name, and never main."""
    if not isinstance(branch, str) or not _BRANCH_NAME.fullmatch(branch) or ".." in branch:
        raise LabelError(
            f"invalid branch name {branch!r}: use 1-100 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    if branch == MAIN:
        raise LabelError("labels are never written onto main; name a review branch (--branch fix-rewards) and merge it")
    return branch


def parse_column_spec(spec: str) -> ColumnSpec:
    """A new column declaration ``name:type=default`` (``next.success:bool=false``); LabelError if malformed."""
    match = _COLUMN_SPEC.fullmatch(spec) if isinstance(spec, str) else None
    if not match:
        raise LabelError(f"new column {spec!r}: declare it as name:type=default, e.g. next.success:bool=false")
    name, column_type, default = match.group(1), match.group(2), match.group(3).strip()
    if not _COLUMN_NAME.fullmatch(name):
        raise LabelError(f"new column {name!r}: use a letter, then letters, digits, '_', '.' or '-'")
    if column_type not in COLUMN_TYPES:
        raise LabelError(f"new column {name!r}: type {column_type!r} is not one of {sorted(COLUMN_TYPES)}")
    try:
        value = coerce_value(default, column_type, empty_ok=True)
    except ValueError as exc:
        raise LabelError(f"new column {name!r}: default {default!r}: {exc}") from None
    return ColumnSpec(name, column_type, value)


def column_specs(specs: Iterable[str]) -> dict[str, ColumnSpec]:
    """Declarations by name; LabelError when one is malformed or a name is declared twice."""
    out: dict[str, ColumnSpec] = {}
    for spec in specs:
        parsed = parse_column_spec(spec)
        if parsed.name in out and out[parsed.name] != parsed:
            raise LabelError(f"new column {parsed.name!r} is declared twice, differently")
        out[parsed.name] = parsed
    return out


def read_labels(path: str | Path) -> list[Label]:
    """The labels of a label file (see :func:`read_label_file`)."""
    return read_label_file(path).labels


def read_label_file(path: str | Path) -> LabelFile:
    """Read a CSV, parquet or JSON label file: labels with fields ``episode``, ``frame_start``, ``frame_end``,
    ``column``, ``value`` (the frame fields optional), and the new columns its header block declares.

    CSV values stay strings here; they are typed against the table, or the declaration, when
    validated. Raises :class:`LabelError` listing every bad row.
    """
    path = Path(path)
    if not path.is_file():
        raise LabelError(f"label file {str(path)!r} does not exist")
    records, specs = _read_records(path)
    try:
        columns = column_specs(specs)
    except LabelError as exc:
        raise LabelError(f"label file {str(path)!r}: {exc}") from None
    if not records:
        raise LabelError(f"label file {str(path)!r} holds no labels")
    problems: list[str] = []
    unknown = sorted({str(key) for _, record in records for key in record if key is not None} - set(LABEL_FIELDS))
    if unknown:
        problems.append(f"unknown fields {unknown}; a label has the fields {list(LABEL_FIELDS)}")
    labels = []
    for row, (line, record) in enumerate(records, start=1):
        if None in record:  # csv.DictReader's key for the cells beyond the header's
            header = [key for key in record if key is not None]
            problems.append(
                f"line {line} has {len(header) + len(record[None])} cells but the header names {len(header)} "
                f"({','.join(header)!r}); quote a value that holds a comma"
            )
            continue
        try:
            labels.append(_label_from_record(record, line))
        except ValueError as exc:
            problems.append(f"row {row}: {exc}")
    if problems:
        raise LabelError(f"label file {str(path)!r} is not valid:", problems)
    return LabelFile(labels, columns)


def at_line(line: int | None) -> str:
    return "" if line is None else f" (line {line})"


def _read_records(path: Path) -> tuple[list[tuple[int | None, dict[str, Any]]], list[str]]:
    """(line, record) pairs (the line of a CSV file, else None) and the column declarations of a label file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return _read_csv(path.read_text(encoding="utf-8-sig"))
        if suffix == ".parquet":
            table = pq.read_table(path)
            declared = (table.schema.metadata or {}).get(b"new_columns")
            return [(None, r) for r in table.to_pylist()], _spec_list(json.loads(declared) if declared else [])
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            declared = []
            if isinstance(data, dict) and set(data) <= {"new_columns", "labels"}:
                declared, data = _spec_list(data.get("new_columns", [])), data.get("labels")
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise LabelError(
                    "must hold a JSON list of objects, one per label, or an object "
                    '{"new_columns": ["name:type=default", ...], "labels": [...]}'
                )
            return [(None, r) for r in data], declared
    except LabelError as exc:
        raise LabelError(f"label file {str(path)!r}: {exc}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise LabelError(f"cannot read label file {str(path)!r}: {exc}") from exc
    raise LabelError(f"label file {str(path)!r}: unsupported format {suffix!r}; use .csv, .parquet or .json")


def _spec_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LabelError('new_columns must be a list of "name:type=default" texts')
    return value


def _read_csv(text: str) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """Records of a CSV label file with their line numbers, after its ``# new-column:`` header lines."""
    lines = text.splitlines(keepends=True)
    declared, skipped = [], 0
    for line in lines:
        if not line.startswith("#"):
            break
        skipped += 1
        if line.lower().startswith(HEADER_PREFIX):
            declared.append(line[len(HEADER_PREFIX) :].strip())
        elif line.strip() != "#":
            raise LabelError(f"line {skipped}: {line.strip()!r} is not a header line; write {HEADER_PREFIX} name:type=default")
    reader = csv.DictReader(io.StringIO("".join(lines[skipped:]), newline=""))
    records = []
    for record in reader:
        records.append((skipped + reader.line_num, dict(record)))
    return records, declared


def _label_from_record(record: dict[str, Any], line: int | None = None) -> Label:
    value = record.get("value")
    missing = [key for key in ("episode", "column") if _absent(record.get(key))]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        missing.append("value")
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    column = record["column"]
    if not isinstance(column, str) or not column.strip():
        raise ValueError(f"column must be a column name, got {column!r}")
    if not isinstance(value, (bool, int, float, str)):
        raise ValueError(f"value {value!r} must be text, a number or true/false")
    if isinstance(value, str) and not value.strip():
        raise ValueError("empty value: a label sets a value (an empty task text would blank the episode's task)")
    return Label(
        episode=_as_index(record["episode"], "episode"),
        column=column.strip(),
        value=value,
        frame_start=None if _absent(record.get("frame_start")) else _as_index(record["frame_start"], "frame_start"),
        frame_end=None if _absent(record.get("frame_end")) else _as_index(record["frame_end"], "frame_end"),
        line=line,
    )


def _absent(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _as_index(value: Any, name: str) -> int:
    """A non-negative integer from a file cell (``"3"``, ``3``, or ``3.0`` from a parquet float column)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def column_type_of(dtype: Any) -> str | None:
    """``"text"`` or the numpy dtype name of a scalar column; None for columns labels cannot hold."""
    if dtype.kind == deeplake.types.TypeKind.Text:
        return "text"
    if dtype.kind == deeplake.types.TypeKind.Generic and not dtype.shape:
        name = str(dtype.data_type)
        if name == "bool" or (name in np.sctypeDict and np.issubdtype(np.dtype(name), np.number)):
            return name
    return None


def coerce_value(value: LabelValue, column_type: str, empty_ok: bool = False) -> LabelValue:
    """``value`` as the Python value a ``column_type`` column stores; ValueError if it is not one.

    The column's type decides: ``"1"`` is 1.0 in a float column and refused in a bool column, so
    ``true`` and ``0.7`` can never share a column by becoming text.
    """
    if column_type == "text":
        if not isinstance(value, str):
            raise ValueError("expected text")
        if not value.strip() and not empty_ok:
            raise ValueError("empty value")
        return value
    if column_type == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        raise ValueError("expected true or false")
    dtype = np.dtype(column_type)
    number = _number(value)
    if number is None:
        raise ValueError(f"expected a number ({column_type})")
    if np.issubdtype(dtype, np.integer):
        if isinstance(number, float) and not number.is_integer():
            raise ValueError(f"expected an integer ({column_type})")
        info = np.iinfo(dtype)
        if not info.min <= number <= info.max:
            raise ValueError(f"out of range for {column_type} ({info.min}..{info.max})")
        return int(number)
    largest = float(np.finfo(dtype).max)
    if abs(number) > largest:  # it would be stored as inf
        raise ValueError(f"out of range for {column_type} (-{largest:.7g}..{largest:.7g})")
    return float(number)


def _number(value: LabelValue) -> int | float | None:
    """The finite number ``value`` holds or spells, else None (booleans are not numbers here)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if _INT.fullmatch(text):
            return int(text)
        try:
            value = float(text)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return value
    return None


def zero_value(column_type: str) -> LabelValue:
    """The default of a label column made before columns were declared (its metadata has no spec)."""
    return {"text": "", "bool": False}.get(column_type, 0.0 if column_type.startswith("float") else 0)


def plain_value(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    return value.item() if isinstance(value, np.generic) else value
