"""Camera-frames per second of a full ingest, against a naive decoder and against the decode+encode limit.

    .venv/bin/python benchmarks/ingest.py [--episodes 10] [--frames 300] [--cameras 3] [--size 480x640] [--repeat 3]

On one generated v3.0 dataset (AV1, --episodes-per-file episodes per video file), measured side by side,
--repeat times in turn (ratios are taken within each round; the summary gives their medians and ranges):

- ours:  `lerobot_assets.ingest` end to end in a fresh process into a fresh home, as a first ingest
         from the command line would run (Dagster runs, seek-and-decode per segment, JPEG, Deeplake writes);
- naive: for each episode and camera, decode the file from its start, skip earlier episodes' frames,
         JPEG-encode the episode's frames (decode + encode only: no table, so a lower bound for a naive ingest);
- limit: one process decodes every frame of every file once and JPEG-encodes it, on both cores.

Then peak RSS of a full ingest (a fresh process; the largest of its processes) for --episodes and 3x as many.
Goals: ours >= 3x naive, ours >= 0.7x limit, peak RSS flat in the number of episodes.
"""

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av

from lerobot_assets.core.lerobot.meta import read_dataset
from lerobot_assets.core.media.codec import encode_image
from lerobot_assets.core.media.video import rgb_converter
from lerobot_assets.testing.synthetic import generate_dataset


def _generate(root: Path, episodes: int, frames: int, cameras: int, height: int, width: int, per_file: int) -> Path:
    return generate_dataset(root, episode_lengths=[frames] * episodes, cameras=[f"cam{i}" for i in range(cameras)],
                            height=height, width=width, episodes_per_file=per_file, files_per_chunk=10)


_converters = threading.local()


def _jpeg(frame: av.VideoFrame) -> bytes:
    """RGB conversion and JPEG encoding as the ingest does them (a reformatter per thread, libjpeg-turbo)."""
    if not hasattr(_converters, "to_rgb"):
        _converters.to_rgb = rgb_converter()
    return encode_image(_converters.to_rgb(frame), "jpeg", 95)


def naive(root: Path) -> int:
    """Per episode and camera: decode from the start of the file, skip to the episode, encode its frames."""
    meta = read_dataset(root)
    done = 0
    for episode in meta.episodes.values():
        for camera in meta.cameras:
            segment = episode.videos[camera]
            with av.open(str(root / segment.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    t = frame.pts * float(stream.time_base)
                    if t >= segment.to_timestamp - 1e-4:
                        break
                    if t >= segment.from_timestamp - 1e-4:
                        _jpeg(frame)
                        done += 1
    return done


def limit(root: Path) -> int:
    """Decode every video file once (codec threads) and JPEG-encode its frames in a pool of 2 threads."""
    files = sorted((root / "videos").rglob("*.mp4"))
    done = 0
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for path in files:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                done += sum(1 for _ in pool.map(_jpeg, container.decode(stream)))
    return done


def _timed(fn, *args) -> tuple[float, object]:
    started = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - started, value


_OURS = """
import json, sys, time
from lerobot_assets.runtime.commands import ingest
started = time.perf_counter()
result = ingest(sys.argv[1], name="bench", home=sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - started, "rows": result["rows"]}))
"""


def ours(root: Path, home: Path) -> tuple[float, int]:
    """Seconds and rows of an ingest in a fresh process (imports before ``ingest()`` not timed)."""
    done = subprocess.run([sys.executable, "-c", _OURS, str(root), str(home)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"ingest failed with exit code {done.returncode}: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["seconds"], result["rows"]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo.extend(children.get(found[-1], []))
    return found


def _peak_rss_mb(root: Path, home: Path) -> float:
    """Largest peak RSS (MB, VmHWM) of any process of a fresh ingest: the ingest process and its
    workers (getrusage would give the largest of all children of this process, generators included)."""
    process = subprocess.Popen([sys.executable, "-c", _OURS, str(root), str(home)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak_kb = 0
    while process.poll() is None:
        for pid in _descendants(process.pid):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            hwm = [line for line in status.splitlines() if line.startswith("VmHWM:")]
            peak_kb = max([peak_kb] + [int(line.split()[1]) for line in hwm])
        time.sleep(0.05)
    if process.returncode:
        raise RuntimeError(f"ingest for the RSS measurement failed with exit code {process.returncode}")
    return peak_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--size", default="480x640")
    parser.add_argument("--episodes-per-file", type=int, default=10,
                        help="episodes concatenated in one MP4 per camera (real v3.0 files hold up to ~200 MB)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of ours, naive and limit (the VM drifts by +-15%%)")
    parser.add_argument("--skip-rss", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    height, width = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="la-ingest-bench-") as tmp:
        root = _generate(Path(tmp) / "ds", args.episodes, args.frames, args.cameras, height, width,
                         args.episodes_per_file)
        total = args.episodes * args.frames * args.cameras
        rounds = []
        for round_ in range(args.repeat):
            ours_s, rows = ours(root, Path(tmp) / f"home{round_}")
            assert rows == args.episodes * args.frames, rows
            naive_s, naive_frames = _timed(naive, root)
            limit_s, limit_frames = _timed(limit, root)
            assert naive_frames == limit_frames == total, (naive_frames, limit_frames, total)
            rounds.append({"ours_fps": round(total / ours_s, 1), "naive_fps": round(total / naive_s, 1),
                           "limit_fps": round(total / limit_s, 1), "ours_over_naive": round(naive_s / ours_s, 2),
                           "ours_over_limit": round(limit_s / ours_s, 2)})
            print(f"round {round_ + 1}: ours {ours_s:5.1f} s {rounds[-1]['ours_fps']:6.1f} cf/s | naive {naive_s:5.1f} s "
                  f"{rounds[-1]['naive_fps']:6.1f} cf/s | limit {limit_s:5.1f} s {rounds[-1]['limit_fps']:6.1f} cf/s | "
                  f"ours/naive {rounds[-1]['ours_over_naive']:.2f}x  ours/limit {rounds[-1]['ours_over_limit']:.2f}x", flush=True)
        figures = {"camera_frames": total, "rounds": rounds}
        for key in rounds[0]:
            values = [r[key] for r in rounds]
            figures[key] = statistics.median(values)
            figures[f"{key}_range"] = [min(values), max(values)]
        print(f"median of {args.repeat}: ours {figures['ours_fps']} camera-frames/s, naive {figures['naive_fps']}, "
              f"limit {figures['limit_fps']}")
        for key, goal in (("ours_over_naive", 3), ("ours_over_limit", 0.7)):
            low, high = figures[f"{key}_range"]
            print(f"{key.replace('_over_', '/')}: median {figures[key]:.2f}x (range {low:.2f} to {high:.2f}; goal >= {goal})")
        if not args.skip_rss:
            for episodes in (args.episodes, 3 * args.episodes):
                small = _generate(Path(tmp) / f"rss{episodes}", episodes, args.frames, args.cameras, height, width,
                                  args.episodes_per_file)
                figures[f"peak_rss_mb_{episodes}_episodes"] = round(_peak_rss_mb(small, Path(tmp) / f"h{episodes}"), 1)
                print(f"peak RSS, {episodes} episodes: {figures[f'peak_rss_mb_{episodes}_episodes']} MB")
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
