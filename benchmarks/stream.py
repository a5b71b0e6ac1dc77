"""Samples per second streamed for training: SnapshotDataset against the alternatives, in one run.

Every loader yields batches of 32 shuffled samples with every camera decoded plus the telemetry,
through a DataLoader with 2 worker processes where the loader has workers. Outputs, each its own
table: full-size float32 in [0, 1] (LeRobot's), the same with ``delta_timestamps`` (two
observation frames and 50 future actions per sample), uint8, and (240, 320). The loaders:

- ``snapshot``: :class:`lerobot_assets.training.SnapshotDataset` on a tagged table, in that output;
- ``snapshot_s3``: the same table ingested into an S3-compatible server (moto, on 127.0.0.1), read
  with :class:`~lerobot_assets.training.ReadAheadBatches` in windows of 8 blocks of 32 consecutive
  samples (``WINDOWS``: a few range reads per window); ``snapshot_windows``: the local table read
  the same way; ``snapshot_s3_full_shuffle``: the S3 table with a full shuffle, read ahead by batch;
- ``deeplake``: Deeplake's own ``batches()`` over a shuffled view, which decodes the images itself;
- ``lerobot``: LeRobotDataset's way, seeking into the MP4 files and decoding per sample with PyAV
  into float32 (``lerobot_resize``: then an area resize to (240, 320), as a policy at that size would);
- ``jpeg_limit``: decoding the very JPEG bytes of the table, held in memory, into the same output:
  the cost of decoding alone, which SnapshotDataset can approach but not beat.

The dataset is written as lerobot writes it (AV1, a keyframe every 2 frames, 50 fps, 14 DOF).
Rounds interleave the loaders, in a rotated order, so that a busy machine slows all of them alike;
the median round is reported, with the CPU time the loader's processes used per sample (less
sensitive to other load), the S3 server's CPU time meanwhile, and the peak resident memory of each
worker (VmHWM read inside it, and how far it rose above the worker's size at start). Then the
workers' peak memory is compared on the table and on one holding its rows ``--memory-times`` times
over (local and on S3), the same number of batches read from each.

    python benchmarks/stream.py            # 12 to 20 minutes on the shared 2-core VM
    python benchmarks/stream.py --only "float32 at 240x320" --only "uint8 at 240x320"   # those outputs only
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import boto3
import deeplake
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lerobot_assets.core.lerobot.meta import DatasetMeta, read_dataset
from lerobot_assets.core.lerobot.telemetry import read_episode_telemetry
from lerobot_assets.core.table.registry import DatasetSource
from lerobot_assets.runtime.commands import info, ingest, open_snapshot, snapshot
from lerobot_assets.runtime.home import Home
from lerobot_assets.runtime.registry import registry_of
from lerobot_assets.testing.synthetic import generate_dataset
from lerobot_assets.training import TOLERANCE_S, ReadAheadBatches, SnapshotDataset, collate, delta_indices
from lerobot_assets.training.frames import IMAGE_DTYPES, decode_frames

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.s3_server import S3Server  # noqa: E402  (the repository's S3 test server)

CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
BATCH = 32
WORKERS = 2
NAME = "stream_bench"
TAG = "bench"
SMALL = (240, 320)
#: ReadAheadBatches windows for the S3 snapshot: 4 blocks of 16 consecutive samples per window. Small,
#: so that the 8-episode table has 8 windows per worker and the timed batches read their share of them
#: (with 256-sample windows every read of this table was done during the warm-up).
WINDOWS = {"window": 64, "block": 16}
#: The S3 server's process, whose CPU the S3 loaders cost too (it shares the cores).
SERVER_PIDS: list[int] = []
VALUES = ("observation.state", "action", "observation.effort", "timestamp", "frame_index", "episode_index", "index",
          "task_index")
#: Outputs measured, each a table of loaders: (mode, delta_timestamps?, SnapshotDataset options).
MODES = {
    "float32": (False, {}),
    "float32, 2 obs frames + 50 actions": (True, {}),
    "uint8": (False, {"image_dtype": "uint8"}),
    "float32 at 240x320": (False, {"image_size": SMALL}),
    "uint8 at 240x320": (False, {"image_dtype": "uint8", "image_size": SMALL}),
}
#: (what, (mode, loader) measured, (mode, loader) it is compared with, goal for the ratio of their rates).
GOALS = [
    ("float32 vs LeRobot-style", ("float32", "snapshot"), ("float32", "lerobot"), 3.0),
    ("float32 + windows vs LeRobot-style", ("float32, 2 obs frames + 50 actions", "snapshot"),
     ("float32, 2 obs frames + 50 actions", "lerobot"), 3.0),
    ("uint8 vs LeRobot-style (float32)", ("uint8", "snapshot"), ("float32", "lerobot"), 5.0),
    ("240x320 vs LeRobot-style + resize", ("float32 at 240x320", "snapshot"), ("float32 at 240x320", "lerobot_resize"),
     10.0),
    ("uint8 240x320 vs LeRobot-style + resize", ("uint8 at 240x320", "snapshot"),
     ("float32 at 240x320", "lerobot_resize"), None),
    *[(f"{mode} vs its limit", (mode, "snapshot"), (mode, "jpeg_limit"), 0.8) for mode in MODES],
    ("float32: S3 vs local, same windows", ("float32", "snapshot_s3"), ("float32", "snapshot_windows"), 0.8),
    ("uint8: S3 vs local, same windows", ("uint8", "snapshot_s3"), ("uint8", "snapshot_windows"), 0.8),
    ("float32: S3 windows vs local full shuffle", ("float32", "snapshot_s3"), ("float32", "snapshot"), 0.8),
    ("uint8: S3 windows vs local full shuffle", ("uint8", "snapshot_s3"), ("uint8", "snapshot"), 0.8),
    ("uint8: S3 full shuffle vs local", ("uint8", "snapshot_s3_full_shuffle"), ("uint8", "snapshot"), None),
    ("uint8: local windows vs full shuffle", ("uint8", "snapshot_windows"), ("uint8", "snapshot"), None),
    ("float32: snapshot vs Deeplake batches()", ("float32", "snapshot"), ("float32", "deeplake"), 3.0),
]


def window_deltas(fps: float) -> dict[str, list[float]]:
    """Two observation frames per camera and for the state, 50 actions ahead."""
    deltas: dict[str, list[float]] = {f"observation.images.{c}": [-1 / fps, 0.0] for c in CAMERAS}
    return deltas | {"observation.state": [-1 / fps, 0.0], "action": [i / fps for i in range(50)]}


@contextlib.contextmanager
def quiet(log: Path) -> Iterator[None]:
    """Send the encoder's and Dagster's chatter (written straight to fd 2) to ``log``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log, "a") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


class _Windows:
    """Rows of a sample's windows, clamped to its episode, and their padding masks, as LeRobot computes them."""

    def __init__(self, episode: np.ndarray, deltas: dict[str, list[float]] | None, fps: float) -> None:
        firsts = np.flatnonzero(np.r_[True, episode[1:] != episode[:-1]])
        lengths = np.diff(np.r_[firsts, len(episode)])
        self.start = np.repeat(firsts, lengths)
        self.end = self.start + np.repeat(lengths, lengths)
        self.offsets = delta_indices(deltas, fps) if deltas else {}

    def rows(self, key: str, i: int) -> np.ndarray:
        """The rows ``key`` reads for sample ``i``: one, or its window."""
        return np.clip(i + self.offsets[key], self.start[i], self.end[i] - 1) if key in self.offsets else np.array(i)

    def values(self, values: dict[str, np.ndarray], tasks: list[str], i: int) -> dict[str, Any]:
        """The telemetry part of an item, with the padding masks."""
        item: dict[str, Any] = {key: torch.from_numpy(np.array(v[self.rows(key, i)])) for key, v in values.items()}
        for key, offsets in self.offsets.items():
            wanted = i + offsets
            item[f"{key}_is_pad"] = torch.from_numpy((wanted < self.start[i]) | (wanted >= self.end[i]))
        return item | {"task": tasks[i]}


class InMemoryJpeg(Dataset):
    """The decoding floor: the table's JPEG bytes already in memory, decoded as SnapshotDataset decodes them."""

    def __init__(self, frames: dict[str, list[bytes]], values: dict[str, np.ndarray], tasks: list[str],
                 windows: _Windows, image_dtype: str = "float32", image_size: tuple[int, int] | None = None) -> None:
        self.frames, self.values, self.tasks, self.windows = frames, values, tasks, windows
        self.dtype, self.size = IMAGE_DTYPES[image_dtype], image_size

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        images = {}
        for camera, frames in self.frames.items():
            rows = np.stack([self.windows.rows(camera, i) for i in indices])
            decoded = decode_frames([frames[r] for r in rows.ravel()], self.dtype, self.size)
            images[camera] = decoded.view(*rows.shape, *decoded.shape[1:])
        return [
            {camera: frames[b] for camera, frames in images.items()} | self.windows.values(self.values, self.tasks, i)
            for b, i in enumerate(indices)
        ]


class LeRobotStyle(Dataset):
    """LeRobotDataset's access pattern: per sample, open each camera's MP4, seek, decode to the frame.

    As lerobot's PyAV path does: seek to the keyframe before the first wanted timestamp, convert
    every decoded frame to RGB until the last wanted one, keep the closest frames, as float32 in
    [0, 1]. With ``size``, the frames are then area-resized, as a policy training at that size would.
    """

    def __init__(self, root: Path, deltas: dict[str, list[float]] | None, size: tuple[int, int] | None = None) -> None:
        self.meta: DatasetMeta = read_dataset(root, "bench")
        tables = [read_episode_telemetry(self.meta, e) for e in sorted(self.meta.episodes)]
        self.values = {
            key: np.concatenate([np.stack(t[key].to_numpy(zero_copy_only=False)) for t in tables]) for key in VALUES
        }
        self.tasks = [self.meta.tasks[int(t)] for t in self.values["task_index"]]
        self.windows = _Windows(self.values["episode_index"], deltas, self.meta.fps)
        self.size = size

    def __len__(self) -> int:
        return len(self.tasks)

    def _frames(self, camera: str, episode: int, timestamps: np.ndarray) -> torch.Tensor:
        segment = self.meta.episode(episode).videos[camera]
        wanted = segment.from_timestamp + np.atleast_1d(timestamps)
        loaded, times = [], []
        with av.open(str(self.meta.root / segment.path)) as container:
            stream = container.streams.video[0]
            container.seek(int(wanted.min() / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                loaded.append(torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1))
                times.append(float(frame.pts * stream.time_base))
                if times[-1] >= wanted.max() - TOLERANCE_S:
                    break
        closest = np.abs(wanted[:, None] - np.array(times)[None, :]).argmin(axis=1)
        frames = torch.stack([loaded[k] for k in closest]).float().div_(255)
        if self.size is not None:
            frames = torch.nn.functional.interpolate(frames, size=self.size, mode="area")
        return frames if np.ndim(timestamps) else frames[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        episode = int(self.values["episode_index"][i])
        timestamps = self.values["timestamp"].astype(np.float64)
        item = {camera: self._frames(camera, episode, timestamps[self.windows.rows(camera, i)])
                for camera in self.meta.cameras}
        return item | self.windows.values(self.values, self.tasks, i)


def deeplake_batches(home: Path) -> Iterator[dict[str, torch.Tensor]]:
    """Deeplake's own loader: ``batches()`` of a randomly ordered view, images decoded by Deeplake."""
    view = open_snapshot(NAME, TAG, home).query("SELECT * ORDER BY RANDOM()")
    cameras = [f"observation.images.{c}" for c in CAMERAS]
    for batch in view.batches(BATCH):
        images = {c: torch.from_numpy(np.asarray(batch[c])).permute(0, 3, 1, 2).float().div_(255) for c in cameras}
        yield images | {k: torch.from_numpy(np.asarray(batch[k])) for k in VALUES} | {"task": batch["task"]}


class WorkerMemory(Dataset):
    """``dataset``, with each item telling the memory of the worker that built it, read inside the worker
    from /proc/self/status (``ru_maxrss`` would be the forking parent's peak): its peak RSS (VmHWM) and
    its private anonymous memory now (RssAnon: what it allocated, without the shared-memory batch
    buffers, whose number in flight varies from run to run), with both at the worker's start."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        read = getattr(self.dataset, "__getitems__", None)
        items = read(indices) if read else [self.dataset[i] for i in indices]
        status = _status_kb()
        memory = {"worker_peak_kb": status["VmHWM"], "worker_anon_kb": status["RssAnon"]}
        return [item | memory | _AT_START for item in items]


_AT_START: dict[str, int] = {}


def _status_kb() -> dict[str, int]:
    """This process's memory figures from /proc/self/status, in kB."""
    lines = Path("/proc/self/status").read_text().splitlines()
    return {key: int(value.split()[0]) for key, value in (line.split(":", 1) for line in lines) if value.endswith("kB")}


def _worker_started(_: int) -> None:
    """Reset the worker's peak to its resident memory at start (what it shares with the process it was
    forked from) and note that, so that the figures above it are what the worker itself came to hold."""
    Path("/proc/self/clear_refs").write_text("5")
    status = _status_kb()
    _AT_START.update(worker_started_kb=status["VmRSS"], worker_anon_started_kb=status["RssAnon"])


def loader(dataset: Dataset, collate_fn: Callable[[list[Any]], Any] | None = None,
           read_ahead: dict[str, int] | None = None) -> Callable[[], Iterator[Any]]:
    """A new shuffled DataLoader iterator over ``dataset`` on each call (``read_ahead``: with
    :class:`ReadAheadBatches` and these options), its items telling their worker's memory."""
    data = WorkerMemory(dataset)
    options = {"num_workers": WORKERS, "collate_fn": collate_fn, "worker_init_fn": _worker_started}
    if read_ahead is not None:
        batches = ReadAheadBatches(len(dataset), BATCH, num_workers=WORKERS, **read_ahead)
        return lambda: iter(DataLoader(data, batch_sampler=batches, **options))
    return lambda: iter(DataLoader(data, BATCH, shuffle=True, **options))


@dataclass(frozen=True)
class Measurement:
    """One loader's rate over one round (or the medians over all rounds)."""

    samples_per_s: float
    cpu_ms_per_sample: float  # main process and workers: what the loader costs, whatever else runs
    server_cpu_ms_per_sample: float  # the S3 server's CPU meanwhile (it runs on the same cores)
    worker_peak_rss_mb: float  # the largest VmHWM of its workers (0 without workers)
    worker_peak_growth_mb: float  # the largest peak of a worker above its resident memory at start
    worker_anon_growth_mb: float  # the most private anonymous memory a worker held above its start (per batch)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes ``pids`` (all their threads), from /proc."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def measure(make: Callable[[], Iterator[Any]], batches: int, budget_s: float) -> Measurement:
    """Throughput over ``batches`` batches, or fewer if they take longer than ``budget_s``.

    Warm-up, not counted: worker start-up and the batches the workers prefetched meanwhile (the
    first ``1 + 2 * WORKERS``), so that the rate is the steady one.
    """
    iterator = make()
    workers = getattr(iterator, "_workers", [])
    for _ in range(1 + 2 * len(workers)):
        next(iterator)
    pids = [os.getpid(), *(w.pid for w in workers)]
    cpu, server, started = cpu_seconds(pids), cpu_seconds(SERVER_PIDS), time.perf_counter()
    done, peak, growth, anon = 0, 0, 0, 0
    while done < batches and (done == 0 or time.perf_counter() - started < budget_s):
        batch = next(iterator)
        done += 1
        if isinstance(batch, dict) and "worker_started_kb" in batch:  # every item of a batch has the same figures
            peak = max(peak, int(batch["worker_peak_kb"][0]))
            growth = max(growth, int(batch["worker_peak_kb"][0] - batch["worker_started_kb"][0]))
            anon = max(anon, int(batch["worker_anon_kb"][0] - batch["worker_anon_started_kb"][0]))
    seconds, cpu = time.perf_counter() - started, cpu_seconds(pids) - cpu
    server = cpu_seconds(SERVER_PIDS) - server
    del iterator
    per_sample = 1e3 / (done * BATCH)
    return Measurement(done * BATCH / seconds, cpu * per_sample, server * per_sample, peak / 1024, growth / 1024,
                       anon / 1024)


def build(workdir: Path, episodes: int, length: int, tables: str | None = None) -> tuple[Path, Path]:
    """Generate the v3.0 dataset as lerobot writes it (AV1, g=2, 3 cameras 480x640, 50 fps, 14 DOF),
    ingest it (into ``tables``, default the home's; another home, anew, as the S3 server is new) and tag a snapshot."""
    source, home = workdir / "source", workdir / ("home" if tables is None else "home_s3")
    if tables is not None:
        shutil.rmtree(home, ignore_errors=True)
    with quiet(workdir / "build.log"):
        if not (source / "meta" / "info.json").is_file():
            generate_dataset(source, version="v3.0", episode_lengths=[length] * episodes, cameras=CAMERAS,
                             height=480, width=640, fps=50, state_dim=14, codec="libsvtav1", gop=2,
                             episodes_per_file=3)
        ingest(str(source), name=NAME, home=home, tables=tables, workers=2)
        if TAG not in info(NAME, home=home, tables=tables)["tags"]:
            snapshot(NAME, tag=TAG, home=home, tables=tables)
    if tables is not None:  # the loaders name only the home: list the S3 table in its own root's registry too
        registry_of(Home.at(home)).register(registry_of(Home.at(home, tables)).dataset_source(NAME))
    return source, home


def worker_memory(home: Path, batches: int, options: dict[str, Any]) -> tuple[int, Measurement]:
    """Rows, and the memory figures of SnapshotDataset's workers (:class:`Measurement`), over
    ``batches`` batches of the snapshot in ``home``; run in a fresh (spawned) process, whose
    workers then inherit no other table."""
    torch.set_num_threads(1)
    dataset = SnapshotDataset(NAME, TAG, home=home, image_dtype=options.get("image_dtype", "float32"))
    return len(dataset), measure(loader(dataset, collate, options.get("read_ahead")), batches, float("inf"))


def grown(home: Path, times: int, workdir: Path, s3: S3Server | None = None) -> Path:
    """A home whose table holds the snapshot's rows ``times`` over (episodes and ``index`` renumbered), tagged
    like it: a table ``times`` as large without generating and ingesting more video. With ``s3``, the table's
    files are uploaded to the S3 server and the home points there."""
    table = workdir / f"grown_x{times}" / NAME
    if not table.is_dir():
        shutil.copytree(info(NAME, home=home)["table"], table)
        ds = deeplake.open(str(table))
        rows, episodes = len(ds), int(np.max(ds["episode_index"][:])) + 1
        names = [column.name for column in ds.schema.columns]
        for k in range(1, times):
            for start in range(0, rows, 128):
                end = min(rows, start + 128)
                part = {c: ds[c].get_bytes(list(range(start, end))) if c.startswith("observation.images")
                        else ds[c][start:end] for c in names}
                part["index"] = np.asarray(part["index"]) + k * rows
                part["episode_index"] = np.asarray(part["episode_index"]) + k * episodes
                ds.append(part)
        ds.commit(f"the rows {times} times over")
        ds.tags[TAG].delete()
        ds.tag(TAG)
    url = str(table)
    if s3 is not None:
        url = s3_tables(s3, f"grown_x{times}/{NAME}")
        client = boto3.client("s3", endpoint_url=s3.url)
        for path in table.rglob("*"):
            if path.is_file():
                client.put_object(Bucket=s3.bucket, Key=f"grown_x{times}/{NAME}/{path.relative_to(table)}",
                                  Body=path.read_bytes())
    out = workdir / f"home_x{times}{'' if s3 is None else '_s3'}"
    registry_of(Home.at(out)).register(DatasetSource(NAME, str(workdir / "source"), "local", url))
    return out


def memory_by_table_size(homes: dict[str, dict[int, Path]], batches: int) -> None:
    """Peak RSS per worker on tables of different sizes (``homes``: local and S3 homes by episodes),
    the same number of batches read from each."""
    print(f"\npeak RSS per worker by table size ({1 + 2 * WORKERS} + {batches} batches of {BATCH}, {WORKERS} fork "
          "workers, each table in a fresh process):")
    spawn = multiprocessing.get_context("spawn")  # a pool of 1 fresh process (not daemonic: it starts workers)
    windows = {"image_dtype": "uint8", "read_ahead": WINDOWS}
    for what, store, options in [("float32", "local", {}), ("uint8, windows", "local", windows),
                                 ("uint8, windows", "S3", windows)]:
        for episodes, home in homes.get(store, {}).items():
            with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                rows, m = pool.submit(worker_memory, home, batches, options).result()
            print(f"  {store:5s} {what:15s} {episodes:3d} episodes, {rows:6d} rows: worker peak RSS "
                  f"{m.worker_peak_rss_mb:5.0f} MB, above its start {m.worker_peak_growth_mb:4.0f} MB, private "
                  f"anonymous memory above its start {m.worker_anon_growth_mb:4.0f} MB", flush=True)


def loaders(source: Path, home: Path, s3_home: Path | None,
            modes: list[str]) -> dict[str, dict[str, Callable[[], Iterator[Any]]]]:
    """Every loader to compare in outputs ``modes``, by output, over the same snapshot (S3: when ``s3_home`` is given)."""
    plain = SnapshotDataset(NAME, TAG, home=home)
    deltas = window_deltas(plain.fps)
    ds = open_snapshot(NAME, TAG, home)
    order = np.argsort(np.asarray(ds["index"][:]))
    frames = {camera: ds[camera].get_bytes(order.tolist()) for camera in plain.camera_keys}
    values = {key: np.asarray(ds[key][:])[order] for key in VALUES}
    tasks = [ds["task"][int(row)] for row in order]
    out: dict[str, dict[str, Callable[[], Iterator[Any]]]] = {}
    for mode, (windowed, options) in MODES.items():
        if mode not in modes:
            continue
        window = deltas if windowed else None
        out[mode] = {
            "snapshot": loader(SnapshotDataset(NAME, TAG, home=home, delta_timestamps=window, **options), collate),
            "jpeg_limit": loader(InMemoryJpeg(frames, values, tasks, _Windows(values["episode_index"], window, plain.fps),
                                              **options), collate),
        }
    if "float32" in out:
        out["float32"] |= {
            "snapshot_default_collate": loader(plain),
            "deeplake": lambda: deeplake_batches(home),
            "lerobot": loader(LeRobotStyle(source, None)),
            "snapshot_s3": loader(SnapshotDataset(NAME, TAG, home=s3_home), collate, WINDOWS),
            "snapshot_windows": loader(plain, collate, WINDOWS),
        }
    if "float32, 2 obs frames + 50 actions" in out:
        out["float32, 2 obs frames + 50 actions"]["lerobot"] = loader(LeRobotStyle(source, deltas))
    if "uint8" in out:
        s3_uint8 = SnapshotDataset(NAME, TAG, home=s3_home, image_dtype="uint8")
        out["uint8"] |= {"snapshot_s3": loader(s3_uint8, collate, WINDOWS),
                         "snapshot_s3_full_shuffle": loader(s3_uint8, collate, {}),
                         "snapshot_windows": loader(SnapshotDataset(NAME, TAG, home=home, image_dtype="uint8"),
                                                    collate, WINDOWS)}
    if "float32 at 240x320" in out:
        out["float32 at 240x320"]["lerobot_resize"] = loader(LeRobotStyle(source, None, SMALL))
    return out


def s3_tables(s3: S3Server, prefix: str) -> str:
    """Where tables go on the S3 server."""
    return f"s3://{s3.bucket}/{prefix}"


def needed_modes(only: list[str] | None) -> list[str]:
    """The outputs to measure: ``only``, plus those holding the baselines their goals compare with."""
    if not only:
        return list(MODES)
    wanted = set(only)
    for _, (mode, _), (base_mode, _), _ in GOALS:
        if mode in only:
            wanted.add(base_mode)
    return [mode for mode in MODES if mode in wanted]


def uses_s3(modes: list[str]) -> bool:
    """Whether outputs ``modes`` include a loader on the S3 copy (only then is it built)."""
    return "float32" in modes or "uint8" in modes


def report(results: dict[str, dict[str, Measurement]], rounds: int) -> None:
    print(f"\nmedians of {rounds} rounds; batch {BATCH}, shuffled, {WORKERS} workers")
    for mode, by_name in results.items():
        print(f"\n{mode}:\n  {'loader':26s} {'samples/s':>9s} {'CPU ms/sample':>13s} {'S3 server':>9s}"
              f" {'worker MB: peak RSS':>19s} {'growth':>6s} {'anon':>5s}")
        for name, m in by_name.items():
            rss = (f"{m.worker_peak_rss_mb:19.0f} {m.worker_peak_growth_mb:6.0f} {m.worker_anon_growth_mb:5.0f}"
                   if m.worker_peak_rss_mb else f"{'-':>19s}")
            print(f"  {name:26s} {m.samples_per_s:9.1f} {m.cpu_ms_per_sample:13.1f} "
                  f"{m.server_cpu_ms_per_sample:9.1f} {rss}")
    print(f"\n  {'ratio':42s} {'rate':>6s} {'by CPU':>6s} {'+server':>7s}   goal")
    for what, (mode, name), (base_mode, base), goal in GOALS:
        if name not in results.get(mode, {}) or base not in results.get(base_mode, {}):
            continue
        ours, theirs = results[mode][name], results[base_mode][base]
        ratio, cpu_ratio = ours.samples_per_s / theirs.samples_per_s, theirs.cpu_ms_per_sample / ours.cpu_ms_per_sample
        total_ratio = ((theirs.cpu_ms_per_sample + theirs.server_cpu_ms_per_sample)
                       / (ours.cpu_ms_per_sample + ours.server_cpu_ms_per_sample))
        verdict = "" if goal is None else f">= {goal}x: {'met' if ratio >= goal else 'NOT met'}"
        print(f"  {what:42s} {ratio:5.2f}x {cpu_ratio:5.2f}x {total_ratio:6.2f}x   {verdict}")


def main(argv: list[str] | None = None) -> dict[str, dict[str, Measurement]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="keep the dataset and tables here (default: a temporary dir)")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--length", type=int, default=120, help="frames per episode")
    parser.add_argument("--batches", type=int, default=16, help="timed batches per measurement, at most")
    parser.add_argument("--budget", type=float, default=4.0, help="seconds per measurement, about")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", action="append", choices=list(MODES), metavar="OUTPUT",
                        help="measure only this output (repeatable), with the outputs holding its goals' baselines; "
                             f"one of {list(MODES)}")
    parser.add_argument("--loader", action="append", metavar="NAME",
                        help="measure only loaders of this name (repeatable), e.g. snapshot, snapshot_s3")
    parser.add_argument("--memory-times", type=int, default=4, metavar="K",
                        help="also compare each worker's peak RSS on the table and on one holding its rows K times "
                             "over, the same number of batches read from each (1: skip)")
    args = parser.parse_args(argv)
    modes = needed_modes(args.only)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # Deeplake's batches
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, S3Server() if uses_s3(modes) else contextlib.nullcontext() as s3:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        source, home = build(workdir, args.episodes, args.length)
        s3_home = None if s3 is None else build(workdir, args.episodes, args.length, s3_tables(s3, "tables"))[1]
        SERVER_PIDS[:] = [] if s3 is None else [s3.pid]
        print(f"dataset: {args.episodes} episodes x {args.length} frames, cameras {CAMERAS} at 480x640 (AV1, g=2); "
              f"built and ingested (locally{'' if s3 is None else f' and into S3 at {s3.url}'}) in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        candidates = {mode: kept for mode, by_name in loaders(source, home, s3_home, modes).items()
                      if (kept := {name: make for name, make in by_name.items() if not args.loader or name in args.loader})}
        runs: dict[str, dict[str, list[Measurement]]] = {mode: {n: [] for n in c} for mode, c in candidates.items()}
        for round_ in range(args.rounds):
            for mode, by_name in candidates.items():
                names = list(by_name)
                for name in names[round_ % len(names):] + names[: round_ % len(names)]:  # each goes first once
                    runs[mode][name].append(measure(by_name[name], args.batches, args.budget))
            print(f"round {round_ + 1}/{args.rounds} done ({time.perf_counter() - started:.0f} s, "
                  f"load average {os.getloadavg()[0]:.1f})", flush=True)
        if args.memory_times > 1:
            big = args.episodes * args.memory_times
            homes = {"local": {args.episodes: home, big: grown(home, args.memory_times, workdir)}}
            if s3 is not None:
                homes["S3"] = {args.episodes: s3_home, big: grown(home, args.memory_times, workdir, s3)}
            memory_by_table_size(homes, args.batches)
    results = {
        mode: {
            name: Measurement(*(statistics.median(getattr(m, field) for m in ms)
                                for field in Measurement.__dataclass_fields__))
            for name, ms in by_name.items()
        }
        for mode, by_name in runs.items()
    }
    report(results, args.rounds)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return results


if __name__ == "__main__":
    main()
