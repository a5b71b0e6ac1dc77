"""Relabelling: changing label values of some episodes on a branch of the table, reviewing, merging.

A label sets one column (task text, ``next.reward``, ``next.success``, or a new label column) to one
value for an episode, or for a range of its frames. Frame ranges are half-open, like a Python
slice: ``frame_start`` is the first frame changed and ``frame_end`` the first frame *not* changed;
either one absent means the start / end of the episode, both absent the whole episode.

Labels are only ever written onto a Deeplake branch of the table (created from main on first use),
so main keeps serving training until a reviewer merges the branch; tags taken before the merge keep
the old labels. Rows are found from the table's own ``episode_index`` / ``frame_index`` columns, and
every write holds the table's write lock, the same one ingestion takes.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import deeplake
import numpy as np
import pyarrow.parquet as pq

from lerobot_assets.errors import LeRobotAssetsError, TableError, where
from lerobot_assets.table import INDEX_DTYPES, METADATA_KEY, open_read_only, open_writable, write_lock

LabelValue = bool | int | float | str

MAIN = "main"
#: Index columns: rows are found and ordered by them, and ``task_index`` points into the source's task table.
PROTECTED = frozenset(INDEX_DTYPES)
CAMERA_PREFIX = "observation.images."
#: Deeplake types and fill values of new label columns, by the type inferred from their values.
_NEW_COLUMN_TYPES = {
    "text": deeplake.types.Text,
    "bool": deeplake.types.Bool,
    "int64": deeplake.types.Int64,
    "float32": deeplake.types.Float32,
}
_FIELDS = ("episode", "frame_start", "frame_end", "column", "value")
_COLUMN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,99}")
_BRANCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_INT = re.compile(r"[+-]?\d+")
_BOOL_WORDS = {"true": True, "false": False}
_EXAMPLES = 10  # diff examples: the first changed row of each (column, episode)


class LabelError(LeRobotAssetsError):
    """A label file or label list cannot be applied; ``problems`` lists every reason, not just the first."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        self.problems = list(problems)
        super().__init__(" ".join([message, "; ".join(self.problems)]) if self.problems else message)


@dataclass(frozen=True)
class Label:
    """One column set to one value for an episode, or for frames ``frame_start`` <= f < ``frame_end`` of it."""

    episode: int
    column: str
    value: LabelValue
    frame_start: int | None = None
    frame_end: int | None = None


@dataclass(frozen=True)
class RelabelResult:
    """What one :func:`apply_labels` call changed on the branch."""

    branch: str
    version: str  # head of the branch after the commit (unchanged when nothing changed)
    rows: int  # rows with at least one changed value
    episodes: list[int]  # episodes with changed rows
    columns: list[str]  # columns with changed rows
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


# --- reading label files -----------------------------------------------------------------------


def read_labels(path: str | Path) -> list[Label]:
    """Read labels from a CSV, parquet or JSON file with columns ``episode``, ``frame_start``, ``frame_end``,
    ``column``, ``value`` (the frame columns optional).

    CSV values stay strings here; they are typed against the table (or, for a new column, from all its
    values) when validated. Raises :class:`LabelError` listing every bad row.
    """
    path = Path(path)
    if not path.is_file():
        raise LabelError(f"label file {str(path)!r} does not exist")
    records = _read_records(path)
    if not records:
        raise LabelError(f"label file {str(path)!r} holds no labels")
    problems: list[str] = []
    unknown = sorted({str(key) for record in records for key in record} - set(_FIELDS))
    if unknown:
        problems.append(f"unknown fields {unknown}; a label has the fields {list(_FIELDS)}")
    labels = []
    for row, record in enumerate(records, start=1):
        try:
            labels.append(_label_from_record(record))
        except ValueError as exc:
            problems.append(f"row {row}: {exc}")
    if problems:
        raise LabelError(f"label file {str(path)!r} is not valid:", problems)
    return labels


def _read_records(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as stream:
                return [dict(row) for row in csv.DictReader(stream)]
        if suffix == ".parquet":
            return pq.read_table(path).to_pylist()
        if suffix == ".json":
            records = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise LabelError(f"label file {str(path)!r} must hold a JSON list of objects, one per label")
            return records
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise LabelError(f"cannot read label file {str(path)!r}: {exc}") from exc
    raise LabelError(f"label file {str(path)!r}: unsupported format {suffix!r}; use .csv, .parquet or .json")


def _label_from_record(record: dict[str, Any]) -> Label:
    value = record.get("value")
    missing = [key for key in ("episode", "column") if _absent(record.get(key))]
    if value is None or (isinstance(value, float) and math.isnan(value)):  # "" is a valid (empty) text value
        missing.append("value")
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    column = record["column"]
    if not isinstance(column, str) or not column.strip():
        raise ValueError(f"column must be a column name, got {column!r}")
    if not isinstance(value, (bool, int, float, str)):
        raise ValueError(f"value {value!r} must be text, a number or true/false")
    return Label(
        episode=_as_index(record["episode"], "episode"),
        column=column.strip(),
        value=value,
        frame_start=None if _absent(record.get("frame_start")) else _as_index(record["frame_start"], "frame_start"),
        frame_end=None if _absent(record.get("frame_end")) else _as_index(record["frame_end"], "frame_end"),
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


def _coerce(value: LabelValue, column_type: str) -> LabelValue:
    """``value`` as the Python value a ``column_type`` column stores; ValueError if it is not one."""
    if column_type == "text":
        if isinstance(value, str):
            return value
        raise ValueError("expected text")
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


def _infer_type(values: Iterable[LabelValue]) -> str | None:
    """The type of a new column from all its values: bool, else int64, else float32, else text; None if mixed.

    Every value of the column decides together, so splitting a label file per episode cannot give
    one column two types.
    """
    values = list(values)
    if all(isinstance(v, bool) or (isinstance(v, str) and v.strip().lower() in _BOOL_WORDS) for v in values):
        return "bool"
    numbers = [_number(v) for v in values]
    if all(isinstance(n, int) for n in numbers):
        return "int64"
    if all(n is not None for n in numbers):
        return "float32"
    if all(isinstance(v, str) for v in values):
        return "text"
    return None


def _zero(column_type: str) -> LabelValue:
    """What a new label column holds for rows no label sets."""
    return {"text": "", "bool": False}.get(column_type, 0.0 if column_type.startswith("float") else 0)


# --- validating --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TableShape:
    dataset: str
    lengths: dict[int, int]  # episode -> frames
    columns: dict[str, Any]  # name -> Deeplake type


def _shape(ds: deeplake.Dataset | deeplake.ReadOnlyDataset) -> _TableShape:
    metadata = json.loads(ds.metadata[METADATA_KEY]) if METADATA_KEY in ds.metadata.keys() else {}
    lengths: dict[int, int] = {}
    if len(ds):
        values, counts = np.unique(np.asarray(ds["episode_index"][:]), return_counts=True)
        lengths = {int(v): int(c) for v, c in zip(values, counts)}
    columns = {column.name: column.dtype for column in ds.schema.columns}
    return _TableShape(metadata.get("dataset", "unnamed"), lengths, columns)


def _episode_list(episodes: Sequence[int]) -> str:
    if not episodes:
        return "no episodes"
    if len(episodes) <= 10:
        return "episodes " + ", ".join(map(str, episodes))
    return f"{len(episodes)} episodes, {episodes[0]}..{episodes[-1]}"


def _prepare(table: _TableShape, labels: Sequence[Label]) -> tuple[list[Label], dict[str, str], list[str]]:
    """Labels with values typed for their columns, each label column's type, and every problem found."""
    labels = [replace(label, value=_plain(label.value)) for label in labels]  # numpy scalars from Python callers
    problems: list[str] = []
    types: dict[str, str] = {}
    by_column: dict[str, list[LabelValue]] = defaultdict(list)
    for label in labels:
        by_column[label.column].append(label.value)
    for column, values in by_column.items():
        if column in PROTECTED or column.startswith(CAMERA_PREFIX):
            problems.append(f"column {column!r} is protected: index, timestamp and camera columns cannot be relabelled")
        elif column in table.columns:
            column_type = _column_type(table.columns[column])
            if column_type is None:
                problems.append(
                    f"column {column!r} of dataset {table.dataset!r} holds {table.columns[column]}; "
                    "only text and scalar columns can be relabelled"
                )
            else:
                types[column] = column_type
        elif not _COLUMN_NAME.fullmatch(column):
            problems.append(f"new column {column!r}: use a letter, then letters, digits, '_', '.' or '-'")
        else:
            inferred = _infer_type(values)
            if inferred is None:
                kinds = sorted({type(v).__name__ for v in values})
                problems.append(f"new column {column!r} mixes value types {kinds}; give all its values one type")
            else:
                types[column] = inferred
    typed: list[Label] = []
    known = sorted(table.lengths)
    for n, label in enumerate(labels, start=1):
        length = table.lengths.get(label.episode)
        if length is None:
            problems.append(
                f"label {n}: {where(table.dataset, label.episode)} does not exist (the table has {_episode_list(known)})"
            )
        else:
            start, end = _frames(label, length)
            if not 0 <= start < end <= length:
                problems.append(
                    f"label {n}: frames {label.frame_start}..{label.frame_end} (end exclusive) are not inside "
                    f"{where(table.dataset, label.episode)}, which has frames 0..{length - 1}"
                )
        if label.column not in types:
            continue
        try:
            typed.append(replace(label, value=_coerce(label.value, types[label.column])))
        except ValueError as exc:
            problems.append(
                f"label {n}: value {label.value!r} for column {label.column!r} of "
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


def validate_labels(ds: deeplake.Dataset | deeplake.ReadOnlyDataset, labels: Sequence[Label]) -> list[str]:
    """Every reason ``labels`` cannot be applied to ``ds``: unknown episodes, frames out of range, protected or
    non-scalar columns, values of the wrong type, conflicting overlaps. Empty when they can."""
    if not labels:
        return ["no labels given"]
    return _prepare(_shape(ds), labels)[2]


# --- writing onto a branch ---------------------------------------------------------------------


def apply_labels(
    url: str,
    labels: Sequence[Label],
    branch: str,
    message: str,
    lock_path: Path,
    episodes: Collection[int] | None = None,
) -> RelabelResult:
    """Write ``labels`` onto ``branch`` of the table at ``url`` (creating it from main) and commit; main is untouched.

    All ``labels`` are validated (and new columns typed from all their values) even when ``episodes``
    restricts the write to some episodes, so per-episode runs of one label file agree. Only values
    that differ are written; when nothing differs nothing is committed. Raises :class:`LabelError`
    before anything is written, branch creation included, when the labels are invalid.
    """
    check_branch(branch)
    with write_lock(lock_path):
        main = open_writable(url)
        created = branch not in main.branches.names()
        target = main if created else main.branches[branch].open()
        shape = _shape(target)
        typed, types, problems = _prepare(shape, labels) if labels else ([], {}, ["no labels given"])
        if problems:
            raise LabelError(f"labels for dataset {shape.dataset!r} (branch {branch!r}) are not valid:", problems)
        if created:
            main.branch(branch)
            target = main.branches[branch].open()
        chosen = [label for label in typed if episodes is None or label.episode in episodes]
        new_columns = sorted({label.column for label in chosen} - set(shape.columns))
        for column in new_columns:
            _add_label_column(target, column, types[column])
        changed = _write(target, chosen, types)
        if changed or new_columns:
            target.commit(message)
        rows = np.unique(np.concatenate(list(changed.values()))) if changed else np.empty(0, dtype=np.int64)
        episodes_changed = np.asarray(target["episode_index"][:])[rows] if changed else []
        version = target.version
    return RelabelResult(
        branch=branch,
        version=version,
        rows=len(rows),
        episodes=sorted({int(e) for e in episodes_changed}),
        columns=sorted(changed),
        new_columns=new_columns,
        created_branch=created,
    )


def _add_label_column(ds: deeplake.Dataset, column: str, column_type: str) -> None:
    """Add a label column filled with its zero value; the default also fills rows appended later (re-ingests)."""
    zero = _zero(column_type)
    ds.add_column(column, _NEW_COLUMN_TYPES[column_type](), default_value=zero)
    if len(ds):  # Deeplake leaves existing rows empty whatever the default
        ds[column][0 : len(ds)] = _as_column_values([zero] * len(ds), column_type)


def _as_column_values(values: Sequence[LabelValue], column_type: str) -> list[str] | np.ndarray:
    return list(values) if column_type == "text" else np.asarray(values, dtype=np.dtype(column_type))


def _write(ds: deeplake.Dataset, labels: Sequence[Label], types: dict[str, str]) -> dict[str, np.ndarray]:
    """Set the labelled rows whose value differs; return the changed row offsets per column."""
    episode_index = np.asarray(ds["episode_index"][:])
    frame_index = np.asarray(ds["frame_index"][:])
    targets: dict[str, dict[int, LabelValue]] = defaultdict(dict)
    for label in labels:
        mask = episode_index == label.episode
        if label.frame_start is not None:
            mask &= frame_index >= label.frame_start
        if label.frame_end is not None:
            mask &= frame_index < label.frame_end
        targets[label.column].update(dict.fromkeys(np.flatnonzero(mask).tolist(), label.value))
    changed: dict[str, np.ndarray] = {}
    for column, values_by_offset in targets.items():
        offsets = np.array(sorted(values_by_offset), dtype=np.int64)
        wanted = _as_column_values([values_by_offset[o] for o in offsets], types[column])
        current = np.asarray(ds[column][:], dtype=object)[offsets]
        differs = np.flatnonzero(current != np.asarray(wanted, dtype=object))
        if not len(differs):
            continue
        for run in np.split(differs, np.flatnonzero(np.diff(offsets[differs]) != 1) + 1):
            first = int(offsets[run[0]])
            ds[column][first : first + len(run)] = _as_column_values([wanted[i] for i in run], types[column])
        changed[column] = offsets[differs]
    return changed


# --- reviewing and merging ---------------------------------------------------------------------


def _open_branch(main: deeplake.ReadOnlyDataset | deeplake.Dataset, url: str, branch: str) -> Any:
    if branch == MAIN or branch not in main.branches.names():
        others = sorted(set(main.branches.names()) - {MAIN})
        raise TableError(f"table {url} has no branch {branch!r}; its branches besides main: {others}")
    return main.branches[branch]


def diff_branch(url: str, branch: str) -> dict[str, Any]:
    """How the label columns (text and scalar columns) of ``branch`` differ from main's head, row by row.

    Rows are matched by (episode_index, frame_index), so the answer holds even when main was
    re-ingested since the branch was made. A column that exists only on the branch compares with its
    zero value. Returns counts per column, the episodes involved, and a few examples.
    """
    main = open_read_only(url)
    handle = _open_branch(main, url, branch)
    other = handle.open()
    base_version = handle.base[1] if handle.base else None
    main_rows, branch_rows = _aligned_rows(main, other)
    episodes_of_rows = np.asarray(other["episode_index"][:])[branch_rows]
    frames_of_rows = np.asarray(other["frame_index"][:])[branch_rows]
    main_columns = {c.name: c.dtype for c in main.schema.columns}
    per_column: dict[str, int] = {}
    changed_rows = np.zeros(len(branch_rows), dtype=bool)
    examples: list[dict[str, Any]] = []
    new_columns = []
    for column in other.schema.columns:
        column_type = _column_type(column.dtype)
        if column_type is None or column.name in ("episode_index", "frame_index"):
            continue
        after = np.asarray(other[column.name][:], dtype=object)[branch_rows]
        if column.name in main_columns:
            before = np.asarray(main[column.name][:], dtype=object)[main_rows]
        else:
            new_columns.append(column.name)
            before = np.full(len(after), _zero(column_type), dtype=object)
        differs = before != after
        if not differs.any():
            continue
        per_column[column.name] = int(differs.sum())
        changed_rows |= differs
        _, first_per_episode = np.unique(episodes_of_rows[differs], return_index=True)
        for i in np.flatnonzero(differs)[first_per_episode]:
            examples.append(
                {
                    "episode": int(episodes_of_rows[i]),
                    "frame": int(frames_of_rows[i]),
                    "column": column.name,
                    "main": _plain(before[i]) if column.name in main_columns else None,
                    "branch": _plain(after[i]),
                }
            )
    return {
        "table": url,
        "branch": branch,
        "main_version": main.version,
        "branch_version": other.version,
        "base_version": base_version,
        "main_moved": base_version is not None and base_version != main.version,
        "rows": int(changed_rows.sum()),
        "episodes": sorted({int(e) for e in episodes_of_rows[changed_rows]}),
        "columns": per_column,
        "new_columns": new_columns,
        "rows_only_on_main": len(main) - len(main_rows),
        "rows_only_on_branch": len(other) - len(branch_rows),
        "examples": examples[:_EXAMPLES],
    }


def _aligned_rows(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """Offsets in ``a`` and ``b`` of the rows both hold, matched by (episode_index, frame_index)."""
    keys = []
    for ds in (a, b):
        episode = np.asarray(ds["episode_index"][:], dtype=np.int64)
        frame = np.asarray(ds["frame_index"][:], dtype=np.int64)
        keys.append((episode << 32) | frame)  # frame indices stay far below 2**32
    _, in_a, in_b = np.intersect1d(keys[0], keys[1], return_indices=True)
    return in_a, in_b


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def merge_branch(url: str, branch: str, lock_path: Path) -> dict[str, Any]:
    """Merge ``branch`` into main (Deeplake commits the merge) and return main's new version and what changed.

    Refuses when main deleted rows since the branch was made (a re-ingest replaces an episode's
    rows): Deeplake merges by row identity, so labels on replaced rows would silently be dropped.
    Merging a branch main already matches changes nothing.
    """
    check_branch(branch)
    with write_lock(lock_path):
        main = open_writable(url)
        handle = _open_branch(main, url, branch)
        diff = diff_branch(url, branch)
        if diff["rows"] == 0 and not diff["new_columns"]:
            return {**_merge_summary(url, branch, diff), "version": main.version, "merged": False}
        replaced = _deletions_since(main, handle.base[1] if handle.base else None)
        if replaced:
            raise TableError(
                f"cannot merge branch {branch!r} into main of table {url}: main replaced or removed rows since the "
                f"branch was made ({'; '.join(replaced)}), so labels on those rows would be lost; apply the "
                "labels again onto a new branch and merge that one"
            )
        main.merge(
            branch,
            message=f"merge labels from branch {branch}: {diff['rows']} rows of episodes {diff['episodes']}, "
            f"columns {sorted(diff['columns'])}",
        )
        return {**_merge_summary(url, branch, diff), "version": main.version, "merged": True}


def _merge_summary(url: str, branch: str, diff: dict[str, Any]) -> dict[str, Any]:
    keys = ("rows", "episodes", "columns", "new_columns")
    return {"table": url, "branch": branch, **{key: diff[key] for key in keys}}


def _deletions_since(main: deeplake.Dataset, base_version: str | None) -> list[str]:
    """Messages of main's commits after ``base_version`` that deleted rows."""
    found, messages = base_version is None, []
    for version in main.history:
        if found and any(op.startswith("Deleted") for op in version.operations):
            messages.append(version.message or version.id)
        found = found or version.id == base_version
    return messages
