"""Reviewing and merging a label branch: ``diff`` lists the cells a merge would write, ``merge``
writes them onto main.

A merge compares three versions, cell by cell: the branch's base (main when the branch was made),
the branch, and main now; a cell both sides changed is a conflict, refused unless ``prefer`` names
the side that wins. Rows are matched by (episode, frame), so rows the branch never saw (an ingest
on main since) keep their values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import deeplake
import numpy as np

from lerobot_assets.core.errors import TableError
from lerobot_assets.core.table.access import open_read_only, open_writable
from lerobot_assets.core.table.label_files import (
    MAIN,
    ColumnSpec,
    Label,
    LabelError,
    LabelValue,
    check_branch,
    column_type_of,
    plain_value,
)
from lerobot_assets.core.table.labels import (
    CELL_ARRAYS,
    add_label_column,
    column_spec,
    label_columns,
    labelable_columns,
    open_branch,
    record_label_set,
    replaced_since,
    set_cells,
    table_shape,
    task_index_of,
    task_indices,
)
from lerobot_assets.core.table.lease import hold
from lerobot_assets.core.table.metadata import table_metadata
from lerobot_assets.core.table.schema import refresh_indexes


#: ``merge --prefer``: which side wins a cell both the branch and main changed since the branch's base.
PREFER = ("branch", "main")

_EXAMPLES = 10  # diff examples: the first changed row of each (column, episode)
_CONFLICTS_SHOWN = 10  # conflicting cells named in a refused merge's message (diff lists them all)


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
        out[found] = [plain_value(v) for v in values[offsets[found]]]
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
        return _Cells(self.spec, *(getattr(self, name)[keep] for name in CELL_ARRAYS))


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
    branch_shape, main_columns = table_shape(other), {c.name for c in main.schema.columns}
    branch_keys = _keys(other)
    in_main = _lookup(_keys(main), branch_keys)
    in_base = _lookup(_keys(base), branch_keys) if base is not None else in_main
    episodes, frames = branch_keys >> 32, branch_keys & 0xFFFFFFFF
    cells = []
    for column in labelable_columns(branch_shape):
        spec = column_spec(branch_shape, column)
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
    new_columns = [column_spec(branch_shape, c) for c in labelable_columns(branch_shape) if c not in main_columns]
    seen = int((in_main >= 0).sum())
    sources = _branch_sources(other, other_name)
    main_types = {c.name: column_type_of(c.dtype) for c in main.schema.columns}
    clashes = [
        f"column {name!r} is {main_types[name]} on main but {column_type_of(branch_shape.columns[name])} on the branch"
        for name in labelable_columns(branch_shape)
        if name in main_types and main_types[name] != column_type_of(branch_shape.columns[name])
    ]
    main_specs = label_columns(main)
    clashes += [
        f"column {name!r} has default {main_specs[name].default!r} on main but {spec.default!r} on the branch"
        for name, spec in branch_shape.label_columns.items()
        if name in main_specs and main_specs[name].type == spec.type and main_specs[name].default != spec.default
    ]
    return _MergePlan(sources, cells, new_columns, base_version, len(main) - seen, len(other) - seen, clashes)


def _branch_plan(main: Any, url: str, branch: str) -> _MergePlan:
    handle = open_branch(main, url, branch)
    base_version = handle.base[1] if handle.base else None
    base = main.history[base_version].open() if base_version else None
    return _plan_merge(main, handle.open(), branch, base, base_version)


def _cell(cells: _Cells, i: int, **sides: np.ndarray) -> dict[str, Any]:
    return {
        "episode": int(cells.episodes[i]),
        "frame": int(cells.frames[i]),
        "column": cells.spec.name,
        **{side: plain_value(values[i]) for side, values in sides.items()},
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
        "replaced_on_main": replaced_since(main, plan.base_version, {int(e) for c in plan.cells for e in c.episodes}),
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
    with hold(url):
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
        add_label_column(main, spec)
    tasks = task_indices(main)
    written: dict[str, np.ndarray] = {}
    for c in cells:
        done = set_cells(main, c.spec.name, c.rows, list(c.branch), c.spec.type)
        if len(done):
            written[c.spec.name] = done
        if c.spec.name == "task":
            indices = [task_index_of(tasks, str(text)) for text in c.branch]
            done = set_cells(main, "task_index", c.rows, indices, "int64")
            if len(done):
                written["task_index"] = done
    refresh_indexes(main, written)
    labels = [run for c in cells for run in _runs(c)]
    record_label_set(main, new_columns, tasks, {"merged_from": branch, "files": sources}, labels)
    return written


def _runs(cells: _Cells) -> list[dict[str, Any]]:
    """The cells as labels: one per run of consecutive frames of an episode with one value."""
    order = np.lexsort((cells.frames, cells.episodes))
    runs: list[dict[str, Any]] = []
    for i in order:
        episode, frame, value = int(cells.episodes[i]), int(cells.frames[i]), plain_value(cells.branch[i])
        last = runs[-1] if runs else None
        if last and (last["episode"], last["frame_end"], last["value"]) == (episode, frame, value):
            last["frame_end"] = frame + 1
        else:
            runs.append(Label(episode, cells.spec.name, value, frame, frame + 1).to_json())
    return runs
