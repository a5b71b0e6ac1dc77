"""Relabelling: changing label values of some episodes on a branch of the table, reviewing, merging.

A label sets one column (task text, or a label column such as ``next.reward`` / ``next.success``) to
one value for an episode, or for a range of its frames. Frame ranges are half-open, like a Python
slice: ``frame_start`` is the first frame changed and ``frame_end`` the first frame *not* changed;
either one absent means the start / end of the episode, both absent the whole episode.

A new label column is declared with a name, a type and a default (``next.success:bool=false``): the
default fills every row no label sets, also rows added later (an ingest) or rows a review branch
never saw. Labels are only ever written onto a Deeplake branch of the table (created from main on
first use), so main keeps serving training until a reviewer merges the branch; tags taken before the
merge keep the old labels. A merge compares three versions, cell by cell: the branch's base (main
when the branch was made), the branch, and main now; a cell both sides changed is a conflict.

Every applied label set (its file, sha256, branch and the labels it set) is kept in the table's
metadata, so another machine sees it: an ingest that rewrites an episode re-applies main's labels
to the frames that still exist and reports the rest. Values written in place leave Deeplake's
indexes stale, so every write here recreates the indexes of the columns it changed.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import math
import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import deeplake
import numpy as np
import pyarrow.parquet as pq

from lerobot_assets.errors import LeRobotAssetsError, TableError, where
from lerobot_assets.table import (
    INDEX_DTYPES,
    episode_versions,
    open_read_only,
    open_writable,
    refresh_indexes,
    set_table_metadata,
    table_metadata,
    write_lock,
)

LabelValue = bool | int | float | str

MAIN = "main"
#: Index columns: rows are found and ordered by them; ``task_index`` follows ``task`` (never set directly).
PROTECTED = frozenset(INDEX_DTYPES)
CAMERA_PREFIX = "observation.images."
#: Types a new label column may be declared with, and their Deeplake types.
COLUMN_TYPES = {
    "text": deeplake.types.Text,
    "bool": deeplake.types.Bool,
    "int64": deeplake.types.Int64,
    "float32": deeplake.types.Float32,
}
#: ``merge --prefer``: which side wins a cell both the branch and main changed since the branch's base.
PREFER = ("branch", "main")
_FIELDS = ("episode", "frame_start", "frame_end", "column", "value")
_COLUMN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,99}")
_BRANCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_COLUMN_SPEC = re.compile(r"\s*([^:\s]+)\s*:\s*(\w+)\s*=(.*)", re.DOTALL)
#: A label file's header block: CSV lines ``# new-column: next.success:bool=false`` before the header row;
#: a JSON object's ``new_columns`` list; a parquet file's ``new_columns`` schema metadata (a JSON list).
_HEADER_PREFIX = "# new-column:"
_INT = re.compile(r"[+-]?\d+")
_BOOL_WORDS = {"true": True, "false": False}
_EXAMPLES = 10  # diff examples: the first changed row of each (column, episode)
_CONFLICTS_SHOWN = 10  # conflicting cells named in a refused merge's message (diff lists them all)


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
        return {key: getattr(self, key) for key in _FIELDS}


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


@dataclass(frozen=True)
class RelabelResult:
    """What one :func:`apply_labels` call changed on the branch."""

    branch: str
    version: str  # head of the branch after the commit (unchanged when nothing changed)
    rows: int  # rows with at least one changed value
    episodes: list[int]  # episodes with changed rows
    columns: list[str]  # columns with changed rows (task_index when task got a new text)
    new_columns: list[str] = field(default_factory=list)  # columns added on the branch
    created_branch: bool = False


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
        value = _coerce(default, column_type, empty_ok=True)
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


# --- reading label files -----------------------------------------------------------------------


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
    unknown = sorted({str(key) for _, record in records for key in record if key is not None} - set(_FIELDS))
    if unknown:
        problems.append(f"unknown fields {unknown}; a label has the fields {list(_FIELDS)}")
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


def _at_line(line: int | None) -> str:
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
        if line.lower().startswith(_HEADER_PREFIX):
            declared.append(line[len(_HEADER_PREFIX) :].strip())
        elif line.strip() != "#":
            raise LabelError(f"line {skipped}: {line.strip()!r} is not a header line; write {_HEADER_PREFIX} name:type=default")
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


# --- typing values -----------------------------------------------------------------------------


def _column_type(dtype: Any) -> str | None:
    """``"text"`` or the numpy dtype name of a scalar column; None for columns labels cannot hold."""
    if dtype.kind == deeplake.types.TypeKind.Text:
        return "text"
    if dtype.kind == deeplake.types.TypeKind.Generic and not dtype.shape:
        name = str(dtype.data_type)
        if name == "bool" or (name in np.sctypeDict and np.issubdtype(np.dtype(name), np.number)):
            return name
    return None


def _coerce(value: LabelValue, column_type: str, empty_ok: bool = False) -> LabelValue:
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


def _zero(column_type: str) -> LabelValue:
    """The default of a label column made before columns were declared (its metadata has no spec)."""
    return {"text": "", "bool": False}.get(column_type, 0.0 if column_type.startswith("float") else 0)


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    return value.item() if isinstance(value, np.generic) else value


# --- what a table holds ------------------------------------------------------------------------


@dataclass(frozen=True)
class _TableShape:
    dataset: str
    lengths: dict[int, int]  # episode -> frames
    columns: dict[str, Any]  # name -> Deeplake type
    label_columns: dict[str, ColumnSpec]  # label columns with their declared type and default


def _shape(ds: deeplake.Dataset | deeplake.ReadOnlyDataset) -> _TableShape:
    lengths: dict[int, int] = {}
    if len(ds):
        values, counts = np.unique(np.asarray(ds["episode_index"][:]), return_counts=True)
        lengths = {int(v): int(c) for v, c in zip(values, counts)}
    columns = {column.name: column.dtype for column in ds.schema.columns}
    return _TableShape(table_metadata(ds).get("dataset", "unnamed"), lengths, columns, label_columns(ds))


def label_columns(ds: deeplake.Dataset | deeplake.ReadOnlyDataset) -> dict[str, ColumnSpec]:
    """The declared label columns of ``ds`` (added by relabelling) with their type and default."""
    declared = table_metadata(ds).get("label_columns", {})
    return {name: ColumnSpec(name, spec["type"], spec["default"]) for name, spec in declared.items()}


def _spec(table: _TableShape, column: str) -> ColumnSpec:
    """The column's declaration; a column relabelled before declarations existed defaults to its type's zero."""
    if column in table.label_columns:
        return table.label_columns[column]
    column_type = _column_type(table.columns[column])
    return ColumnSpec(column, column_type, _zero(column_type))


def _episode_list(episodes: Sequence[int]) -> str:
    if not episodes:
        return "no episodes"
    if len(episodes) <= 10:
        return "episodes " + ", ".join(map(str, episodes))
    return f"{len(episodes)} episodes, {episodes[0]}..{episodes[-1]}"


def _labelable(table: _TableShape) -> list[str]:
    return [
        name
        for name, dtype in table.columns.items()
        if name not in PROTECTED and not name.startswith(CAMERA_PREFIX) and _column_type(dtype) is not None
    ]


# --- validating --------------------------------------------------------------------------------


def _column_types(
    table: _TableShape, columns: Iterable[str], declared: Mapping[str, ColumnSpec]
) -> tuple[dict[str, str], list[str]]:
    """The type of each labelled column (the table's, or the declaration of a new one) and the problems found."""
    types: dict[str, str] = {}
    problems: list[str] = []
    for column in sorted(set(columns)):
        if column in PROTECTED or column.startswith(CAMERA_PREFIX):
            problems.append(
                f"column {column!r} is protected: index, timestamp and camera columns cannot be relabelled"
                + (" (task_index follows task)" if column == "task_index" else "")
            )
        elif column in table.columns:
            column_type = _column_type(table.columns[column])
            if column_type is None:
                problems.append(
                    f"column {column!r} of dataset {table.dataset!r} holds {table.columns[column]}; "
                    "only text and scalar columns can be relabelled"
                )
            elif column in declared and declared[column].type != column_type:
                problems.append(
                    f"column {column!r} is declared {declared[column].type} but dataset {table.dataset!r} "
                    f"already has it as {column_type}"
                )
            elif column in declared and declared[column].default != _spec(table, column).default:
                problems.append(
                    f"column {column!r} is declared with default {declared[column].default!r} but dataset "
                    f"{table.dataset!r} already has it with default {_spec(table, column).default!r}; a default is "
                    "set when the column is added: drop the declaration"
                )
            else:
                types[column] = column_type
        elif column in declared:
            types[column] = declared[column].type
        else:
            close = difflib.get_close_matches(column, _labelable(table), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.append(
                f"column {column!r} does not exist in dataset {table.dataset!r}; {hint}a new label column must be "
                f"declared with its type and default: --new-column {column}:<{'|'.join(COLUMN_TYPES)}>=<default>, "
                f"or a '{_HEADER_PREFIX} ...' line at the top of the label file"
            )
    return types, problems


def _prepare(
    table: _TableShape, labels: Sequence[Label], declared: Mapping[str, ColumnSpec]
) -> tuple[list[Label], dict[str, str], list[str]]:
    """Labels with values typed for their columns, each label column's type, and every problem found."""
    labels = [replace(label, value=_plain(label.value)) for label in labels]  # numpy scalars from Python callers
    types, problems = _column_types(table, (label.column for label in labels), declared)
    typed: list[Label] = []
    known = sorted(table.lengths)
    for n, label in enumerate(labels, start=1):
        name = f"label {n}{_at_line(label.line)}"
        length = table.lengths.get(label.episode)
        if length is None:
            problems.append(
                f"{name}: {where(table.dataset, label.episode)} does not exist (the table has {_episode_list(known)})"
            )
        else:
            start, end = _frames(label, length)
            if not 0 <= start < end <= length:
                problems.append(
                    f"{name}: frames {start}..{end} (end exclusive) are not inside "
                    f"{where(table.dataset, label.episode)}, which has frames 0..{length - 1}"
                )
        if label.column not in types:
            continue
        try:
            typed.append(replace(label, value=_coerce(label.value, types[label.column])))
        except ValueError as exc:
            problems.append(
                f"{name}: value {label.value!r} for column {label.column!r} of "
                f"{where(table.dataset, label.episode)}: {exc}"
            )
    if not problems:
        problems.extend(_overlaps(table, typed))
    return typed, types, problems


def _frames(label: Label, length: int) -> tuple[int, int]:
    start = 0 if label.frame_start is None else label.frame_start
    return start, length if label.frame_end is None else label.frame_end


def _overlaps(table: _TableShape, labels: Sequence[Label]) -> list[str]:
    """Labels that give the same frames of one column different values: which one wins would be arbitrary."""
    groups: dict[tuple[int, str], list[tuple[int, int, int, LabelValue]]] = defaultdict(list)
    for n, label in enumerate(labels, start=1):
        start, end = _frames(label, table.lengths[label.episode])
        groups[(label.episode, label.column)].append((start, end, n, label.value))
    problems = []
    for (episode, column), ranges in groups.items():
        ranges.sort()
        for i, (start, end, n, value) in enumerate(ranges):
            for other_start, other_end, m, other in ranges[i + 1 :]:
                if other_start >= end:
                    break
                if other != value:
                    problems.append(
                        f"labels {min(n, m)} and {max(n, m)} give frames {other_start}..{min(end, other_end)} "
                        f"(end exclusive) of {where(table.dataset, episode)} different values for column {column!r}"
                    )
    return problems


def validate_labels(
    ds: deeplake.Dataset | deeplake.ReadOnlyDataset,
    labels: Sequence[Label],
    new_columns: Mapping[str, ColumnSpec] | None = None,
) -> list[str]:
    """Every reason ``labels`` cannot be applied to ``ds``: unknown episodes, frames out of range, protected,
    non-scalar or undeclared columns, values of the wrong type, conflicting overlaps. Empty when they can."""
    if not labels:
        return ["no labels given"]
    return _prepare(_shape(ds), labels, new_columns or {})[2]


# --- writing -----------------------------------------------------------------------------------


def apply_labels(
    url: str,
    labels: Sequence[Label],
    branch: str,
    message: str,
    episodes: Collection[int] | None = None,
    new_columns: Mapping[str, ColumnSpec] | None = None,
    source: Mapping[str, Any] | None = None,
) -> RelabelResult:
    """Write ``labels`` onto ``branch`` of the table at ``url`` (creating it from main) and commit; main is untouched.

    ``new_columns`` declares the label columns the branch does not have yet; ``source`` (``file``,
    ``sha256``) names the label file in the branch's label history. All ``labels`` are validated
    even when ``episodes`` restricts the write to some episodes, so per-episode runs of one label
    file agree. Only values that differ are written; when nothing differs nothing is committed.
    Raises :class:`LabelError` before anything is written, branch creation included, when the labels
    are invalid.
    """
    check_branch(branch)
    declared = dict(new_columns or {})
    with write_lock(url):
        main = open_writable(url)
        created = branch not in main.branches.names()
        target = main if created else main.branches[branch].open()
        shape = _shape(target)
        typed, types, problems = _prepare(shape, labels, declared) if labels else ([], {}, ["no labels given"])
        if problems:
            raise LabelError(f"labels for dataset {shape.dataset!r} (branch {branch!r}) are not valid:", problems)
        if created:
            main.branch(branch)
            target = main.branches[branch].open()
        chosen = [label for label in typed if episodes is None or label.episode in episodes]
        added = sorted({label.column for label in chosen} - set(shape.columns))
        for column in added:
            _add_label_column(target, declared[column])
        tasks = task_indices(target)
        changed = _write(target, chosen, types, tasks)
        if changed or added:
            refresh_indexes(target, changed)
            digest = (source or {}).get("sha256") or hashlib.sha256(
                json.dumps([label.to_json() for label in typed], sort_keys=True).encode()
            ).hexdigest()
            entry = {"file": (source or {}).get("file"), "sha256": digest, "branch": branch}
            _record(target, [declared[c] for c in added], tasks, entry, [label.to_json() for label in chosen])
            target.commit(message)
        rows = np.unique(np.concatenate(list(changed.values()))) if changed else np.empty(0, dtype=np.int64)
        episodes_changed = np.asarray(target["episode_index"][:])[rows] if changed else []
        version = target.version
    return RelabelResult(
        branch=branch,
        version=version,
        rows=len(rows),
        episodes=sorted({int(e) for e in episodes_changed}),
        columns=sorted(set(changed) - {"task_index"}),
        new_columns=added,
        created_branch=created,
    )


def _add_label_column(ds: deeplake.Dataset, spec: ColumnSpec) -> None:
    """Add a label column filled with its declared default; the default also fills rows appended later."""
    ds.add_column(spec.name, COLUMN_TYPES[spec.type](), default_value=spec.default)
    if len(ds):  # Deeplake leaves existing rows empty whatever the default
        ds[spec.name][0 : len(ds)] = _as_column_values([spec.default] * len(ds), spec.type)


def _as_column_values(values: Sequence[LabelValue], column_type: str) -> list[str] | np.ndarray:
    return [str(v) for v in values] if column_type == "text" else np.asarray(values, dtype=np.dtype(column_type))


def task_indices(ds: deeplake.Dataset | deeplake.ReadOnlyDataset) -> dict[str, int]:
    """The table's task list, text -> ``task_index``: the tasks as the rows hold them, plus the texts
    labels introduced (kept in the table metadata) whose index no row gives another text. An upstream
    rename (``tasks.parquet``) hands the old text's index to the new one: the old text, labelled again,
    then gets an index of its own."""
    held: dict[str, int] = {}
    if len(ds):
        held = {str(text): int(i) for text, i in zip(ds["task"][:], np.asarray(ds["task_index"][:]))}
    taken = set(held.values())
    recorded = table_metadata(ds).get("tasks", {})
    return {**{text: i for text, i in recorded.items() if text not in held and i not in taken}, **held}


def _task_index(tasks: dict[str, int], text: str) -> int:
    """``text``'s index in ``tasks``, appending it (the next free index) when it is new."""
    if text not in tasks:
        tasks[text] = max(tasks.values(), default=-1) + 1
    return tasks[text]


def _targets(
    episode_index: np.ndarray, frame_index: np.ndarray, labels: Iterable[Label], tasks: dict[str, int]
) -> dict[str, dict[int, LabelValue]]:
    """The value each labelled row (an offset into the arrays) gets, per column; ``task_index`` follows ``task``."""
    targets: dict[str, dict[int, LabelValue]] = defaultdict(dict)
    for label in labels:
        mask = episode_index == label.episode
        if label.frame_start is not None:
            mask &= frame_index >= label.frame_start
        if label.frame_end is not None:
            mask &= frame_index < label.frame_end
        targets[label.column].update(dict.fromkeys(np.flatnonzero(mask).tolist(), label.value))
    if "task" in targets:
        targets["task_index"] = {row: _task_index(tasks, str(text)) for row, text in targets["task"].items()}
    return targets


def _write(
    ds: deeplake.Dataset, labels: Sequence[Label], types: Mapping[str, str], tasks: dict[str, int]
) -> dict[str, np.ndarray]:
    """Set the labelled rows whose value differs; return the changed row offsets per column."""
    targets = _targets(np.asarray(ds["episode_index"][:]), np.asarray(ds["frame_index"][:]), labels, tasks)
    types = {**types, "task_index": "int64"}
    changed: dict[str, np.ndarray] = {}
    for column, values_by_offset in targets.items():
        offsets = np.array(sorted(values_by_offset), dtype=np.int64)
        done = _set_cells(ds, column, offsets, [values_by_offset[o] for o in offsets], types[column])
        if len(done):
            changed[column] = done
    return changed


def _set_cells(
    ds: deeplake.Dataset, column: str, offsets: np.ndarray, values: Sequence[LabelValue], column_type: str
) -> np.ndarray:
    """Write ``values`` at the sorted row ``offsets`` of ``column`` where they differ, in contiguous runs;
    return the offsets written."""
    wanted = np.empty(len(values), dtype=object)
    wanted[:] = list(values)
    current = np.asarray(ds[column][:], dtype=object)[offsets]
    differs = np.flatnonzero(current != wanted)
    if not len(differs):
        return offsets[differs]
    for run in np.split(differs, np.flatnonzero(np.diff(offsets[differs]) != 1) + 1):
        first = int(offsets[run[0]])
        ds[column][first : first + len(run)] = _as_column_values([wanted[i] for i in run], column_type)
    return offsets[differs]


def _record(
    ds: deeplake.Dataset,
    added: Iterable[ColumnSpec],
    tasks: Mapping[str, int],
    entry: dict[str, Any],
    labels: list[dict[str, Any]],
) -> None:
    """Keep new column declarations, the task list and the label set in the table metadata (with the commit).

    The metadata is versioned with the rows (:func:`set_table_metadata`): a branch's history holds
    the label files applied on it, main's the label sets merges wrote (``merged_from``). Per-episode
    runs of one label file onto a branch extend one entry.
    """
    metadata = table_metadata(ds)
    columns = {**metadata.get("label_columns", {}), **{spec.name: spec.to_json() for spec in added}}
    history = metadata.get("label_sets", [])
    for existing in history:
        if "merged_from" not in entry and all(existing.get(k) == entry.get(k) for k in ("sha256", "branch", "merged_from")):
            existing["labels"] = existing["labels"] + [label for label in labels if label not in existing["labels"]]
            break
    else:
        history.append({**entry, "labels": labels})
    set_table_metadata(ds, label_columns=columns, tasks=dict(tasks), label_sets=history)


# --- reviewing and merging ---------------------------------------------------------------------


def _open_branch(main: deeplake.ReadOnlyDataset | deeplake.Dataset, url: str, branch: str) -> Any:
    if branch == MAIN or branch not in main.branches.names():
        others = sorted(set(main.branches.names()) - {MAIN})
        raise TableError(f"table {url} has no branch {branch!r}; its branches besides main: {others}")
    return main.branches[branch]


def _keys(ds: Any) -> np.ndarray:
    """One integer per row: (episode_index, frame_index), which identify a frame across versions and re-ingests."""
    if not len(ds):
        return np.empty(0, dtype=np.int64)
    episode = np.asarray(ds["episode_index"][:], dtype=np.int64)
    return (episode << 32) | np.asarray(ds["frame_index"][:], dtype=np.int64)  # frame indices stay far below 2**32


def _lookup(haystack: np.ndarray, needles: np.ndarray) -> np.ndarray:
    """The offset in ``haystack`` of each of ``needles``, -1 where it has none."""
    if not len(haystack):
        return np.full(len(needles), -1, dtype=np.int64)
    order = np.argsort(haystack, kind="stable")
    position = np.minimum(np.searchsorted(haystack[order], needles), len(haystack) - 1)
    return np.where(haystack[order][position] == needles, order[position], -1)


def _values_at(ds: Any, column: str, offsets: np.ndarray, default: LabelValue) -> np.ndarray:
    """``column``'s values at ``offsets`` of ``ds``; ``default`` where the row or the column is missing."""
    out = np.empty(len(offsets), dtype=object)
    out[:] = [default] * len(offsets)
    if column in {c.name for c in ds.schema.columns}:
        values = np.asarray(ds[column][:], dtype=object)
        found = offsets >= 0
        out[found] = [_plain(v) for v in values[offsets[found]]]
    return out


@dataclass
class _Cells:
    """The cells of one column a merge writes onto main, with their three versions."""

    spec: ColumnSpec
    rows: np.ndarray  # offsets in main, sorted
    episodes: np.ndarray
    frames: np.ndarray
    base: np.ndarray
    main: np.ndarray
    branch: np.ndarray

    @property
    def conflicts(self) -> np.ndarray:
        """Cells main also changed since the base, to another value than the branch's."""
        return self.main != self.base

    def subset(self, keep: np.ndarray) -> _Cells:
        return _Cells(self.spec, *(getattr(self, name)[keep] for name in _CELL_ARRAYS))


_CELL_ARRAYS = ("rows", "episodes", "frames", "base", "main", "branch")


@dataclass
class _MergePlan:
    sources: list[dict[str, Any]]  # the label files applied on the branch
    cells: list[_Cells]
    new_columns: list[ColumnSpec]
    base_version: str | None
    rows_only_on_main: int
    rows_only_on_branch: int
    clashes: list[str]  # label columns whose type differs between main and the branch


def _plan_merge(main: Any, other: Any, other_name: str, base: Any, base_version: str | None) -> _MergePlan:
    """Three-way: a cell is written when the branch changed it since its base and main does not hold that value yet.

    Rows are matched by (episode_index, frame_index), so rows main added since the branch was made
    (an ingest) are left as they are, with the column's default when the column is new.
    """
    branch_shape, main_columns = _shape(other), {c.name for c in main.schema.columns}
    branch_keys = _keys(other)
    in_main = _lookup(_keys(main), branch_keys)
    in_base = _lookup(_keys(base), branch_keys) if base is not None else in_main
    episodes, frames = branch_keys >> 32, branch_keys & 0xFFFFFFFF
    cells = []
    for column in _labelable(branch_shape):
        spec = _spec(branch_shape, column)
        after = _values_at(other, column, np.arange(len(other)), spec.default)
        before = _values_at(base if base is not None else main, column, in_base, spec.default)
        current = _values_at(main, column, in_main, spec.default)
        write = (after != before) & (in_base >= 0) & (in_main >= 0) & (current != after)
        if write.any():
            picked = np.flatnonzero(write)
            picked = picked[np.argsort(in_main[picked])]
            cells.append(
                _Cells(spec, in_main[picked], episodes[picked], frames[picked], before[picked], current[picked], after[picked])
            )
    new_columns = [_spec(branch_shape, c) for c in _labelable(branch_shape) if c not in main_columns]
    seen = int((in_main >= 0).sum())
    sources = _branch_sources(other, other_name)
    main_types = {c.name: _column_type(c.dtype) for c in main.schema.columns}
    clashes = [
        f"column {name!r} is {main_types[name]} on main but {_column_type(branch_shape.columns[name])} on the branch"
        for name in _labelable(branch_shape)
        if name in main_types and main_types[name] != _column_type(branch_shape.columns[name])
    ]
    main_specs = label_columns(main)
    clashes += [
        f"column {name!r} has default {main_specs[name].default!r} on main but {spec.default!r} on the branch"
        for name, spec in branch_shape.label_columns.items()
        if name in main_specs and main_specs[name].type == spec.type and main_specs[name].default != spec.default
    ]
    return _MergePlan(sources, cells, new_columns, base_version, len(main) - seen, len(other) - seen, clashes)


def _branch_plan(main: Any, url: str, branch: str) -> _MergePlan:
    handle = _open_branch(main, url, branch)
    base_version = handle.base[1] if handle.base else None
    base = main.history[base_version].open() if base_version else None
    return _plan_merge(main, handle.open(), branch, base, base_version)


def _cell(cells: _Cells, i: int, **sides: np.ndarray) -> dict[str, Any]:
    return {
        "episode": int(cells.episodes[i]),
        "frame": int(cells.frames[i]),
        "column": cells.spec.name,
        **{side: _plain(values[i]) for side, values in sides.items()},
    }


def _report(url: str, branch: str, main: Any, plan: _MergePlan) -> dict[str, Any]:
    """What merging ``plan`` writes: rows, episodes, cells per column, conflicts (cell by cell) and examples."""
    new = {spec.name for spec in plan.new_columns}
    rows = np.unique(np.concatenate([c.rows for c in plan.cells])) if plan.cells else np.empty(0, dtype=np.int64)
    examples, conflicts = [], []
    for cells in plan.cells:
        _, first_per_episode = np.unique(cells.episodes, return_index=True)
        for i in first_per_episode:
            example = _cell(cells, int(i), main=cells.main, branch=cells.branch)
            examples.append({**example, "main": None if cells.spec.name in new else example["main"]})
        conflicts.extend(
            _cell(cells, int(i), base=cells.base, main=cells.main, branch=cells.branch)
            for i in np.flatnonzero(cells.conflicts)
        )
    return {
        "table": url,
        "branch": branch,
        "main_version": main.version,
        "base_version": plan.base_version,
        "main_moved": plan.base_version is not None and plan.base_version != main.version,
        "rows": len(rows),
        "episodes": sorted({int(e) for c in plan.cells for e in c.episodes}),
        "columns": {cells.spec.name: len(cells.rows) for cells in plan.cells},
        "new_columns": sorted(new),
        "conflicts": conflicts,
        "type_clashes": plan.clashes,
        "replaced_on_main": _replaced_since(main, plan.base_version, {int(e) for c in plan.cells for e in c.episodes}),
        "rows_only_on_main": plan.rows_only_on_main,
        "rows_only_on_branch": plan.rows_only_on_branch,
        "examples": examples[:_EXAMPLES],
    }


def diff_branch(url: str, branch: str) -> dict[str, Any]:
    """Exactly the cells merging ``branch`` would write onto main: those the branch changed since its base
    (main when the branch was made) and main does not hold yet, counted per column, with the cells
    main changed too (``conflicts``: base, main and branch values) and a few examples.

    Rows are matched by (episode_index, frame_index). A column that exists only on the branch compares
    with its declared default. ``replaced_on_main`` names the labelled episodes main re-ingested
    (replaced or removed) since the base: while it is not empty, the merge is refused.
    """
    main = open_read_only(url)
    return _report(url, branch, main, _branch_plan(main, url, branch))


def merge_branch(url: str, branch: str, prefer: str | None = None) -> dict[str, Any]:
    """Write the cells ``branch`` changed since its base onto main, commit, and return what changed.

    A cell main changed too, to another value, is a conflict: the merge is refused, listing them,
    unless ``prefer`` says which side wins. Rows main added since the branch was made keep their
    values (the declared default in a new column). Refuses when main re-ingested (replaced or removed)
    an episode the branch labels since the branch was made: review the labels on the new rows again.
    Merging a branch main already matches changes nothing. The indexes of the changed columns are
    recreated, and the merged label set joins main's label history, so later ingests re-apply it.
    """
    check_branch(branch)
    if prefer not in (None, *PREFER):
        raise LabelError(f"--prefer must be one of {list(PREFER)}, got {prefer!r}")
    with write_lock(url):
        main = open_writable(url)
        plan = _branch_plan(main, url, branch)
        report = _report(url, branch, main, plan)
        summary = {key: report[key] for key in ("table", "branch", "new_columns", "conflicts")}
        if plan.clashes:
            raise TableError(f"cannot merge branch {branch!r} into main of table {url}: {'; '.join(plan.clashes)}")
        if not plan.cells and not plan.new_columns:
            return {**summary, "rows": 0, "episodes": [], "columns": {}, "version": main.version, "merged": False}
        if report["conflicts"] and prefer is None:
            raise TableError(_conflict_message(url, branch, report["conflicts"]))
        replaced = report["replaced_on_main"]
        if replaced:
            raise TableError(
                f"cannot merge branch {branch!r} into main of table {url}: main replaced or removed rows since the "
                f"branch was made (re-ingested episodes {replaced}, which the branch labels), so labels on those "
                "rows would be lost; apply the labels of those episodes again onto a new branch and merge that one"
            )
        cells = [c.subset(~c.conflicts) for c in plan.cells] if prefer == MAIN else plan.cells
        cells = [c for c in cells if len(c.rows)]
        written = _write_cells(main, cells, plan.new_columns, branch, plan.sources)
        rows = np.unique(np.concatenate(list(written.values()))) if written else np.empty(0, dtype=np.int64)
        episodes = sorted({int(e) for c in cells for e in c.episodes})
        columns = {name: len(offsets) for name, offsets in written.items() if name != "task_index"}
        main.commit(
            f"merge labels from branch {branch}: {len(rows)} rows of episodes {episodes}, columns {sorted(columns)}"
            + (f", {len(report['conflicts'])} conflicting cells resolved for {prefer}" if report["conflicts"] else "")
        )
        return {
            **summary,
            "rows": len(rows),
            "episodes": episodes,
            "columns": columns,
            "prefer": prefer,
            "version": main.version,
            "merged": True,
        }


def _conflict_message(url: str, branch: str, conflicts: list[dict[str, Any]]) -> str:
    shown = "; ".join(
        f"episode {c['episode']} frame {c['frame']} column {c['column']!r}: base {c['base']!r}, "
        f"main {c['main']!r}, branch {c['branch']!r}"
        for c in conflicts[:_CONFLICTS_SHOWN]
    )
    more = f"; and {len(conflicts) - _CONFLICTS_SHOWN} more (see diff)" if len(conflicts) > _CONFLICTS_SHOWN else ""
    return (
        f"cannot merge branch {branch!r} into main of table {url}: {len(conflicts)} cells were changed on main "
        f"and on the branch since the branch was made: {shown}{more}; merge with --prefer branch or --prefer main"
    )


def _branch_sources(other: Any, branch: str) -> list[dict[str, Any]]:
    """The label files applied on ``branch`` (file, sha256), from its label history."""
    history = table_metadata(other).get("label_sets", [])
    return [{"file": e.get("file"), "sha256": e.get("sha256")} for e in history if e.get("branch") == branch]


def _write_cells(
    main: deeplake.Dataset, cells: list[_Cells], new_columns: list[ColumnSpec], branch: str, sources: list[dict]
) -> dict[str, np.ndarray]:
    """Add the new columns, write the merged cells (``task_index`` from main's task list), recreate the indexes
    of the changed columns and record the label set; the caller commits."""
    for spec in new_columns:
        _add_label_column(main, spec)
    tasks = task_indices(main)
    written: dict[str, np.ndarray] = {}
    for c in cells:
        done = _set_cells(main, c.spec.name, c.rows, list(c.branch), c.spec.type)
        if len(done):
            written[c.spec.name] = done
        if c.spec.name == "task":
            indices = [_task_index(tasks, str(text)) for text in c.branch]
            done = _set_cells(main, "task_index", c.rows, indices, "int64")
            if len(done):
                written["task_index"] = done
    refresh_indexes(main, written)
    labels = [run for c in cells for run in _runs(c)]
    _record(main, new_columns, tasks, {"merged_from": branch, "files": sources}, labels)
    return written


def _runs(cells: _Cells) -> list[dict[str, Any]]:
    """The cells as labels: one per run of consecutive frames of an episode with one value."""
    order = np.lexsort((cells.frames, cells.episodes))
    runs: list[dict[str, Any]] = []
    for i in order:
        episode, frame, value = int(cells.episodes[i]), int(cells.frames[i]), _plain(cells.branch[i])
        last = runs[-1] if runs else None
        if last and (last["episode"], last["frame_end"], last["value"]) == (episode, frame, value):
            last["frame_end"] = frame + 1
        else:
            runs.append(Label(episode, cells.spec.name, value, frame, frame + 1).to_json())
    return runs


def _replaced_since(
    main: deeplake.Dataset | deeplake.ReadOnlyDataset, base_version: str | None, episodes: set[int]
) -> list[int]:
    """Those of ``episodes`` whose rows main replaced or removed since ``base_version`` (a re-ingest):
    the data version recorded with each episode's rows changed. Episodes the branch does not label
    may be re-ingested freely."""
    if base_version is None or not episodes:
        return []
    before, now = episode_versions(main.history[base_version].open()), episode_versions(main)
    return sorted(e for e in episodes if before.get(e) != now.get(e))


# --- labels across re-ingests ------------------------------------------------------------------


def episode_labels(ds: deeplake.Dataset | deeplake.ReadOnlyDataset, episode: int) -> list[dict[str, Any]]:
    """The labels merges wrote onto main for ``episode``, oldest first, each with the branch it came from."""
    return [
        {**label, "branch": entry["merged_from"]}
        for entry in table_metadata(ds).get("label_sets", [])
        if "merged_from" in entry
        for label in entry.get("labels", [])
        if label["episode"] == episode
    ]


def describe_reapplied(report: Mapping[str, list[dict[str, Any]]]) -> str:
    """One line for a re-apply report (see :func:`reapply_labels`): how many labels held, and the ones that
    could not be re-applied only when there are any."""
    line = f"{len(report['reapplied'])} merged labels re-applied"
    lost = report["not_reapplied"]
    return f"{line}; {len(lost)} could not be: {lost}" if lost else line


def _give_source_tasks_their_indices(ds: deeplake.Dataset, rows: Mapping[str, Any]) -> None:
    """Keep one ``task_index`` per task text, and one text per index, when an ingest brings ``rows``.

    Source rows keep the ``task_index`` of ``tasks.parquet`` (LeRobot semantics). A text a label introduced
    may hold an index the source hands out later (labels take the next free index of the table's task list):
    that text then moves to a fresh index, and a label text the source now lists takes the source's index.
    The rows that carry a moved text are rewritten, and the task list recorded, with the ingest's commit
    (the episode's own old rows too, so re-applied labels read the new list). Only tables whose task list
    labels extended are read.
    """
    if not len(ds) or not table_metadata(ds).get("tasks"):
        return
    source = {str(text): int(i) for text, i in zip(rows["task"], np.asarray(rows["task_index"]))}
    tasks = task_indices(ds)
    taken = set(source.values())
    fresh = max([*tasks.values(), *taken], default=-1) + 1
    final = dict(source)
    for text, i in sorted(tasks.items(), key=lambda pair: pair[1]):
        if text not in final:
            final[text] = i if i not in taken else fresh
            fresh += final[text] == fresh
            taken.add(final[text])
    if final == {**tasks, **source}:
        return
    texts = [str(text) for text in ds["task"][:]]
    _set_cells(ds, "task_index", np.arange(len(texts)), [final[text] for text in texts], "int64")
    set_table_metadata(ds, tasks=final)


def reapply_labels(
    ds: deeplake.Dataset, episode: int, rows: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """``rows`` (an episode's new rows from an ingest) with every label column at its declared default and
    main's labels of the episode re-applied to the frames that still exist; and a report of the labels
    re-applied and of those (or the frames of them) that could not be.

    An ingest replaces an episode's rows with the source's values; without this, merged labels would be
    reset to the source's values or the column's default without a word.
    """
    _give_source_tasks_their_indices(ds, rows)
    out = dict(rows)
    count = len(out["episode_index"])
    schema = {column.name: column.dtype for column in ds.schema.columns}
    specs = {name: spec for name, spec in label_columns(ds).items() if name in schema and name not in out}
    for spec in specs.values():
        out[spec.name] = [spec.default] * count
    labels = episode_labels(ds, episode)
    report: dict[str, list[dict[str, Any]]] = {"reapplied": [], "not_reapplied": []}
    types = {name: spec.type for name, spec in specs.items()}
    if labels:  # reads the task column: only for episodes that carry labels
        types.update({label["column"]: _column_type(schema[label["column"]]) for label in labels if label["column"] in schema})
        types["task_index"] = "int64"
        frames = np.asarray(out["frame_index"], dtype=np.int64)
        tasks, length = task_indices(ds), int(frames.max()) + 1 if count else 0
    for record in labels:
        label = Label(**{key: record[key] for key in _FIELDS})
        if label.column not in types:
            report["not_reapplied"].append({**record, "reason": f"the table has no column {label.column!r}"})
            continue
        targets = _targets(np.full(count, episode), frames, [label], tasks)
        for column, values in targets.items():
            cells = list(out[column])
            for row, value in values.items():
                cells[row] = value
            out[column] = cells
        start, end = label.frame_start or 0, length if label.frame_end is None else label.frame_end
        missing = sorted(set(range(start, end)) - set(frames.tolist()))
        if len(targets.get(label.column, {})):
            report["reapplied"].append({**record, "frames": len(targets[label.column])})
        if missing or not count:
            gone = [missing[0], missing[-1] + 1] if missing else [start, end]
            report["not_reapplied"].append({**record, "missing_frames": gone, "reason": "frames no longer exist"})
    return {**out, **{name: _as_column_values(out[name], t) for name, t in types.items() if name in out}}, report
