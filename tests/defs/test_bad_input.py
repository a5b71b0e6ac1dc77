"""Bad input gets an error naming dataset, episode, file and expectation; the table stays as it was."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import AssetCheckKey, DagsterInstance

from lerobot_assets.core.errors import LeRobotAssetsError
from lerobot_assets.core.table.access import open_read_only
from lerobot_assets.defs.partitions import dataset_asset_key
from lerobot_assets.runtime.commands import info, ingest, parse_episodes, snapshot
from lerobot_assets.testing.synthetic import generate_dataset

LENGTHS = (10, 12, 9)
EP1_DATA = "data/chunk-000/file-001.parquet"
EP1_VIDEO = "videos/observation.images.wrist/chunk-000/file-001.mp4"


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, dict]:
    """A plain-directory dataset (one file per episode), ingested and tagged once for all cases."""
    tmp = tmp_path_factory.mktemp("bad")
    pristine = generate_dataset(tmp / "pristine", episode_lengths=LENGTHS, cameras=("front", "wrist"),
                                codec="libx264", episodes_per_file=1, files_per_chunk=10)
    source = tmp / "src"
    shutil.copytree(pristine, source)
    home = tmp / "home"
    ingest(str(source), name="robot", home=home, workers=1)
    snapshot("robot", tag="good", home=home)
    return pristine, source, home, info("robot", home=home)


@pytest.fixture
def base(ingested: tuple[Path, Path, Path, dict]) -> Iterator[tuple[Path, Path, dict]]:
    """The ingested dataset; its source directory is restored after each case."""
    pristine, source, home, state = ingested
    yield source, home, state
    shutil.rmtree(source)
    shutil.copytree(pristine, source)


def _edit_parquet(path: Path, edit: Callable[[dict], None]) -> None:
    table = pq.read_table(path)
    columns = {name: table[name].to_pylist() for name in table.column_names}
    edit(columns)
    pq.write_table(pa.table(columns, schema=table.schema), path)


def _edit_info(source: Path, edit: Callable[[dict], None]) -> None:
    path = source / "meta" / "info.json"
    info_json = json.loads(path.read_text())
    edit(info_json)
    path.write_text(json.dumps(info_json))


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _shorten_video(path: Path, keep_frames: int) -> None:
    """Remux only the first ``keep_frames`` packets: a valid video, shorter than its episode."""
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(path)) as src, av.open(str(tmp), "w") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for number, packet in enumerate(src.demux(src.streams.video[0])):
            if packet.dts is None or number >= keep_frames:
                continue
            packet.stream = stream
            dst.mux(packet)
    tmp.replace(path)


def _set_row(column: str, row: int, value) -> Callable[[dict], None]:
    def edit(columns: dict) -> None:
        columns[column][row] = value

    return edit


def _swap_timestamps(columns: dict) -> None:
    columns["timestamp"][3], columns["timestamp"][4] = columns["timestamp"][4], columns["timestamp"][3]


def _episode_length_plus_one(columns: dict) -> None:
    columns["length"] = [n + 1 for n in columns["length"]]


def _remove_dir(path: Path) -> None:
    for child in sorted(path.rglob("*"), reverse=True):
        child.unlink() if child.is_file() else child.rmdir()
    path.rmdir()


CASES: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "truncated mp4": (lambda s: _truncate(s / EP1_VIDEO), ("episode 1", "file-001.mp4", "corrupt or truncated")),
    "corrupt mp4 header": (
        lambda s: (s / EP1_VIDEO).write_bytes(b"\0garbage" * 64 + (s / EP1_VIDEO).read_bytes()[512:]),
        ("episode 1", "file-001.mp4", "cannot decode"),
    ),
    "video shorter than episode": (
        lambda s: _shorten_video(s / EP1_VIDEO, keep_frames=6),
        ("episode 1", "file-001.mp4", "no frame at", "shorter than the episode"),
    ),
    "camera without video files": (
        lambda s: _remove_dir(s / "videos" / "observation.images.wrist"),
        ("episode 0", "observation.images.wrist", "video file is missing"),
    ),
    "truncated parquet": (
        lambda s: _truncate(s / EP1_DATA),
        ("episode 1", "file-001.parquet", "cannot be read as parquet"),
    ),
    "vector length differs from info.json": (
        lambda s: _edit_info(s, lambda i: i["features"]["observation.state"].update(shape=[7])),
        ("episode 0", "file-000.parquet", "'observation.state'", "vectors of length 6", "declares shape [7]"),
    ),
    "column missing from parquet": (
        lambda s: _edit_info(s, lambda i: i["features"].update({"observation.velocity": {"dtype": "float32", "shape": [6]}})),
        ("episode 0", "file-000.parquet", "['observation.velocity']", "are missing"),
    ),
    "info.json missing": (lambda s: (s / "meta" / "info.json").unlink(), ("meta/info.json", "is missing")),
    "info.json invalid": (lambda s: (s / "meta" / "info.json").write_text("{not json"), ("info.json", "not valid JSON")),
    "unknown codebase_version": (
        lambda s: _edit_info(s, lambda i: i.update(codebase_version="v9.9")),
        ("info.json", "'v9.9' is not supported", "v3.0"),
    ),
    "fps of zero": (lambda s: _edit_info(s, lambda i: i.update(fps=0)), ("info.json", "fps is 0", "positive")),
    "length differs from rows": (  # info.json's total_frames agrees: the rows are what disagrees
        lambda s: (_edit_parquet(s / "meta/episodes/chunk-000/file-001.parquet", _episode_length_plus_one),
                   _edit_info(s, lambda i: i.update(total_frames=i["total_frames"] + 1))),
        ("episode 1", "file-001.parquet", "12 rows", "declares length 13"),
    ),
    "gap in frame_index": (
        lambda s: _edit_parquet(s / EP1_DATA, _set_row("frame_index", 3, 4)),
        ("episode 1", "file-001.parquet", "without gaps or repeats", "row 3 has 4, expected 3"),
    ),
    "non-increasing timestamps": (
        lambda s: _edit_parquet(s / EP1_DATA, _swap_timestamps),
        ("episode 1", "file-001.parquet", "timestamps must increase"),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_names_the_problem_and_loses_nothing(case: str, base: tuple[Path, Path, dict]) -> None:
    source, home, before = base
    corrupt, fragments = CASES[case]
    corrupt(source)
    with pytest.raises(LeRobotAssetsError) as failure:
        ingest(str(source), name="robot", home=home, workers=1)
    message = str(failure.value)
    for fragment in ("dataset 'robot'",) + fragments:
        assert fragment in message, (fragment, message)
    after = info("robot", home=home)
    assert (after["version"], after["rows"], after["tags"]) == (before["version"], before["rows"], before["tags"])
    assert after["episodes"] == [0, 1, 2]


def test_non_finite_values_are_stored_but_flagged(tmp_path: Path) -> None:
    source = generate_dataset(tmp_path / "src", episode_lengths=(8, 9), cameras=("front",), codec="libx264",
                              episodes_per_file=1)

    def poison(columns: dict) -> None:
        columns["observation.state"][2] = [float("nan")] + columns["observation.state"][2][1:]
        columns["action"][5] = [float("inf")] * 6

    _edit_parquet(source / "data/chunk-000/file-001.parquet", poison)
    home = tmp_path / "home"
    result = ingest(str(source), name="nan", home=home, workers=1)
    assert result["rows"] == 17
    ds = open_read_only(result["table"])
    rows = np.flatnonzero(np.asarray(ds["episode_index"][:]) == 1)
    state = np.asarray(ds["observation.state"][:])[rows]
    assert np.isnan(state[np.asarray(ds["frame_index"][:])[rows] == 2][0][0])
    instance = DagsterInstance.from_config(str(home / "dagster"))
    (record,) = instance.event_log_storage.get_asset_check_execution_history(
        AssetCheckKey(dataset_asset_key("nan", "telemetry_frame"), "finite_values"), limit=10
    )
    flagged = record.event.dagster_event.event_specific_data  # one result for the run's range of episodes
    assert not flagged.passed and flagged.metadata["episodes"].value == 2
    assert flagged.metadata["failed"].value == {  # episode 0 passed, episode 1 did not
        "1": {"non_finite": {"observation.state": {"rows": 1, "first_frame": 2}, "action": {"rows": 1, "first_frame": 5}}}
    }


@pytest.mark.parametrize(
    "name", ["../evil", "a/b", "x' OR 1=1 --", 'quote"d', "..", "", "SELECT * FROM t", "a" * 101]
)
def test_hostile_dataset_names_are_rejected(name: str, tmp_path: Path) -> None:
    source = generate_dataset(tmp_path / "src", episode_lengths=(5,), cameras=("front",), codec="libx264")
    home = tmp_path / "home"
    with pytest.raises(LeRobotAssetsError, match="invalid dataset name"):
        ingest(str(source), name=name, home=home, workers=1)
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # nothing written, inside the home or beside it
    assert not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("org/na'me", "neither an existing directory nor a Hub dataset repo id"),
        ("org/../../etc", "no such directory"),  # shaped like a path: never sent to the Hub
        ("org/name; rm -rf /", "no such directory"),
        ("org/a/b", "no such directory"),
        ("/no/such/dir", "no such directory: '/no/such/dir'"),
    ],
)
def test_hostile_or_unknown_sources_are_rejected(source: str, expected: str, tmp_path: Path) -> None:
    with pytest.raises(LeRobotAssetsError, match=re.escape(expected)):
        ingest(source, name="x", home=tmp_path / "home", workers=1)
    assert not (tmp_path / "home" / "datasets").exists()


def test_episode_list_syntax_errors() -> None:
    assert parse_episodes("0,3,7-9") == [0, 3, 7, 8, 9]
    for bad in ("1;DROP", "3-1", "a-b", "1,,x"):
        with pytest.raises(LeRobotAssetsError, match="invalid episode list"):
            parse_episodes(bad)
