"""A real S3-compatible server for tests and benchmarks: moto's, in its own process on 127.0.0.1.

Usage::

    with S3Server() as s3:            # sets AWS_ENDPOINT_URL and test credentials while it runs
        ingest(source, name="x", tables=f"s3://{s3.bucket}/tables")

It listens on a free port and is stopped by its PID when the block ends. Conditional writes
(``If-Match``, ``If-None-Match``: table write leases) are handled one at a time, as S3 does
atomically: moto checks the condition and writes the object in two steps, between which another
request thread could write.
"""

from __future__ import annotations

import os
import socket
import threading
import subprocess
import sys
import time
import urllib.request
from typing import Any

#: What the server needs in the environment of every process that reads its tables.
ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}


class S3Server:
    """moto's S3 on a free loopback port, with one bucket, and the environment pointed at it."""

    def __init__(self, bucket: str = "lerobot-assets") -> None:
        self.bucket = bucket
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._saved: dict[str, str | None] = {}
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> S3Server:
        self._process = subprocess.Popen(
            [sys.executable, __file__, str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(urllib.request.Request(f"{self.url}/{self.bucket}", method="PUT"), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    self.__exit__()
                    raise RuntimeError(f"moto's S3 server did not start on {self.url}") from None
                time.sleep(0.1)
        for name, value in {**ENV, "AWS_ENDPOINT_URL": self.url}.items():
            self._saved[name] = os.environ.get(name)
            os.environ[name] = value
        return self

    @property
    def pid(self) -> int:
        """The server's process (to measure the CPU it takes)."""
        assert self._process is not None, "the server is not running"
        return self._process.pid

    def __exit__(self, *exc: Any) -> None:
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def _serve(port: int) -> None:
    """moto's server (as ``python -m moto.server``) with its conditional requests serialized."""
    from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    app = DomainDispatcherApplication(create_backend_app)
    conditional = threading.Lock()

    def serialized(environ: dict, start_response: Any) -> Any:
        if "HTTP_IF_MATCH" in environ or "HTTP_IF_NONE_MATCH" in environ:
            with conditional:
                return list(app(environ, start_response))
        return app(environ, start_response)

    os.environ.setdefault("MOTO_PORT", str(port))
    run_simple("127.0.0.1", port, serialized, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
