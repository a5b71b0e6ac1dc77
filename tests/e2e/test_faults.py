"""Faults: a writer killed mid-write, and many writers of one table at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import deeplake
import numpy as np
import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter

from lerobot_assets.core.errors import LeRobotAssetsError
from lerobot_assets.core.table.access import open_read_only
from lerobot_assets.core.table.metadata import episode_versions
from lerobot_assets.runtime.commands import info, ingest, snapshot
from lerobot_assets.testing.synthetic import generate_dataset

from tests.support.datasets import shift_actions

# Runs a real ingest in a child process, through the real Deeplake table, but pauses at the run's commit
# (after its episodes' deletes + appends), so the test can SIGKILL it at the worst moment.
# Arguments: source, home, marker file[, tables root].
_KILLABLE_INGEST = textwrap.dedent(
    """
    import sys, time
    import lerobot_assets.core.table.writer as table
    from lerobot_assets.runtime.commands import ingest

    def pausing_commit(self, message):
        with open(sys.argv[3], "w") as marker:
            marker.write(str(len(self.ds)))
        time.sleep(600)

    table.RunWriter._commit = pausing_commit
    ingest(sys.argv[1], name="robot", home=sys.argv[2], tables=(sys.argv[4:] or [None])[0], workers=1)
    """
)


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"child exited early with code {process.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError("child never reached the commit")
        time.sleep(0.05)


def _rows(url: str) -> dict[str, np.ndarray]:
    ds = open_read_only(url)
    order = np.argsort(np.asarray(ds["index"][:]))
    columns = {c.name: c for c in ds.schema.columns}
    out = {name: np.asarray(ds[name][:])[order] for name in columns if not name.startswith("observation.images.")}
    for name in columns:
        if name.startswith("observation.images."):
            out[name] = np.array([ds[name].get_bytes(int(i)) for i in order], dtype=object)
    return out


@pytest.mark.parametrize("changed", [[1], [0, 2]], ids=["one episode", "two episodes of one run"])
def test_sigkill_during_episode_write_keeps_last_commit(tmp_path: Path, changed: list[int]) -> None:
    """A run's episodes are committed together: killed before that commit, none of them is visible,
    and the next run writes them all."""
    source = generate_dataset(tmp_path / "src", episode_lengths=(20, 25, 15), cameras=("front",), codec="libx264",
                              episodes_per_file=1)
    home = tmp_path / "home"
    ingest(str(source), name="robot", home=home, workers=1)
    snapshot("robot", tag="before", home=home)
    before = info("robot", home=home)
    old_actions = _rows(before["table"])["action"]
    commits = len(open_read_only(before["table"]).history)

    shift_actions(source, changed)  # upstream change: these episodes must be replaced (delete + append, one commit)
    marker = tmp_path / "at-commit"
    log = (tmp_path / "child.log").open("w")  # a file, not a pipe: a full pipe would block the child
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLABLE_INGEST, str(source), str(home), str(marker)],
        stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
    )
    try:
        _wait_for(marker, child)
        assert int(marker.read_text()) == sum((20, 25, 15))  # each changed episode deleted and appended, uncommitted
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)

    after = info("robot", home=home)
    assert (after["version"], after["rows"], after["tags"]) == (before["version"], before["rows"], before["tags"])
    assert np.array_equal(_rows(after["table"])["action"], old_actions)  # no partial episode visible

    instance = DagsterInstance.from_config(str(home / "dagster"))
    (killed,) = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED]))
    assert killed.job_name == "robot__ingest_episodes" and killed.tags["launched-by"] == "lerobot-assets-cli"
    # the next command-line start marks the killed process's run failed; the dead writer's lock is gone
    cli = [sys.executable, "-m", "lerobot_assets.cli", "ingest", str(source), "--name", "robot", "--home", str(home)]
    done = subprocess.run([*cli, "--workers", "1", "-q"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert instance.get_run_by_id(killed.run_id).status == DagsterRunStatus.FAILURE
    rerun = json.loads(done.stdout.strip().splitlines()[-1])
    assert rerun["materialized"] == changed and rerun["rows"] == before["rows"]
    new_actions = _rows(rerun["table"])["action"]
    episode = _rows(rerun["table"])["episode_index"]
    shifted = np.isin(episode, changed)
    assert np.allclose(new_actions[shifted], old_actions[shifted] + 1.0)
    assert np.array_equal(new_actions[~shifted], old_actions[~shifted])
    assert len(open_read_only(rerun["table"]).history) == commits + 1  # the rerun's one commit


def test_a_table_being_created_holds_no_recorded_episode(tmp_path: Path) -> None:
    """Between another run's create and its first commit the table has no columns: a run checking
    whether its episode is unchanged must see no episode there, not fail on the missing column."""
    url = str(tmp_path / "table")
    deeplake.create(url)
    assert episode_versions(open_read_only(url)) == {}


@pytest.mark.parametrize("mode", ["4 decoding threads", "two runs at once"])
def test_concurrent_writers_equal_a_serial_ingest(mode: str, tmp_path: Path) -> None:
    lengths = (9, 12, 8, 11, 10, 7, 13, 9)
    source = generate_dataset(tmp_path / "src", episode_lengths=lengths, cameras=("front", "wrist"),
                              codec="libx264", episodes_per_file=2)
    serial = ingest(str(source), name="robot", home=tmp_path / "serial", workers=1)
    home = tmp_path / "concurrent"
    if mode == "4 decoding threads":
        result = ingest(str(source), name="robot", home=home, workers=4)
        assert result["added"] == list(range(8))
    else:
        script = "import sys; from lerobot_assets.runtime.commands import ingest, parse_episodes; " \
                 "ingest(sys.argv[1], name='robot', home=sys.argv[2], episodes=parse_episodes(sys.argv[3]), workers=1)"
        logs = [tmp_path / f"run{i}.log" for i in range(2)]
        children = [
            subprocess.Popen([sys.executable, "-c", script, str(source), str(home), episodes],
                             stdout=subprocess.DEVNULL, stderr=log.open("w"))
            for episodes, log in zip(("0-4", "3-7"), logs)  # episodes 3 and 4 are written by both runs
        ]
        for child, log in zip(children, logs):
            assert child.wait(timeout=300) == 0, log.read_text()[-3000:]
        result = info("robot", home=home)
    assert result["rows"] == sum(lengths)
    expected, actual = _rows(serial["table"]), _rows(result["table"])
    assert expected.keys() == actual.keys()
    for name in expected:
        assert np.array_equal(expected[name], actual[name]), name


def test_a_failing_episode_is_reported_with_its_file_and_the_rest_land_and_are_recorded(tmp_path: Path) -> None:
    """An episode that fails (a truncated video) in a run of several is reported with the user's file;
    the others land in the table and, after the run is retried without it, are recorded in Dagster."""
    lengths = (9, 12, 8, 11, 10, 7)
    source = generate_dataset(tmp_path / "src", episode_lengths=lengths, cameras=("front",), codec="libx264",
                              episodes_per_file=1, files_per_chunk=10)
    video = next((source / "videos").rglob("file-003.mp4"))
    video.write_bytes(video.read_bytes()[:2000])
    home = tmp_path / "home"
    with pytest.raises(LeRobotAssetsError, match=r"1 of 6 episodes failed: episode 3: .*file-003\.mp4"):
        ingest(str(source), name="robot", home=home, workers=2)
    table = info("robot", home=home)
    assert table["episodes"] == [0, 1, 2, 4, 5]
    assert table["rows"] == sum(lengths) - lengths[3]
    instance = DagsterInstance.from_config(str(home / "dagster"))
    records = instance.fetch_materializations(AssetKey(["robot", "deeplake_table"]), limit=50).records
    assert {r.asset_materialization.partition for r in records} == {"000000", "000001", "000002", "000004", "000005"}
    # the dataset run, the range 0-5 (failed: nothing recorded), then the retries of 0-2 and 4-5
    assert sorted(run.status.value for run in instance.get_runs()) == ["FAILURE", "SUCCESS", "SUCCESS", "SUCCESS"]


def test_ctrl_c_stops_the_ingest_within_seconds_and_leaves_no_run_started(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the command's process group, as a terminal sends it) during the episodes
    stops the ingest in seconds: no process is left behind and its run is not left STARTED."""
    source = generate_dataset(tmp_path / "src", episode_lengths=[120] * 12, cameras=("front", "wrist"), height=240,
                              width=320, codec="libx264", episodes_per_file=1)
    home = tmp_path / "home"
    cli = [sys.executable, "-m", "lerobot_assets.cli", "ingest", str(source), "--name", "robot", "--home", str(home)]
    log = tmp_path / "cli.log"
    child = subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True)
    deadline = time.monotonic() + 300
    while "decoded" not in log.read_text():
        assert child.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the ingest never started decoding"
        time.sleep(0.1)
    os.killpg(child.pid, signal.SIGINT)
    started = time.monotonic()
    code = child.wait(timeout=60)
    stopped = time.monotonic() - started
    assert code != 0 and stopped < 15, (code, stopped)
    assert subprocess.run(["pgrep", "-g", str(child.pid)], capture_output=True).stdout == b""  # nothing left in its group
    instance = DagsterInstance.from_config(str(home / "dagster"))
    episodes = [run for run in instance.get_runs() if run.job_name == "robot__ingest_episodes"]
    assert episodes and all(run.status in (DagsterRunStatus.CANCELED, DagsterRunStatus.FAILURE) for run in episodes), [
        run.status for run in episodes
    ]


_DISK_FULL = textwrap.dedent(
    """
    import resource, signal, sys
    from lerobot_assets.cli import main
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, like a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
    sys.exit(main(["ingest", sys.argv[1], "--name", "robot", "--home", sys.argv[2], "--workers", "1"]))
    """
)


def test_failing_writes_give_a_clear_error_and_keep_the_table(tmp_path: Path) -> None:
    source = generate_dataset(tmp_path / "src", episode_lengths=(10, 12), cameras=("front",), codec="libx264",
                              episodes_per_file=1)
    home = tmp_path / "home"
    ingest(str(source), name="robot", home=home, episodes=[0], workers=1)
    before = info("robot", home=home)
    child = subprocess.run([sys.executable, "-c", _DISK_FULL, str(source), str(home)], capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == 1
    last = child.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "I/O error" in last, last
    after = info("robot", home=home)
    assert (after["version"], after["rows"], after["episodes"]) == (before["version"], before["rows"], [0])
    assert ingest(str(source), name="robot", home=home, workers=1)["rows"] == 22  # space back: it completes


def test_failed_first_download_leaves_nothing_registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lerobot_assets.runtime.home import Home
    from lerobot_assets.runtime.registry import registry_of

    from tests.support.hub_server import HubServer

    repo = generate_dataset(tmp_path / "repo", episode_lengths=(5,), cameras=("front",), codec="libx264")
    subprocess.run(["git", "-C", str(repo), "init", "-q"], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@e.com", "-c", "user.name=t", "commit", "-qm", "d"],
                   check=True)
    home = tmp_path / "home"
    with HubServer({"lerobot/tiny": repo}) as hub:
        hub.fail_status = 500
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", hub.url)  # what HF_ENDPOINT sets at import
        with pytest.raises(LeRobotAssetsError, match="cannot resolve Hub repo 'lerobot/tiny'"):
            ingest("lerobot/tiny", name="tiny", home=home, workers=1)
    assert registry_of(Home(home)).registered() == []
    assert DagsterInstance.from_config(str(home / "dagster")).get_dynamic_partitions("dataset") == []
    assert not (home / "tables" / "tiny").exists()
