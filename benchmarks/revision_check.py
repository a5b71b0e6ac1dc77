"""The revision check of a local directory, as the sensor runs it every tick: full hash vs. the cached check.

    .venv/bin/python benchmarks/revision_check.py [--files 64] [--mib 8]

Generates ``files`` files of ``mib`` MiB each (last modified an hour ago, a dataset at rest), then
times ``directory_revision`` without a record (every byte read: what each tick cost before the
cache), with an up-to-date record (the steady state), and after one file changed. Goal: an
unchanged directory is checked without reading a file, in at most 5% of the full hash's time; one
changed file costs about that file. The files are in the page cache when hashed, so the full hash
is the cheapest it can be (sha256 speed, no disk reads): on a cold cache the ratio is smaller still.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from lerobot_assets.core.sources import directory_revision


def _timed(root: Path, record: Path | None, repeat: int = 3):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = directory_revision(root, record)
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--mib", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="la-bench-rev-") as tmp:
        root, record = Path(tmp) / "dataset", Path(tmp) / "record.json"
        block = os.urandom(1 << 20)
        for index in range(args.files):
            path = root / "videos" / f"camera-{index % 4}" / f"file-{index:03d}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(block * args.mib + index.to_bytes(4, "little"))
        old = time.time_ns() - 3600 * 10**9
        for path in root.rglob("*"):
            os.utime(path, ns=(old, old))

        full_s, full = _timed(root, None)
        directory_revision(root, record)  # writes the record
        warm_s, warm = _timed(root, record)
        with (root / "videos" / "camera-1" / "file-001.mp4").open("r+b") as handle:
            handle.write(b"edited")
        os.utime(root / "videos" / "camera-1" / "file-001.mp4", ns=(old + 1, old + 1))
        start = time.perf_counter()
        one = directory_revision(root, record)
        one_s = time.perf_counter() - start

    size = full.bytes / 2**20
    print(f"{full.files} files, {size:.0f} MiB")
    print(f"full hash (no record):      {full_s:8.4f} s, {full.hashed_bytes / 2**20:7.1f} MiB read")
    print(f"unchanged, with the record: {warm_s:8.4f} s, {warm.hashed_bytes / 2**20:7.1f} MiB read, "
          f"ratio {warm_s / full_s:.4f} (goal <= 0.05: {'met' if warm_s <= 0.05 * full_s and not warm.hashed_bytes else 'NOT met'})")
    print(f"one file changed:           {one_s:8.4f} s, {one.hashed_bytes / 2**20:7.1f} MiB read, "
          f"ratio {one_s / full_s:.4f} (one file is {1 / full.files:.4f} of the bytes)")
    assert warm.revision == full.revision != one.revision


if __name__ == "__main__":
    main()
