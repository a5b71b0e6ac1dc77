"""Labels that hold (issue 21): merges safe for rows a branch never saw, indexes that answer as a scan
after every write, declared label columns, three-way merges, and labels re-applied by re-ingests."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lerobot_assets.errors import TableError
from lerobot_assets.home import Home
from lerobot_assets.launch import ingest, snapshot
from lerobot_assets.relabel_assets import diff, merge, relabel
from lerobot_assets.synthetic import generate_dataset
from lerobot_assets.table import open_read_only, open_tag
from lerobot_assets.training import SnapshotDataset, collate

from .test_relabel import _write_csv

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
    return Home(home).dataset_source(name).table
