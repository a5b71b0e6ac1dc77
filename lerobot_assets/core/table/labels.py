"""Labels on the table: checking labels against it, writing them onto a branch, re-applying them.

A label sets one column (task text, or a label column such as ``next.reward`` / ``next.success``) to
one value for an episode, or for a range of its frames (:mod:`~lerobot_assets.core.table.label_files`
reads them). A new label column's default fills every row no label sets, also rows added later (an
ingest) or rows a review branch never saw. Labels are only ever written onto a Deeplake branch of
the table (created from main on first use), so main keeps serving training until a reviewer merges
the branch (:mod:`~lerobot_assets.core.table.branches`); tags taken before the merge keep the old labels.

Every applied label set (its file, sha256, branch and the labels it set) is kept in the table's
metadata, so another machine sees it: an ingest that rewrites an episode re-applies main's labels
to the frames that still exist and reports the rest. Values written in place leave Deeplake's
indexes stale, so every write here recreates the indexes of the columns it changed.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import deeplake
import numpy as np

from lerobot_assets.core.errors import TableError, where
from lerobot_assets.core.lerobot.meta import INDEX_DTYPES
from lerobot_assets.core.table.access import open_writable
from lerobot_assets.core.table.label_files import (
    COLUMN_TYPES,
    HEADER_PREFIX,
    LABEL_FIELDS,
    MAIN,
    ColumnSpec,
    Label,
    LabelError,
    LabelValue,
    at_line,
    check_branch,
    coerce_value,
    column_type_of,
    plain_value,
    zero_value,
)
from lerobot_assets.core.table.lease import hold
from lerobot_assets.core.table.metadata import episode_versions, set_table_metadata, table_metadata
from lerobot_assets.core.table.schema import refresh_indexes


#: Index columns: rows are found and ordered by them; ``task_index`` follows ``task`` (never set directly).
PROTECTED = frozenset(INDEX_DTYPES)
CAMERA_PREFIX = "observation.images."


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


@dataclass(frozen=True)
class TableShape:
    dataset: str
    lengths: dict[int, int]  # episode -> frames
    columns: dict[str, Any]  # name -> Deeplake type
    label_columns: dict[str, ColumnSpec]  # label columns with their declared type and default


def table_shape(ds: deeplake.Dataset | deeplake.ReadOnlyDataset) -> TableShape:
    lengths: dict[int, int] = {}
    if len(ds):
        values, counts = np.unique(np.asarray(ds["episode_index"][:]), return_counts=True)
        lengths = {int(v): int(c) for v, c in zip(values, counts)}
    columns = {column.name: column.dtype for column in ds.schema.columns}
    return TableShape(table_metadata(ds).get("dataset", "unnamed"), lengths, columns, label_columns(ds))


def label_columns(ds: deeplake.Dataset | deeplake.ReadOnlyDataset) -> dict[str, ColumnSpec]:
    """The declared label columns of ``ds`` (added by relabelling) with their type and default."""
    declared = table_metadata(ds).get("label_columns", {})
    return {name: ColumnSpec(name, spec["type"], spec["default"]) for name, spec in declared.items()}


def column_spec(table: TableShape, column: str) -> ColumnSpec:
    """The column's declaration; a column relabelled before declarations existed defaults to its type's zero."""
    if column in table.label_columns:
        return table.label_columns[column]
    column_type = column_type_of(table.columns[column])
    return ColumnSpec(column, column_type, zero_value(column_type))


def _episode_list(episodes: Sequence[int]) -> str:
    if not episodes:
        return "no episodes"
    if len(episodes) <= 10:
        return "episodes " + ", ".join(map(str, episodes))
    return f"{len(episodes)} episodes, {episodes[0]}..{episodes[-1]}"


def labelable_columns(table: TableShape) -> list[str]:
    return [
        name
        for name, dtype in table.columns.items()
        if name not in PROTECTED and not name.startswith(CAMERA_PREFIX) and column_type_of(dtype) is not None
    ]


def _column_types(
    table: TableShape, columns: Iterable[str], declared: Mapping[str, ColumnSpec]
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
            column_type = column_type_of(table.columns[column])
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
            elif column in declared and declared[column].default != column_spec(table, column).default:
                problems.append(
                    f"column {column!r} is declared with default {declared[column].default!r} but dataset "
                    f"{table.dataset!r} already has it with default {column_spec(table, column).default!r}; a default is "
                    "set when the column is added: drop the declaration"
                )
            else:
                types[column] = column_type
        elif column in declared:
            types[column] = declared[column].type
        else:
            close = difflib.get_close_matches(column, labelable_columns(table), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.append(
                f"column {column!r} does not exist in dataset {table.dataset!r}; {hint}a new label column must be "
                f"declared with its type and default: --new-column {column}:<{'|'.join(COLUMN_TYPES)}>=<default>, "
                f"or a '{HEADER_PREFIX} ...' line at the top of the label file"
            )
    return types, problems


def _prepare(
    table: TableShape, labels: Sequence[Label], declared: Mapping[str, ColumnSpec]
) -> tuple[list[Label], dict[str, str], list[str]]:
    """Labels with values typed for their columns, each label column's type, and every problem found."""
    labels = [replace(label, value=plain_value(label.value)) for label in labels]  # numpy scalars from Python callers
    types, problems = _column_types(table, (label.column for label in labels), declared)
    typed: list[Label] = []
    known = sorted(table.lengths)
    for n, label in enumerate(labels, start=1):
        name = f"label {n}{at_line(label.line)}"
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
            typed.append(replace(label, value=coerce_value(label.value, types[label.column])))
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


def _overlaps(table: TableShape, labels: Sequence[Label]) -> list[str]:
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
    return _prepare(table_shape(ds), labels, new_columns or {})[2]


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
    with hold(url):
        main = open_writable(url)
        created = branch not in main.branches.names()
        target = main if created else main.branches[branch].open()
        shape = table_shape(target)
        typed, types, problems = _prepare(shape, labels, declared) if labels else ([], {}, ["no labels given"])
        if problems:
            raise LabelError(f"labels for dataset {shape.dataset!r} (branch {branch!r}) are not valid:", problems)
        if created:
            main.branch(branch)
            target = main.branches[branch].open()
        chosen = [label for label in typed if episodes is None or label.episode in episodes]
        added = sorted({label.column for label in chosen} - set(shape.columns))
        for column in added:
            add_label_column(target, declared[column])
        tasks = task_indices(target)
        changed = _write(target, chosen, types, tasks)
        if changed or added:
            refresh_indexes(target, changed)
            digest = (source or {}).get("sha256") or hashlib.sha256(
                json.dumps([label.to_json() for label in typed], sort_keys=True).encode()
            ).hexdigest()
            entry = {"file": (source or {}).get("file"), "sha256": digest, "branch": branch}
            record_label_set(target, [declared[c] for c in added], tasks, entry, [label.to_json() for label in chosen])
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


def add_label_column(ds: deeplake.Dataset, spec: ColumnSpec) -> None:
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


def task_index_of(tasks: dict[str, int], text: str) -> int:
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
        targets["task_index"] = {row: task_index_of(tasks, str(text)) for row, text in targets["task"].items()}
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
        done = set_cells(ds, column, offsets, [values_by_offset[o] for o in offsets], types[column])
        if len(done):
            changed[column] = done
    return changed


def set_cells(
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


def record_label_set(
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


def open_branch(main: deeplake.ReadOnlyDataset | deeplake.Dataset, url: str, branch: str) -> Any:
    if branch == MAIN or branch not in main.branches.names():
        others = sorted(set(main.branches.names()) - {MAIN})
        raise TableError(f"table {url} has no branch {branch!r}; its branches besides main: {others}")
    return main.branches[branch]


CELL_ARRAYS = ("rows", "episodes", "frames", "base", "main", "branch")


def replaced_since(
    main: deeplake.Dataset | deeplake.ReadOnlyDataset, base_version: str | None, episodes: set[int]
) -> list[int]:
    """Those of ``episodes`` whose rows main replaced or removed since ``base_version`` (a re-ingest):
    the data version recorded with each episode's rows changed. Episodes the branch does not label
    may be re-ingested freely."""
    if base_version is None or not episodes:
        return []
    before, now = episode_versions(main.history[base_version].open()), episode_versions(main)
    return sorted(e for e in episodes if before.get(e) != now.get(e))


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
    set_cells(ds, "task_index", np.arange(len(texts)), [final[text] for text in texts], "int64")
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
        types.update({label["column"]: column_type_of(schema[label["column"]]) for label in labels if label["column"] in schema})
        types["task_index"] = "int64"
        frames = np.asarray(out["frame_index"], dtype=np.int64)
        tasks, length = task_indices(ds), int(frames.max()) + 1 if count else 0
    for record in labels:
        label = Label(**{key: record[key] for key in LABEL_FIELDS})
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
