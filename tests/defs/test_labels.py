"""Labels that hold (issue 21): merges safe for rows a branch never saw, indexes that answer as a scan
after every write, declared label columns, three-way merges, and labels re-applied by re-ingests."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from lerobot_assets.core.errors import LeRobotAssetsError, TableError
from lerobot_assets.core.table.access import open_read_only, open_tag
from lerobot_assets.core.table.branches import PREFER
from lerobot_assets.core.table.label_files import ColumnSpec, LabelError, read_label_file
from lerobot_assets.core.table.labels import describe_reapplied
from lerobot_assets.core.table.metadata import table_metadata
from lerobot_assets.runtime.commands import ingest, snapshot
from lerobot_assets.runtime.home import Home
from lerobot_assets.runtime.registry import registry_of
from lerobot_assets.runtime.relabel import diff, merge, relabel
from lerobot_assets.testing.synthetic import generate_dataset
from lerobot_assets.training import SnapshotDataset, collate

from tests.defs.test_relabel import _write_csv
from tests.support.datasets import shift_actions

LENGTHS = (9, 11, 8)
TASKS = ("Pick up the shrimp", "Wipe the table", "Open the drawer")
NEW_TASK = "Clean the counter"


def _source(root: Path, lengths: tuple[int, ...] = LENGTHS) -> Path:
    """A small generated dataset, one data file per episode, so changing one episode changes only it."""
    if root.exists():
        shutil.rmtree(root)
    return generate_dataset(
        root, episode_lengths=lengths, tasks=TASKS, codec="libx264", cameras=("front",), episodes_per_file=1,
        height=48, width=64,
    )


def _scan_vs_index(ds) -> list[str]:
    """Every indexed query (CONTAINS and == on task, == on episode_index and label columns, cosine ordering on
    the embedding) compared with a full scan of the same version; the differences found."""
    task = np.asarray(ds["task"][:], dtype=object)
    episode = np.asarray(ds["episode_index"][:])
    index = np.asarray(ds["index"][:])
    bad = []

    def check(tql: str, expected: np.ndarray) -> None:
        got = sorted(np.asarray(ds.query(f"SELECT * WHERE {tql}")["index"][:]).tolist())
        if got != sorted(index[expected].tolist()):
            bad.append(f"{tql}: {len(got)} rows, a scan finds {int(expected.sum())}")

    for word in sorted({w for text in set(task) for w in text.split()} | {"counter", "Wipe"}):
        check(f"CONTAINS(task, '{word}')", np.array([word in text.split() for text in task], dtype=bool))
    for text in sorted(set(task) | {NEW_TASK}):
        check(f"task == '{text}'", task == text)
    for e in sorted(set(episode.tolist())):
        check(f"episode_index == {e}", episode == e)
    if "next.success" in {c.name for c in ds.schema.columns}:
        success = np.asarray(ds["next.success"][:], dtype=object)
        for value in (False, True):
            check(f'"next.success" == {str(value).lower()}', success == value)
    state = np.asarray(ds["observation.state"][:], dtype=np.float64)
    probe = state[len(state) // 2] + 0.01
    cosine = state @ probe / np.linalg.norm(state, axis=1) / np.linalg.norm(probe)
    vector = ", ".join(f"{v:.6f}" for v in probe)
    ranked = ds.query(f"SELECT * ORDER BY COSINE_SIMILARITY(\"observation.state\", ARRAY[{vector}]) DESC LIMIT 5")
    order = np.argsort(index)
    got = cosine[order][np.searchsorted(index[order], np.asarray(ranked["index"][:]))]
    if not np.allclose(got, np.sort(cosine)[::-1][:5], atol=1e-5):
        bad.append(f"cosine top 5 {got} differ from a scan's {np.sort(cosine)[::-1][:5]}")
    return bad


def _labels(path: Path, labels: list[dict], header: tuple[str, ...] = ()) -> Path:
    return _write_csv(path, labels, header=header)


# --- 1. rows a branch never saw ------------------------------------------------------------------


def test_rows_added_on_main_after_the_branch_get_the_declared_default(official_dataset: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    ingest(str(official_dataset), name="small", home=home, episodes=[0, 1], workers=1)
    labels = _labels(tmp_path / "l.csv", [{"episode": 1, "frame_start": 0, "frame_end": 5, "column": "next.success",
                                           "value": "true"}])
    relabel("small", labels, "nb", home, new_columns=["next.success:bool=false"])
    ingest(str(official_dataset), name="small", home=home, workers=1)  # episode 2, after the branch
    merged = merge("small", "nb", home)
    assert (merged["merged"], merged["rows"], merged["new_columns"]) == (True, 5, ["next.success"])
    tag = snapshot("small", tag="t", home=home)
    ds = open_tag(tag["table"], "t")
    episode = np.asarray(ds["episode_index"][:])
    success = ds["next.success"][:]
    assert all(v is not None for v in success)
    success = np.asarray(success, dtype=bool)
    assert success.sum() == 5 and not success[episode == 2].any() and (episode == 2).sum() == 31
    falses = np.asarray(ds.query('SELECT * WHERE "next.success" == false')["index"][:])
    assert len(falses) == len(ds) - 5 and set(np.asarray(ds["index"][:])[episode == 2]) <= set(falses)
    data = SnapshotDataset("small", "t", home=home, columns=["next.success"])
    row = int(np.flatnonzero(np.asarray(data._values["episode_index"]) == 2)[0])
    item = data[row]
    assert item["episode_index"].item() == 2 and item["next.success"].dtype == torch.bool and not item["next.success"]
    seen = 0
    for batch in DataLoader(data, batch_size=16, collate_fn=collate):
        seen += len(batch["next.success"])
    assert seen == len(ds)


# --- 2. indexes answer as a scan after every kind of write ---------------------------------------


def test_indexes_answer_as_a_full_scan_after_relabel_merge_snapshot_and_reingest(tmp_path: Path) -> None:
    home = tmp_path / "home"
    source = _source(tmp_path / "src")
    ingest(str(source), name="gen", home=home, workers=1)
    snapshot("gen", tag="before", home=home)  # builds the indexes
    assert _scan_vs_index(open_read_only(_table(home))) == []
    labels = _labels(tmp_path / "l.csv", [
        {"episode": 1, "column": "task", "value": NEW_TASK},
        {"episode": 0, "frame_start": 2, "frame_end": 4, "column": "next.success", "value": "true"},
    ], header=("next.success:bool=false",))
    relabel("gen", labels, "b", home)
    main = open_read_only(_table(home))
    assert _scan_vs_index(main.branches["b"].open()) == []
    merge("gen", "b", home)
    main = open_read_only(_table(home))
    assert len(main.query("SELECT * WHERE CONTAINS(task, 'counter')")) == LENGTHS[1]
    assert len(main.query("SELECT * WHERE CONTAINS(task, 'Wipe')")) == 0
    assert _scan_vs_index(main) == []
    snapshot("gen", tag="after", home=home)
    assert _scan_vs_index(open_tag(_table(home), "after")) == []
    assert len(SnapshotDataset("gen", "after", home=home, query="SELECT * WHERE CONTAINS(task, 'counter')")) == 11
    _source(source, (9, 7, 8))  # episode 1 upstream changes (shorter): its rows are rewritten
    ingest(str(source), name="gen", home=home, workers=1)
    assert _scan_vs_index(open_read_only(_table(home))) == []


def _table(home: Path, name: str = "gen") -> str:
    return registry_of(Home(home)).dataset_source(name).table


# --- 3. label columns are declared --------------------------------------------------------------


@pytest.fixture(scope="module")
def small(official_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The official sample ingested once (episodes of 37, 33 and 31 frames); tests write onto their own branches."""
    home = tmp_path_factory.mktemp("labels-home")
    ingest(str(official_dataset), name="small", home=home, workers=1)
    return home


def _refused(home: Path, tmp_path: Path, labels: list[dict], header: tuple[str, ...] = (), **kwargs) -> str:
    path = _labels(tmp_path / "bad.csv", labels, header)
    before = open_read_only(_table(home, "small"))
    with pytest.raises(LeRobotAssetsError) as error:  # LabelError, or the failed run's message for a bad file
        relabel("small", path, "refused", home, **kwargs)
    after = open_read_only(_table(home, "small"))
    assert after.version == before.version and "refused" not in after.branches.names()
    return str(error.value)


def test_a_typo_in_a_column_name_is_refused_with_the_closest_name(small: Path, tmp_path: Path) -> None:
    message = _refused(small, tmp_path, [{"episode": 1, "column": "taks", "value": "Fold"}])
    assert "column 'taks' does not exist in dataset 'small'; did you mean 'task'?" in message
    assert "--new-column taks:" in message


def test_a_new_column_needs_a_declared_type_and_its_values_must_fit_it(small: Path, tmp_path: Path) -> None:
    mixed = [{"episode": 0, "column": "next.quality", "value": "true"},
             {"episode": 1, "column": "next.quality", "value": "0.7"}]
    assert "column 'next.quality' does not exist" in _refused(small, tmp_path, mixed)
    message = _refused(small, tmp_path, mixed, header=("next.quality:float32=0",))
    assert "label 1 (line 3): value 'true' for column 'next.quality' of dataset 'small', episode 0: expected a number" \
        in message
    message = _refused(small, tmp_path, mixed, new_columns=["next.quality:bool=false"])
    assert "label 2 (line 3): value '0.7' for column 'next.quality'" in message and "expected true or false" in message
    empty = [{"episode": 1, "column": "task", "value": ""}]
    assert "row 1: empty value" in _refused(small, tmp_path, empty)
    with pytest.raises(LabelError, match="declare it as name:type=default"):
        relabel("small", _labels(tmp_path / "ok.csv", mixed), "refused", small, new_columns=["next.quality:float32"])


def test_a_declaration_that_disagrees_with_an_existing_column_is_refused(tmp_path: Path) -> None:
    """A default declared again, differently, was ignored: the user believed unlabelled rows held it."""
    source, home = _source(tmp_path / "src"), tmp_path / "home"
    ingest(str(source), name="small", home=home, workers=1)
    label = [{"episode": 0, "frame_start": 0, "frame_end": 2, "column": "next.success", "value": "true"}]
    relabel("small", _labels(tmp_path / "ok.csv", label, header=("next.success:bool=false",)), "a", home)
    merge("small", "a", home)
    message = _refused(home, tmp_path, label, header=("next.success:bool=true",))
    assert "column 'next.success' is declared with default True but dataset 'small' already has it with default " \
        "False" in message
    relabel("small", _labels(tmp_path / "same.csv", label, header=("next.success:bool=false",)), "b", home)


def test_a_number_a_float32_column_cannot_hold_is_refused(small: Path, tmp_path: Path) -> None:
    """1e40 became inf in float32, and the label set recorded with it left a branch Deeplake could not open."""
    huge = [{"episode": 0, "frame_start": 0, "frame_end": 2, "column": "next.r", "value": "1e40"}]
    message = _refused(small, tmp_path, huge, header=("next.r:float32=0",))
    assert "label 1 (line 3): value '1e40' for column 'next.r' of dataset 'small', episode 0: out of range for " \
        "float32" in message
    with pytest.raises(LabelError, match="default '-1e39': out of range for float32"):
        relabel("small", _labels(tmp_path / "ok.csv", huge), "refused", small, new_columns=["next.r:float32=-1e39"])


def test_the_declared_type_decides_not_the_first_values(small: Path, tmp_path: Path) -> None:
    first = _labels(tmp_path / "a.csv", [{"episode": 0, "column": "next.q", "value": "1"},
                                         {"episode": 1, "column": "next.q", "value": "0"}], header=("next.q:float32=0.25",))
    relabel("small", first, "typed", small)
    second = _labels(tmp_path / "b.csv", [{"episode": 2, "frame_start": 3, "frame_end": 5, "column": "next.q",
                                           "value": "0.5"}])
    relabel("small", second, "typed", small)
    main = open_read_only(_table(small, "small"))  # must outlive the branch opened from it
    branch = main.branches["typed"].open()
    values, episode = np.asarray(branch["next.q"][:]), np.asarray(branch["episode_index"][:])
    assert values.dtype == np.float32
    assert set(values[episode == 0]) == {1.0} and set(values[episode == 1]) == {0.0}
    assert sorted(values[episode == 2]) == [0.25] * 29 + [0.5, 0.5]


def test_a_rejection_names_the_label_file(small: Path, tmp_path: Path) -> None:
    message = _refused(small, tmp_path, [{"episode": 1, "column": "taks", "value": "Fold"}])
    assert message.startswith(
        f"labels for dataset 'small' were rejected, nothing was written: label file {str(tmp_path / 'bad.csv')!r}: "
    )


def test_a_csv_line_with_more_cells_than_the_header_is_refused_by_line(tmp_path: Path) -> None:
    path = tmp_path / "extra.csv"
    path.write_text("episode,frame_start,frame_end,column,value\n1,0,10,task,Clean,the counter\n2,,,task,Fold\n")
    with pytest.raises(LabelError) as error:
        read_label_file(path)
    assert error.value.problems == [
        "line 2 has 6 cells but the header names 5 ('episode,frame_start,frame_end,column,value'); "
        "quote a value that holds a comma"
    ]
    assert "None" not in str(error.value)


def test_out_of_range_messages_name_both_frame_ends(small: Path, tmp_path: Path) -> None:
    message = _refused(small, tmp_path, [{"episode": 2, "frame_start": 31, "column": "task", "value": "x"}])
    assert "frames 31..31 (end exclusive) are not inside dataset 'small', episode 2, which has frames 0..30" in message
    assert "None" not in message


# --- 6. one-line errors, quiet means quiet --------------------------------------------------------


def test_cli_errors_are_one_line_without_class_names_or_tracebacks(small: Path, tmp_path: Path) -> None:
    path = _labels(tmp_path / "bad.csv", [{"episode": 1, "column": "taks", "value": "Fold"}])
    cli = [sys.executable, "-m", "lerobot_assets.cli"]
    run = subprocess.run([*cli, "relabel", "small", "--labels", str(path), "--branch", "q", "--home", str(small), "-q"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.splitlines() == [run.stderr.strip()], run.stderr
    assert run.stderr.startswith("error: labels for dataset 'small' were rejected") and "did you mean 'task'" in run.stderr
    (tmp_path / "broken.json").write_text("[1, 2]")
    run = subprocess.run([*cli, "relabel", "small", "--labels", str(tmp_path / "broken.json"), "--branch", "q",
                          "--home", str(small), "-q"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert run.stderr.startswith(f"error: label file {str(tmp_path / 'broken.json')!r}: must hold a JSON list")
    assert "LabelError" not in run.stderr and "lerobot_assets." not in run.stderr


# --- 4. task_index follows task ------------------------------------------------------------------


def test_task_index_follows_task_and_new_texts_get_their_own_index(small: Path, tmp_path: Path) -> None:
    labels = _labels(tmp_path / "t.csv", [
        {"episode": 0, "column": "task", "value": "Fold the towel"},
        {"episode": 1, "frame_start": 0, "frame_end": 4, "column": "task", "value": "Fold the towel"},
        {"episode": 2, "column": "task", "value": "Wipe the table"},  # an existing text keeps its index
    ])
    relabel("small", labels, "tasks", small)
    main = open_read_only(_table(small, "small"))
    before = dict(zip(main["task"][:], np.asarray(main["task_index"][:]).tolist()))
    branch = main.branches["tasks"].open()
    pairs = set(zip(branch["task"][:], np.asarray(branch["task_index"][:]).tolist()))
    fold = max(before.values()) + 1
    assert pairs == {("Fold the towel", fold), ("Wipe the table", before["Wipe the table"])}


def test_a_task_renamed_upstream_frees_its_old_text_from_the_index(tmp_path: Path) -> None:
    """After a merge recorded the task list, tasks.parquet renames task 1: relabelling frames back to the old
    text must give it an index of its own, not the renamed task's."""
    source, home = _source(tmp_path / "src"), tmp_path / "home"
    ingest(str(source), name="r", home=home, workers=1)
    relabel("r", _labels(tmp_path / "a.csv", [{"episode": 0, "frame_start": 0, "frame_end": 2, "column": "task",
                                                "value": NEW_TASK}]), "a", home)
    merge("r", "a", home)
    tasks = pd.read_parquet(source / "meta" / "tasks.parquet")
    tasks.index = ["Wipe the bench" if text == TASKS[1] else text for text in tasks.index]
    tasks.to_parquet(source / "meta" / "tasks.parquet")
    assert ingest(str(source), name="r", home=home, workers=1)["changed"] == [1]
    relabel("r", _labels(tmp_path / "b.csv", [{"episode": 2, "frame_start": 0, "frame_end": 3, "column": "task",
                                                "value": TASKS[1]}]), "b", home)
    merge("r", "b", home)
    main = open_read_only(_table(home, "r"))
    pairs = set(zip(main["task"][:], np.asarray(main["task_index"][:]).tolist()))
    assert len({index for _, index in pairs}) == len(pairs), pairs  # one text per index
    assert ("Wipe the bench", 1) in pairs


def test_a_task_the_source_adds_after_a_label_text_does_not_share_its_index(tmp_path: Path) -> None:
    """A merged label introduces a text (next free index, 3); the source then adds a 4th task, index 3 in its
    tasks.parquet. The source rows keep 3 and the label text moves to a fresh index: one index per text."""
    home = tmp_path / "home"
    ingest(str(_source(tmp_path / "src")), name="r", home=home, workers=1)
    relabel("r", _labels(tmp_path / "a.csv", [{"episode": 0, "frame_start": 0, "frame_end": 3, "column": "task",
                                                "value": NEW_TASK}]), "a", home)
    merge("r", "a", home)
    assert table_metadata(open_read_only(_table(home, "r")))["tasks"][NEW_TASK] == 3
    shutil.rmtree(tmp_path / "src")
    generate_dataset(tmp_path / "src", episode_lengths=LENGTHS + (8,), tasks=TASKS + ("Stack the cups",),
                     codec="libx264", cameras=("front",), episodes_per_file=1, height=48, width=64)
    ingest(str(tmp_path / "src"), name="r", home=home, workers=1)
    main = open_read_only(_table(home, "r"))
    pairs = set(zip(main["task"][:], np.asarray(main["task_index"][:]).tolist()))
    assert len({index for _, index in pairs}) == len(pairs) == len({text for text, _ in pairs}), pairs
    assert ("Stack the cups", 3) in pairs and (NEW_TASK, 4) in pairs and (TASKS[0], 0) in pairs
    assert table_metadata(main)["tasks"][NEW_TASK] == 4
    relabel("r", _labels(tmp_path / "b.csv", [{"episode": 1, "frame_start": 0, "frame_end": 2, "column": "task",
                                                "value": NEW_TASK}]), "b", home)
    merge("r", "b", home)
    main = open_read_only(_table(home, "r"))
    assert {i for t, i in zip(main["task"][:], np.asarray(main["task_index"][:]).tolist()) if t == NEW_TASK} == {4}


# --- 5. two review branches: three-way merge -----------------------------------------------------


def test_two_review_branches_conflict_cell_by_cell_and_diff_is_what_merge_writes(tmp_path: Path,
                                                                               official_dataset: Path) -> None:
    home = tmp_path / "home"
    ingest(str(official_dataset), name="small", home=home, workers=1)
    first = _labels(tmp_path / "a.csv", [
        {"episode": 1, "column": "task", "value": "Wipe the table twice"},
        {"episode": 0, "frame_start": 0, "frame_end": 5, "column": "next.success", "value": "true"},
    ], header=("next.success:bool=false",))
    second = _labels(tmp_path / "b.csv", [
        {"episode": 1, "frame_start": 0, "frame_end": 10, "column": "task", "value": "Wipe the counter"},
        {"episode": 1, "frame_start": 10, "frame_end": 33, "column": "task", "value": "Wipe the table twice"},
        {"episode": 2, "frame_start": 0, "frame_end": 4, "column": "task", "value": "Open the drawer slowly"},
    ])
    relabel("small", first, "a", home)
    relabel("small", second, "b", home)
    assert merge("small", "a", home)["rows"] == 33 + 5
    report = diff("small", "b", home)
    # against b's base: b changed 37 task cells; 23 of them main already holds (a set the same text)
    assert (report["rows"], report["columns"], report["episodes"]) == (14, {"task": 14}, [1, 2])
    assert len(report["conflicts"]) == 10
    assert report["conflicts"][0] == {"episode": 1, "frame": 0, "column": "task", "base": "Wipe the table",
                                      "main": "Wipe the table twice", "branch": "Wipe the counter"}
    version = open_read_only(_table(home, "small")).version
    with pytest.raises(TableError) as error:
        merge("small", "b", home)
    assert "10 cells were changed on main and on the branch since the branch was made" in str(error.value)
    assert "episode 1 frame 0 column 'task': base 'Wipe the table', main 'Wipe the table twice', branch " \
           "'Wipe the counter'" in str(error.value)
    assert open_read_only(_table(home, "small")).version == version
    kept = merge("small", "b", home, prefer="main")
    assert (kept["rows"], kept["columns"]) == (4, {"task": 4})
    main = open_read_only(_table(home, "small"))
    task, episode = np.asarray(main["task"][:], dtype=object), np.asarray(main["episode_index"][:])
    assert set(task[episode == 1]) == {"Wipe the table twice"}
    assert list(task[episode == 2][:5]) == ["Open the drawer slowly"] * 4 + ["Open the drawer"]
    assert np.asarray(main["next.success"][:]).sum() == 5  # a's labels were not touched
    taken = merge("small", "b", home, prefer="branch")  # the conflicts that remain: episode 1 frames 0..9
    assert (taken["rows"], taken["columns"]) == (10, {"task": 10})
    assert diff("small", "b", home)["rows"] == 0


# --- 6. labels across a re-ingest ----------------------------------------------------------------


def test_a_reingest_reapplies_merged_labels_and_reports_what_it_could_not(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    home = tmp_path / "home"
    source = _source(tmp_path / "src")
    ingest(str(source), name="gen", home=home, workers=1)
    labels = _labels(tmp_path / "l.csv", [
        {"episode": 1, "column": "task", "value": NEW_TASK},
        {"episode": 1, "frame_start": 2, "frame_end": 10, "column": "next.success", "value": "true"},
        {"episode": 2, "column": "next.success", "value": "true"},
    ], header=("next.success:bool=false",))
    relabel("gen", labels, "b", home)
    merge("gen", "b", home)
    history = table_metadata(open_read_only(_table(home)))["label_sets"]
    sha256 = hashlib.sha256(labels.read_bytes()).hexdigest()
    assert [(h["merged_from"], h["files"]) for h in history] == [("b", [{"file": str(labels), "sha256": sha256}])]
    assert {(r["episode"], r["column"], r["frame_start"], r["frame_end"]) for r in history[0]["labels"]} == {
        (1, "task", 0, 11), (1, "next.success", 2, 10), (2, "next.success", 0, 8)}
    _source(source, (9, 7, 8))  # upstream: episode 1 now has 7 frames
    with caplog.at_level(logging.WARNING, logger="lerobot_assets"):
        result = ingest(str(source), name="gen", home=home, workers=1)
    assert result["changed"] == [1, 2]  # episode 2's global index moved
    reapplied = {(r["episode"], r["column"], r["frame_start"], r["frame_end"], r["frames"])
                 for r in result["labels"]["reapplied"]}
    assert reapplied == {(1, "task", 0, 11, 7), (1, "next.success", 2, 10, 5), (2, "next.success", 0, 8, 8)}
    lost = [(r["column"], r["missing_frames"]) for r in result["labels"]["not_reapplied"]]
    assert sorted(lost) == [("next.success", [7, 10]), ("task", [7, 11])]
    assert any("merged labels re-applied; 2 could not be:" in r.getMessage() for r in caplog.records)
    main = open_read_only(_table(home))
    episode = np.asarray(main["episode_index"][:])
    assert set(np.asarray(main["task"][:], dtype=object)[episode == 1]) == {NEW_TASK}
    success = np.asarray(main["next.success"][:])
    frames = np.asarray(main["frame_index"][:])
    assert sorted(frames[(episode == 1) & success]) == [2, 3, 4, 5, 6]
    assert success[episode == 2].all() and not success[episode == 0].any()
    assert len(set(np.asarray(main["task_index"][:])[episode == 1])) == 1
    assert _scan_vs_index(main) == []


# --- property: random sequences of writes --------------------------------------------------------

TEXTS = ("Clean the counter", "Fold the towel", "Wipe the table")
_OPS = st.one_of(
    st.tuples(st.just("relabel"), st.integers(0, 2), st.sampled_from(TEXTS), st.integers(0, 7), st.integers(1, 8)),
    st.tuples(st.just("merge"), st.sampled_from(PREFER)),
    st.tuples(st.just("snapshot")),
    st.tuples(st.just("reingest"), st.integers(0, 2)),
    st.tuples(st.just("shrink"), st.integers(3, 7)),
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _source(tmp_path_factory.mktemp("pristine") / "src")


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(_OPS, min_size=2, max_size=5))
@example(ops=[("relabel", 2, "Fold the towel", 2, 6), ("snapshot",), ("merge", "branch"), ("reingest", 2), ("shrink", 4)])
def test_random_writes_keep_indexes_exact_the_loader_whole_and_labels_held(pristine: Path, ops: list[tuple]) -> None:
    """After any sequence: indexed queries equal a scan, the loader reads every row, and every merged label
    holds (the last merge of a cell wins) or was listed as not re-applied by the re-ingest that dropped its
    frames (``shrink``: the last episode upstream loses frames)."""
    root = Path(tempfile.mkdtemp(prefix="labels-prop-"))
    try:
        source, home = root / "src", root / "home"
        shutil.copytree(pristine, source)
        ingest(str(source), name="gen", home=home, workers=1)
        branches: list[str] = []
        lengths, lost = list(LENGTHS), set()
        for n, op in enumerate(ops):
            if op[0] == "relabel":
                _, episode, text, start, length = op
                start = start if start < lengths[episode] else 0
                labels = _labels(root / f"l{n}.csv", [
                    {"episode": episode, "column": "task", "value": text},
                    {"episode": episode, "frame_start": start, "frame_end": min(start + length, lengths[episode]),
                     "column": "next.success", "value": "true"},
                ], header=("next.success:bool=false",))
                relabel("gen", labels, f"b{n}", home)
                branches.append(f"b{n}")
            elif op[0] == "merge" and branches:
                try:
                    merge("gen", branches.pop(0), home, prefer=op[1])
                except TableError as exc:  # main re-ingested since the branch was made: refused, nothing written
                    assert "replaced or removed rows since the branch was made" in str(exc)
            elif op[0] == "snapshot":
                snapshot("gen", home=home)
            elif op[0] == "reingest":
                shift_actions(source, [op[1]])
                result = ingest(str(source), name="gen", home=home, workers=1)
                assert result["changed"] == [op[1]] and result["labels"]["not_reapplied"] == []
            elif op[0] == "shrink":
                lengths[2] = op[1]
                _source(source, tuple(lengths))  # also undoes earlier action edits: those episodes change back
                result = ingest(str(source), name="gen", home=home, workers=1)
                for label in result["labels"]["not_reapplied"]:
                    assert label["episode"] == 2 and label["missing_frames"][0] == lengths[2]
                    lost |= {(2, f, label["column"]) for f in range(*label["missing_frames"])}
        main = open_read_only(_table(home))
        assert _scan_vs_index(main) == []
        _assert_merged_labels_hold(main, lost)
        tag = snapshot("gen", tag="final", home=home)["tag"]
        assert _scan_vs_index(open_tag(_table(home), tag)) == []
        data = SnapshotDataset("gen", tag, home=home)
        assert len(data) == len(main) == sum(lengths)
        assert sum(len(b["index"]) for b in DataLoader(data, batch_size=32, collate_fn=collate)) == len(main)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _assert_merged_labels_hold(main, lost: set[tuple[int, int, str]]) -> None:
    """Replay main's label history (merged cells, oldest first) and compare with the table; a cell whose
    frame no longer exists must be among those an ingest reported as not re-applied (``lost``)."""
    expected: dict[tuple[int, int, str], object] = {}
    for entry in table_metadata(main).get("label_sets", []):
        for label in entry["labels"]:
            for frame in range(label["frame_start"], label["frame_end"]):
                expected[(label["episode"], frame, label["column"])] = label["value"]
    keys = {(int(e), int(f)): row for row, (e, f) in
            enumerate(zip(np.asarray(main["episode_index"][:]), np.asarray(main["frame_index"][:])))}
    columns = {name: np.asarray(main[name][:], dtype=object) for name in {c for _, _, c in expected}}
    gone = {cell for cell in expected if cell[:2] not in keys}
    assert gone <= lost
    held = {cell: columns[cell[2]][keys[cell[:2]]] for cell in expected if cell not in gone}
    assert held == {cell: value for cell, value in expected.items() if cell not in gone}
    if "task" in columns:  # task_index follows task: one index per text
        pairs = set(zip(columns["task"], np.asarray(main["task_index"][:]).tolist()))
        assert len(pairs) == len({text for text, _ in pairs})


def test_every_label_format_can_declare_new_columns(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels = [{"episode": 0, "column": "next.success", "value": "true"}]
    expected = {"next.success": ColumnSpec("next.success", "bool", False)}
    csv_file = read_label_file(_labels(tmp_path / "l.csv", labels, header=("next.success:bool=false",)))
    (tmp_path / "l.json").write_text(json.dumps({"new_columns": ["next.success:bool=false"], "labels": labels}))
    table = pa.Table.from_pylist(labels).replace_schema_metadata({"new_columns": json.dumps(["next.success:bool=false"])})
    pq.write_table(table, tmp_path / "l.parquet")
    for path in (tmp_path / "l.json", tmp_path / "l.parquet"):
        assert read_label_file(path) == csv_file
    assert csv_file.columns == expected and csv_file.labels[0].line == 3
    for spec, problem in (("next.success:boolean=false", "type 'boolean' is not one of"),
                          ("next.success:bool=maybe", "default 'maybe': expected true or false"),
                          ("9lives:int64=0", "use a letter")):
        with pytest.raises(LabelError, match=problem):
            read_label_file(_labels(tmp_path / "bad.csv", labels, header=(spec,)))


@pytest.mark.parametrize("first, second, clash", [
    ("next.flag:int64=0", "next.flag:float32=0.5", "column 'next.flag' is int64 on main but float32 on the branch"),
    # the second branch's default would be dropped: every row it left unlabelled would read main's false
    ("next.flag:bool=false", "next.flag:bool=true", "column 'next.flag' has default False on main but True on the branch"),
])
def test_a_column_two_branches_declared_differently_is_refused_at_merge(first: str, second: str, clash: str,
                                                                       tmp_path: Path, official_dataset: Path) -> None:
    home = tmp_path / "home"
    ingest(str(official_dataset), name="small", home=home, episodes=[0], workers=1)
    value = "false" if first.endswith("false") else "1"
    labels = _labels(tmp_path / "l.csv", [{"episode": 0, "frame_start": 0, "frame_end": 3, "column": "next.flag",
                                           "value": value}])
    relabel("small", labels, "first", home, new_columns=[first])
    relabel("small", labels, "second", home, new_columns=[second])
    merge("small", "first", home)
    version = open_read_only(_table(home, "small")).version
    assert diff("small", "second", home)["type_clashes"] == [clash]
    with pytest.raises(TableError, match=clash):
        merge("small", "second", home, prefer="branch")
    assert open_read_only(_table(home, "small")).version == version


def test_the_reapply_line_lists_lost_labels_only_when_there_are_any() -> None:
    held = {"episode": 1, "column": "task", "frame_start": 0, "frame_end": 3, "frames": 4}
    assert describe_reapplied({"reapplied": [held], "not_reapplied": []}) == "1 merged labels re-applied"
    lost = {"episode": 1, "column": "task", "missing_frames": [3, 3]}
    assert describe_reapplied({"reapplied": [], "not_reapplied": [lost]}) == f"0 merged labels re-applied; 1 could not be: {[lost]}"
