"""Faults: a writer killed mid-write, and many writers of one table at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import deeplake
import numpy as np
import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from lerobot_assets.errors import LeRobotAssetsError, TableError
from lerobot_assets.launch import _worker_context, info, ingest, snapshot
from lerobot_assets.synthetic import generate_dataset, shift_actions
from lerobot_assets.table import episode_versions, open_read_only

# Runs a real ingest in a child process, through the real Deeplake table, but pauses at the commit that
# follows an episode's delete + append, so the test can SIGKILL it at the worst moment.
# Arguments: source, home, marker file[, tables root].
_KILLABLE_INGEST = textwrap.dedent(
    """
    import sys, time
    import lerobot_assets.assets as assets
    from lerobot_assets.launch import ingest

    real_replace = assets.replace_episode

    class PausingAtCommit:
        def __init__(self, ds):
            self._ds = ds
        def __getattr__(self, name):
            return getattr(self._ds, name)
        def __getitem__(self, key):
            return self._ds[key]
        def __len__(self):
            return len(self._ds)
        def commit(self, message=None):
            with open(sys.argv[3], "w") as marker:
                marker.write(str(len(self._ds)))
            time.sleep(600)

    assets.replace_episode = lambda ds, *a, **k: real_replace(PausingAtCommit(ds), *a, **k)
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


def test_sigkill_during_episode_write_keeps_last_commit(tmp_path: Path) -> None:
    source = generate_dataset(tmp_path / "src", episode_lengths=(20, 25, 15), cameras=("front",), codec="libx264",
                              episodes_per_file=1)
    home = tmp_path / "home"
    ingest(str(source), name="robot", home=home, workers=1)
    snapshot("robot", tag="before", home=home)
    before = info("robot", home=home)
    old_actions = _rows(before["table"])["action"]

    shift_actions(source, [1])  # upstream change: episode 1 must be replaced (delete + append + commit)
    marker = tmp_path / "at-commit"
    log = (tmp_path / "child.log").open("w")  # a file, not a pipe: a full pipe would block the child
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLABLE_INGEST, str(source), str(home), str(marker)],
        stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
    )
    try:
        _wait_for(marker, child)
        assert int(marker.read_text()) == sum((20, 25, 15))  # deleted 25 rows and appended 25, uncommitted
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)

    after = info("robot", home=home)
    assert (after["version"], after["rows"], after["tags"]) == (before["version"], before["rows"], before["tags"])
    assert np.array_equal(_rows(after["table"])["action"], old_actions)  # no partial episode visible

    instance = DagsterInstance.from_config(str(home / "dagster"))
    (killed,) = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED]))
    assert killed.job_name == "ingest_episodes" and killed.tags["launched-by"] == "lerobot-assets-cli"
    # the next command-line start marks the killed process's run failed; the dead writer's lock is gone
    cli = [sys.executable, "-m", "lerobot_assets.cli", "ingest", str(source), "--name", "robot", "--home", str(home)]
    done = subprocess.run([*cli, "--workers", "1", "-q"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert instance.get_run_by_id(killed.run_id).status == DagsterRunStatus.FAILURE
    rerun = json.loads(done.stdout.strip().splitlines()[-1])
    assert rerun["materialized"] == [1] and rerun["rows"] == before["rows"]
    new_actions = _rows(rerun["table"])["action"]
    episode = _rows(rerun["table"])["episode_index"]
    assert np.allclose(new_actions[episode == 1], old_actions[episode == 1] + 1.0)
    assert np.array_equal(new_actions[episode != 1], old_actions[episode != 1])


def test_a_table_being_created_holds_no_recorded_episode(tmp_path: Path) -> None:
    """Between another run's create and its first commit the table has no columns: a run checking
    whether its episode is unchanged must see no episode there, not fail on the missing column."""
    url = str(tmp_path / "table")
    deeplake.create(url)
    assert episode_versions(open_read_only(url)) == {}


@pytest.mark.parametrize("mode", ["4 worker processes", "two runs at once"])
def test_concurrent_writers_equal_a_serial_ingest(mode: str, tmp_path: Path) -> None:
    lengths = (9, 12, 8, 11, 10, 7, 13, 9)
    source = generate_dataset(tmp_path / "src", episode_lengths=lengths, cameras=("front", "wrist"),
                              codec="libx264", episodes_per_file=2)
    serial = ingest(str(source), name="robot", home=tmp_path / "serial", workers=1)
    home = tmp_path / "concurrent"
    if mode == "4 worker processes":
        result = ingest(str(source), name="robot", home=home, workers=4)
        assert result["added"] == list(range(8))
    else:
        script = "import sys; from lerobot_assets.launch import ingest, parse_episodes; " \
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


def _episode_run_pids(home: Path) -> dict[int, int]:
    """{episode: pid of the process that executed its run}, from Dagster's engine events."""
    instance = DagsterInstance.from_config(str(home / "dagster"))
    pids = {}
    for run in instance.get_runs():
        episode = run.tags.get("dagster/partition/episode")
        for entry in instance.all_logs(run.run_id):
            if episode is not None and entry.dagster_event and entry.dagster_event.event_type_value == "ENGINE_EVENT":
                pids[int(episode)] = int(entry.dagster_event.event_specific_data.metadata["pid"].text)
    return pids


def test_this_process_and_a_worker_share_the_episodes_and_report_failures(tmp_path: Path) -> None:
    """With 2 workers, this process runs episodes too: both take episodes until none is left; an
    episode that fails (a truncated video) is reported with its file, wherever it ran, and the rest land."""
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
    pids = _episode_run_pids(home)
    assert sorted(pids) == list(range(6))
    assert os.getpid() in pids.values() and len(set(pids.values())) == 2


def test_with_other_threads_running_workers_are_spawned_not_forked(tmp_path: Path) -> None:
    """A thread of an embedding program could hold a lock that a forked child would inherit held:
    with one running, workers are spawned (and import everything themselves); the episodes land."""
    assert _worker_context().get_start_method() == ("fork" if sys.platform.startswith("linux") else "spawn")
    lengths = (9, 12, 8, 11)
    source = generate_dataset(tmp_path / "src", episode_lengths=lengths, cameras=("front",), codec="libx264",
                              episodes_per_file=1)
    home = tmp_path / "home"
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert _worker_context().get_start_method() == "spawn"
        result = ingest(str(source), name="robot", home=home, workers=2)
    finally:
        stop.set()
        other.join()
    assert result["rows"] == sum(lengths) and result["episodes"] == [0, 1, 2, 3]
    pids = _episode_run_pids(home)
    assert os.getpid() in pids.values() and len(set(pids.values())) == 2


def _kill_first_worker(parent: int, killed: list[int]) -> None:
    """Kill the first worker as soon as it has loaded the pipeline: a child of ``parent`` started by
    multiprocessing with Deeplake mapped, not a short-lived helper process (Dagster's compute log
    capture forks some, which run another program). (This killer is a thread of ``parent``, so the
    ingest spawns its worker rather than forking it: see ``_worker_context``.)"""
    deadline = time.monotonic() + 120
    while not killed and time.monotonic() < deadline:
        for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
            try:
                spawned = b"multiprocessing" in Path(f"/proc/{child}/cmdline").read_bytes()
                is_worker = spawned and "deeplake" in Path(f"/proc/{child}/maps").read_text()
            except OSError:  # a process that has exited meanwhile
                continue
            if is_worker:
                os.kill(int(child), signal.SIGKILL)
                killed.append(int(child))
                return
        time.sleep(0.01)


@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(), reason="needs Linux /proc children lists")
def test_a_killed_worker_fails_the_ingest_without_hanging_and_a_rerun_completes(tmp_path: Path) -> None:
    """A worker killed (here as it starts) stops the ingest with an error that says what to do, instead
    of hanging; the table holds whole episodes only, and a re-run completes it."""
    lengths = (9, 12, 8, 11, 10, 7)
    source = generate_dataset(tmp_path / "src", episode_lengths=lengths, cameras=("front",), codec="libx264",
                              episodes_per_file=1)
    home = tmp_path / "home"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_first_worker, args=(os.getpid(), killed))
    killer.start()
    try:
        with pytest.raises(LeRobotAssetsError, match=r"robot: a worker process failed \(BrokenProcessPool: .*run the ingest again") as failed:
            ingest(str(source), name="robot", home=home, workers=2)
    finally:
        killer.join()
    assert killed and isinstance(failed.value.__cause__, BrokenProcessPool)
    try:
        landed = _rows(info("robot", home=home)["table"])["episode_index"]
    except TableError:  # the worker died before any episode was written
        landed = np.array([], dtype=np.int64)
    episodes, counts = np.unique(landed, return_counts=True)
    assert [int(n) for n in counts] == [lengths[e] for e in episodes]
    assert ingest(str(source), name="robot", home=home, workers=1)["rows"] == sum(lengths)


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
    from lerobot_assets.home import Home

    from .hub_server import HubServer

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
    assert Home(home).registered() == []
    assert DagsterInstance.from_config(str(home / "dagster")).get_dynamic_partitions("dataset") == []
    assert not (home / "tables" / "tiny").exists()
