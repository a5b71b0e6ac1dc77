"""What reading a table's camera frames from S3 costs, by read pattern: requests, server and client CPU.

The table's files are uploaded to an S3-compatible server (moto, on 127.0.0.1, stopped at the end);
each pattern then runs in a fresh process (a cold Deeplake cache), reading every camera column:

- ``rows``: batches of 32 random rows, one ``get_bytes_async(rows)`` per camera (a full shuffle);
- ``list KxB``: windows of K blocks of B consecutive rows, as one row list per camera;
- ``ranges KxB``: the same windows, each block as one range (``get_bytes_async(slice)``), as
  ``SnapshotDataset`` reads a ``ReadAheadBatches`` window.

Blocks are drawn without replacement; still, on a small table neighbouring blocks often share a
chunk object that the process has already fetched, so use a table of a few thousand rows (e.g. the
one ``benchmarks/stream.py --memory-times 4`` builds) for figures that hold for large tables.

Requests are counted with moto's recorder (a separate pass: recording costs server CPU); the server's
CPU is read from /proc/<pid>/stat, the client's from getrusage; the open is not counted. A sample is one row of every camera (3 x ~116 KB here).

    python benchmarks/s3_reads.py /tmp/bench/grown_x4/stream_bench    # the 4x table benchmarks/stream.py built
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.stream import cpu_seconds  # noqa: E402
from tests.support.s3_server import S3Server  # noqa: E402

READ = r'''
import json, resource, sys, time
import numpy as np
from lerobot_assets.core.table.access import open_tag

url, tag, pattern, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ds = open_tag(url, tag)
cameras = [c.name for c in ds.schema.columns if str(c.dtype).startswith("kind=image")]
rng, rows = np.random.default_rng(0), len(ds)
if pattern != "rows":  # blocks without replacement, as ReadAheadBatches deals them within an epoch
    blocks, size = map(int, pattern.split()[1].split("x"))
    order = (rng.permutation(rows // size) * size).tolist()
print(json.dumps("opened"), flush=True)
sys.stdin.readline()
usage = resource.getrusage(resource.RUSAGE_SELF)
cpu, started, samples = usage.ru_utime + usage.ru_stime, time.perf_counter(), 0
for _ in range(count):
    if pattern == "rows":
        wanted = sorted(rng.choice(rows, 32, replace=False).tolist())
        reads = [ds[c].get_bytes_async(wanted) for c in cameras]
    else:
        starts, order = order[:blocks], order[blocks:]
        if pattern.startswith("list"):
            reads = [ds[c].get_bytes_async(sorted(s + k for s in starts for k in range(size))) for c in cameras]
        else:
            reads = [ds[c].get_bytes_async(slice(s, s + size)) for c in cameras for s in starts]
    samples += sum(len(r.result()) for r in reads) // len(cameras)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"samples": samples, "seconds": time.perf_counter() - started,
                  "cpu": usage.ru_utime + usage.ru_stime - cpu}), flush=True)
'''


def run(url: str, tag: str, pattern: str, count: int, server: S3Server, record: bool) -> dict:
    """Read ``pattern`` ``count`` times in a fresh process; its figures, the server's CPU (and requests)."""
    child = subprocess.Popen([sys.executable, "-c", READ, url, tag, pattern, str(count)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    json.loads(child.stdout.readline())  # opened: what follows is the reads alone
    if record:
        _recorder(server, "reset-recording")
        _recorder(server, "start-recording")
    before = cpu_seconds([server.pid])
    child.stdin.write("\n")
    child.stdin.flush()
    out = json.loads(child.stdout.readline())
    out["server_cpu"] = cpu_seconds([server.pid]) - before
    child.wait()
    if record:
        _recorder(server, "stop-recording")
        log = [json.loads(line) for line in _recorder(server, "download-recording").splitlines() if line.strip()]
        out["gets"] = sum(entry.get("method") == "GET" for entry in log)
    return out


@contextlib.contextmanager
def _recording_in(path: Path) -> Iterator[None]:
    """Have the server write its recording to ``path`` (by default it writes ``moto_recording`` in the cwd)."""
    saved = os.environ.get("MOTO_RECORDER_FILEPATH")
    os.environ["MOTO_RECORDER_FILEPATH"] = str(path)
    try:
        yield
    finally:
        if saved is None:
            del os.environ["MOTO_RECORDER_FILEPATH"]
        else:
            os.environ["MOTO_RECORDER_FILEPATH"] = saved


def _recorder(server: S3Server, command: str) -> str:
    method = "GET" if command == "download-recording" else "POST"
    request = urllib.request.Request(f"{server.url}/moto-api/recorder/{command}", method=method)
    return urllib.request.urlopen(request).read().decode()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", type=Path, help="a local table directory (e.g. one benchmarks/stream.py built)")
    parser.add_argument("--tag", default="bench")
    parser.add_argument("--samples", type=int, default=512, help="samples read per pattern")
    args = parser.parse_args(argv)
    patterns = {"rows": 32, "list 8x32": 256, "ranges 8x32": 256, "ranges 4x16": 64}
    with tempfile.TemporaryDirectory() as tmp, _recording_in(Path(tmp) / "recording"), S3Server() as server:
        client = boto3.client("s3", endpoint_url=server.url)
        for path in args.table.rglob("*"):
            if path.is_file():
                client.put_object(Bucket=server.bucket, Key=f"t/{path.relative_to(args.table)}", Body=path.read_bytes())
        url = f"s3://{server.bucket}/t"
        print(f"{'pattern':12s} {'GETs/32 samples':>15s} {'server CPU ms/sample':>20s}"
              f" {'client CPU ms/sample':>20s} {'wall ms/sample':>14s}")
        for pattern, per_read in patterns.items():
            count = max(1, args.samples // per_read)
            timed = run(url, args.tag, pattern, count, server, record=False)
            counted = run(url, args.tag, pattern, count, server, record=True)
            n = timed["samples"]
            print(f"{pattern:12s} {counted['gets'] * 32 / counted['samples']:15.1f} "
                  f"{timed['server_cpu'] * 1e3 / n:20.2f} {timed['cpu'] * 1e3 / n:20.2f} "
                  f"{timed['seconds'] * 1e3 / n:14.2f}", flush=True)


if __name__ == "__main__":
    main()
