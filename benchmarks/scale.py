"""Costs that must not grow with the table: episode writes, opens, info and loaders at 10k .. 1M rows,
and an ingest of many small episodes (the shape that once collapsed after ~64 episodes).

    .venv/bin/python benchmarks/scale.py [--rows 1000000] [--episode-rows 200] [--ingest-episodes 500] [--repeat 3]

Table: written through the project's own episode-write path (``RunWriter``: each episode's stats
computed and its rows replaced, one commit per run of ``EPISODES_PER_RUN`` episodes, then
``episode_ranges`` and ``episode_frames`` for the checks, as an episode run does), ``--episode-rows`` rows per episode with one small JPEG camera,
14-DOF state and action, registered in a home so that ``info`` and ``SnapshotDataset`` run as a
user runs them. At 10k, 100k rows and ``--rows``, each measure runs ``--repeat`` times, each in a fresh
process (the median is kept): time, and peak memory of the operation (the process's peak resident
memory during it minus its resident memory before it, so imports do not count).

- replace: a run of one episode in the middle (its rows deleted, re-appended, indexes recreated, committed, checked);
- remove: what ``ingest`` does for an episode gone upstream (rows deleted, indexes recreated, committed);
- open: ``open_read_only``; info: ``lerobot_assets.runtime.commands.info``;
- snapshot: ``SnapshotDataset(...)`` construction at a tag of that size; item: one random item of it.

Ingest: a pusht-like dataset (``--ingest-episodes`` episodes of 50-110 frames, one 96x96 h264 camera,
2 DOF, 10 fps, all in one file) ingested with one worker in a fresh process; the wall and CPU
time per episode of each run of ``EPISODES_PER_RUN`` episodes (one commit each) are taken at the
ingest's progress log, from when it starts the episode runs (CPU time of the process: on a shared
machine wall time mostly measures waiting). Compared: the first run's (episodes 0-49, "episode 20")
against the last run's, and peak RSS against an ingest of 50 of its episodes.

Goals: every table measure at the largest size <= 1.5x its value at 10k rows; ingest per-episode
time and peak RSS <= 1.2x. The last line printed is a JSON object {"ratios": {...}, "figures": {...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lerobot_assets.core.lerobot.meta import read_dataset
from lerobot_assets.core.lerobot.stats import episode_stats
from lerobot_assets.core.media.codec import encode_image
from lerobot_assets.core.table.access import create_tag, open_read_only, open_writable, table_url
from lerobot_assets.core.table.episode_stats import STATS_COLUMN, stats_cells
from lerobot_assets.core.table.episodes import episode_frames, episode_ranges, replace_episode
from lerobot_assets.core.table.registry import DatasetSource
from lerobot_assets.core.table.schema import refresh_indexes, write_lock
from lerobot_assets.core.table.writer import RunWriter
from lerobot_assets.defs.ingest import EPISODES_PER_RUN
from lerobot_assets.runtime.home import Home
from lerobot_assets.runtime.registry import registry_of
from lerobot_assets.testing.synthetic import generate_dataset, render_frame, table_rows

NAME = "scale"
STATE_DIM = 14
FPS = 30
REVISION = "0" * 40
SIZES = (10_000, 100_000)

# One measured operation in a fresh process: argv = op, home, url, episode, tag, template.
_MEASURE = r"""
import json, sys, time
op, home, url, episode, tag, template = sys.argv[1:7]
episode = int(episode)

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024

import scale as ops
prepared = ops.prepare(op, home, url, episode, tag, template)
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
    f.write("5")
before = status("VmRSS:")
started = time.perf_counter()
ops.run(op, prepared)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "peak_mb": status("VmHWM:") - before}))
"""


def _template(root: Path) -> Path:
    return generate_dataset(root / "template", episode_lengths=(2,), cameras=("cam",), height=48, width=64,
                            state_dim=STATE_DIM, fps=FPS, codec="libx264")


def episode_rows_for(episode: int, frames: int, jpeg: bytes) -> dict:
    """The rows of a generated episode, as ``episode_rows`` makes them from a dataset."""
    return table_rows(episode, frames, camera="observation.images.cam", image=jpeg, fps=FPS, state_dim=STATE_DIM)


def write_run(url: str, meta, episodes: dict[int, dict]) -> None:
    """An episode run's table work (``_table_events`` through a ``RunWriter``): each episode's stats
    computed and its rows replaced, then one commit for the run, and the rows checked after it."""
    with RunWriter(url, "jpeg", {"source": str(meta.root), "revision": REVISION}) as writer:
        for episode, rows in episodes.items():
            values = {k: v for k, v in rows.items() if k != "observation.images.cam"}
            rows = {**rows, STATS_COLUMN: stats_cells(episode_stats(values), len(rows["episode_index"]))}
            writer.replace(meta, episode, rows, f"{REVISION[:8]}-{episode}", lambda ds, new: (new, None))
        writer.commit(f"ingest {NAME} episodes {min(episodes)}-{max(episodes)} at revision {REVISION}")
    ds = open_read_only(url)
    ranges = episode_ranges(ds)
    for episode in episodes:
        episode_frames(ds, ranges[episode])


def remove_episode(url: str, episode: int) -> None:
    """What ``ingest`` does for an episode gone upstream (``_remove_vanished``): rows deleted, indexes recreated, one commit."""
    with write_lock(url):
        ds = open_writable(url)
        replace_episode(ds, episode, None)
        refresh_indexes(ds)
        ds.commit(f"remove {NAME} episode {episode}: gone at revision {REVISION}")


def prepare(op: str, home: str, url: str, episode: int, tag: str, template: str) -> tuple:
    """What ``op`` needs, made before it is measured (imports, rows to write, the dataset to index)."""
    if op in ("replace", "remove"):
        if op == "remove":
            return url, episode
        rows = episode_rows_for(episode, _length(url, episode), encode_image(render_frame(0, 0, 48, 64)))
        return url, read_dataset(template, name=NAME), {episode: rows}
    if op == "open":
        return (url,)
    if op == "info":
        from lerobot_assets.runtime.commands import info

        return info, home
    from lerobot_assets.training import SnapshotDataset

    if op == "snapshot":
        return SnapshotDataset, home, tag
    dataset = SnapshotDataset(NAME, tag, home=home)
    return dataset, int(np.random.default_rng().integers(len(dataset)))


def _length(url: str, episode: int) -> int:
    return len(episode_ranges(open_read_only(url))[episode])


def run(op: str, prepared: tuple) -> None:
    """The measured operation."""
    if op == "replace":
        write_run(*prepared)
    elif op == "remove":
        remove_episode(*prepared)
    elif op == "open":
        len(open_read_only(*prepared))
    elif op == "info":
        info, home = prepared
        info(NAME, home=home)
    elif op == "snapshot":
        snapshot_dataset, home, tag = prepared
        snapshot_dataset(NAME, tag, home=home)
    else:
        dataset, index = prepared
        dataset[index]


def _measure(op: str, home: Path, url: str, episode: int, tag: str, template: Path) -> dict[str, float]:
    """``op`` once, in a fresh process: {seconds, peak_mb}."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, op, str(home), url, str(episode), tag, str(template)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": _pythonpath()})
    if done.returncode:
        raise RuntimeError(f"{op} failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _pythonpath() -> str:
    here = str(Path(__file__).resolve().parent)
    return os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)


def table_scale(root: Path, rows: int, episode_rows: int, repeat: int) -> dict[str, dict[str, dict[str, float]]]:
    """Build the table up to ``rows`` rows and measure at each size; {size: {measure: {seconds, peak_mb}}}."""
    template = _template(root)
    meta = read_dataset(template, name=NAME)
    home = Home.at(root / "home")
    url = table_url(home.tables, NAME)
    registry_of(home).register(DatasetSource(name=NAME, source=str(template), kind="local", table=url))
    jpeg = encode_image(render_frame(0, 0, 48, 64))
    sizes = sorted({s for s in SIZES if s < rows} | {rows})
    figures: dict[str, dict[str, dict[str, float]]] = {}
    written, started = 0, time.perf_counter()
    for size in sizes:
        while written < size:
            first = written // episode_rows
            run = range(first, min(first + EPISODES_PER_RUN, size // episode_rows))
            write_run(url, meta, {e: episode_rows_for(e, episode_rows, jpeg) for e in run})
            written += len(run) * episode_rows
            if run.stop % 500 == 0:
                print(f"  {written} rows, {run.stop} episodes: {time.perf_counter() - started:.0f} s", flush=True)
        tag = f"rows-{size}"
        with write_lock(url):
            create_tag(open_writable(url), tag, url)
        middle = written // episode_rows // 2
        figures[str(size)] = measured = {}
        for op in ("replace", "remove", "open", "info", "snapshot", "item"):
            runs = []
            for _ in range(repeat):
                if op == "remove":  # put the episode back (untimed) so that there is something to remove
                    write_run(url, meta, {middle: episode_rows_for(middle, episode_rows, jpeg)})
                runs.append(_measure(op, home.root, url, middle, tag, template))
            measured[op] = {key: round(statistics.median(r[key] for r in runs), 4) for key in ("seconds", "peak_mb")}
        write_run(url, meta, {middle: episode_rows_for(middle, episode_rows, jpeg)})  # back for the next size
        print(f"{size} rows ({size // episode_rows} episodes): " +
              ", ".join(f"{op} {m['seconds'] * 1e3:.1f} ms / {m['peak_mb']:.1f} MB" for op, m in measured.items()), flush=True)
    return figures


_INGEST = r"""
import json, logging, resource, sys, time
from lerobot_assets.runtime.commands import ingest
done, cpu, sizes = [], [], []
class Progress(logging.Handler):
    def emit(self, record):  # the episode runs start after "N episodes to materialize"; each logs when done
        if "episodes to materialize" in str(record.msg) or "episodes done" in str(record.msg):
            done.append(time.perf_counter())
            cpu.append(time.process_time())
            sizes.append(record.args[1] if "episodes done" in str(record.msg) else 0)
logger = logging.getLogger("lerobot_assets.runtime.commands")
logger.setLevel(logging.INFO)
logger.addHandler(Progress())
result = ingest(sys.argv[1], name="pusht", home=sys.argv[2], workers=1, episodes=list(range(int(sys.argv[3]))))
runs = [b - a for a, b in zip(sizes, sizes[1:])]  # episodes per run
times = [(b - a) / n for a, b, n in zip(done, done[1:], runs)]  # per episode, in each run
cpu_times = [(b - a) / n for a, b, n in zip(cpu, cpu[1:], runs)]
print(json.dumps({"times": times, "cpu_times": cpu_times, "rows": result["rows"],
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def pusht_like(root: Path, episodes: int) -> Path:
    """A dataset shaped like lerobot/pusht: 50-110 frames per episode, one 96x96 h264 camera, 2 DOF, 10 fps."""
    lengths = np.random.default_rng(0).integers(50, 111, episodes).tolist()
    return generate_dataset(root / "pusht", episode_lengths=lengths, cameras=("image",), height=96, width=96, fps=10,
                            codec="libx264", effort=False, state_dim=2, episodes_per_file=episodes, files_per_chunk=10)


def _ingest(source: Path, home: Path, episodes: int) -> dict:
    done = subprocess.run([sys.executable, "-c", _INGEST, str(source), str(home), str(episodes)],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"ingest failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def many_episodes(root: Path, episodes: int) -> dict[str, float]:
    source = pusht_like(root, episodes)
    small = _ingest(source, root / "home50", 50)
    full = _ingest(source, root / "home-all", episodes)
    times, cpu = full["times"], full["cpu_times"]
    return {
        "episodes": episodes,
        "episode_20_s": times[0],  # the first run's episodes (0-49)
        "last_episodes_s": times[-1],  # the last run's
        "episode_20_cpu_s": cpu[0],
        "last_episodes_cpu_s": cpu[-1],
        "run_episode_s": [round(t, 4) for t in times],
        "peak_mb": full["peak_mb"],
        "peak_mb_50_episodes": small["peak_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the largest table (>= 10000)")
    parser.add_argument("--episode-rows", type=int, default=200)
    parser.add_argument("--ingest-episodes", type=int, default=500, help="0: skip the many-episode ingest")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.rows < SIZES[0]:
        parser.error(f"--rows must be at least {SIZES[0]}")
    ratios: dict[str, float] = {}
    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="lerobot-scale-bench-") as tmp:
        if args.ingest_episodes:
            ingest = figures["ingest"] = many_episodes(Path(tmp) / "ingest", args.ingest_episodes)
            print(f"ingest of {args.ingest_episodes} small episodes: {json.dumps(ingest)}", flush=True)
            ratios["ingest_episode_time"] = round(ingest["last_episodes_s"] / ingest["episode_20_s"], 3)
            ratios["ingest_episode_cpu"] = round(ingest["last_episodes_cpu_s"] / ingest["episode_20_cpu_s"], 3)
            ratios["ingest_peak_rss"] = round(ingest["peak_mb"] / ingest["peak_mb_50_episodes"], 3)
        table = figures["table"] = table_scale(Path(tmp) / "table", args.rows, args.episode_rows, args.repeat)
    base, top = table[str(SIZES[0])], table[str(args.rows)]
    for op in base:
        ratios[f"{op}_time"] = round(top[op]["seconds"] / base[op]["seconds"], 3)
        # memory: peaks below 8 MB are noise (allocator pages), so ratios use max(peak, 8 MB)
        ratios[f"{op}_peak_mb"] = round(max(top[op]["peak_mb"], 8) / max(base[op]["peak_mb"], 8), 3)
    print(json.dumps({"ratios": ratios, "figures": figures, "rows": args.rows, "episode_rows": args.episode_rows}))


if __name__ == "__main__":
    main()
