"""A small, real Hugging Face Hub look-alike for tests: local git repositories served as Hub *dataset* repos.

It speaks real HTTP on 127.0.0.1 (stdlib ``ThreadingHTTPServer`` in a background thread) and implements exactly
what huggingface_hub 2.4.0 calls for ``HfApi.dataset_info`` and ``snapshot_download(repo_type="dataset")``:

    GET  /api/datasets/{ns}/{name}                        dataset_info (default branch)
    GET  /api/datasets/{ns}/{name}/revision/{rev}         dataset_info at a branch, tag or commit sha
    GET  /api/datasets/{ns}/{name}/tree/{rev}[/{path}]    list_repo_tree (``?recursive=true``), no pagination
    HEAD /datasets/{ns}/{name}/resolve/{rev}/{file}       metadata: X-Repo-Commit, ETag (git blob id), Content-Length
    GET  /datasets/{ns}/{name}/resolve/{rev}/{file}       file content, with ``Range: bytes=N-`` resume support (206)

Revisions (``{rev}`` is URL-quoted, so ``refs/pr/1`` arrives as one segment) resolve with ``git rev-parse``; the
listing comes from ``git ls-tree -r``, contents from ``git cat-file blob <sha>:<path>``. No Xet headers are ever sent,
so the client always takes the plain HTTP download path. Errors carry the ``X-Error-Code`` / ``X-Error-Message``
headers huggingface_hub turns into ``RepositoryNotFoundError``, ``RevisionNotFoundError``, ``RemoteEntryNotFoundError``.

Test knobs (plain attributes, may be changed while the server runs):

    token          when set, every request needs ``Authorization: Bearer <token>`` (else 401)
    fail_status    when set (e.g. 500), every request is answered with this status
    cut_downloads  number of upcoming file GETs to cut: such a response promises the whole body but the
                   connection is closed once the file's midpoint is reached (a resumed request starting at or
                   after the midpoint gets its headers and no body at all), like a link that always drops there
    cut_only       when set, only files whose path contains this string are cut
    requests       every request received, as ``Request(method, path, headers)`` (headers with lower-case names)
    counts         ``Counter`` of ``"METHOD /path"`` (path without query string)

Usage::

    with HubServer({"org/ds": repo_dir}, token="secret") as hub:
        HfApi(endpoint=hub.url, token="secret").dataset_info("org/ds")
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections import Counter
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit


class Request(NamedTuple):
    method: str
    path: str
    headers: dict[str, str]


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class _Entry(NamedTuple):
    type: str  # "file" or "directory"
    oid: str
    size: int
    path: str


class HubServer:
    """Serve local git repositories as Hub dataset repos over real HTTP; see the module docstring."""

    def __init__(self, repos: dict[str, Path | str] | None = None, *, token: str | None = None) -> None:
        self.repos: dict[str, Path] = {repo_id: Path(path) for repo_id, path in (repos or {}).items()}
        self.token = token
        self.fail_status: int | None = None
        self.cut_downloads = 0
        self.cut_only: str | None = None
        self.requests: list[Request] = []
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> HubServer:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False  # clients keep idle keep-alive connections open
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The endpoint to give huggingface_hub (``HF_ENDPOINT`` or ``endpoint=``)."""
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add_repo(self, repo_id: str, path: Path | str) -> None:
        self.repos[repo_id] = Path(path)

    def count(self, contains: str = "", method: str | None = None) -> int:
        """How many requests so far had ``contains`` in their path (and the given method, if any)."""
        with self._lock:
            return sum(1 for r in self.requests if contains in r.path and method in (None, r.method))

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.counts.clear()

    # -- git ---------------------------------------------------------------------------------------------------
    def _git(self, repo: Path, *args: str) -> bytes:
        result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True)
        if result.returncode:
            raise HubError(500, f"git {args[0]} failed: {result.stderr.decode(errors='replace').strip()}")
        return result.stdout

    def _repo(self, repo_id: str) -> Path:
        if repo_id not in self.repos:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return self.repos[repo_id]

    def _resolve(self, repo: Path, revision: str) -> str:
        """Branch, tag or (full or abbreviated) commit sha -> full commit sha."""
        if revision.startswith("-"):
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        try:
            return self._git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}").decode().strip()
        except HubError:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound") from None

    def _tree(self, repo: Path, sha: str) -> list[_Entry]:
        out = self._git(repo, "ls-tree", "-r", "-t", "-l", "-z", sha)
        entries = []
        for record in filter(None, out.split(b"\0")):
            meta, path = record.split(b"\t", 1)
            _mode, kind, oid, size = meta.split()
            if kind in (b"blob", b"tree"):
                entries.append(_Entry("file" if kind == b"blob" else "directory", oid.decode(),
                                      int(size) if kind == b"blob" else 0, path.decode()))
        return entries

    # -- endpoints ---------------------------------------------------------------------------------------------
    def dataset_info(self, repo_id: str, revision: str | None) -> dict:
        repo = self._repo(repo_id)
        sha = self._resolve(repo, revision or "HEAD")
        when = datetime.fromtimestamp(int(self._git(repo, "show", "-s", "--format=%ct", sha)), timezone.utc)
        files = [e for e in self._tree(repo, sha) if e.type == "file"]
        return {
            "_id": sha[:24], "id": repo_id, "author": repo_id.split("/")[0], "sha": sha,
            "lastModified": when.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "private": self.token is not None,
            "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
            "siblings": [{"rfilename": e.path} for e in files],
        }

    def tree(self, repo_id: str, revision: str, path: str, recursive: bool) -> list[dict]:
        repo = self._repo(repo_id)
        sha = self._resolve(repo, revision)
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        entries = [e for e in self._tree(repo, sha) if e.path.startswith(prefix)]
        if path.strip("/") and not entries:
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
        if not recursive:
            entries = [e for e in entries if "/" not in e.path[len(prefix):]]
        return [{"type": e.type, "oid": e.oid, "size": e.size, "path": e.path} for e in entries]

    def file(self, repo_id: str, revision: str, path: str) -> tuple[str, _Entry]:
        repo = self._repo(repo_id)
        sha = self._resolve(repo, revision)
        for entry in self._tree(repo, sha):
            if entry.type == "file" and entry.path == path:
                return sha, entry
        raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": sha})


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"  # keep-alive, like the Hub; every response carries a Content-Length

    def log_message(self, format: str, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        hub = self.hub
        url = urlsplit(self.path)
        with hub._lock:
            hub.requests.append(Request(method, url.path, {k.lower(): v for k, v in self.headers.items()}))
            hub.counts[f"{method} {url.path}"] += 1
        if method == "POST" and (length := int(self.headers.get("Content-Length") or 0)):
            self.rfile.read(length)
        try:
            if hub.fail_status is not None:
                raise HubError(hub.fail_status, "Internal Error - We're working hard to fix this as soon as possible!")
            if hub.token is not None and self.headers.get("Authorization") != f"Bearer {hub.token}":
                if self.headers.get("Authorization"):
                    raise HubError(401, "Invalid credentials in Authorization header")
                raise HubError(401, "Invalid username or password.", "RepoNotFound")
            self._route(method, url.path, parse_qs(url.query))
        except HubError as error:
            self._send_json(error.status, {"error": error.message}, method,
                            {**error.headers, "X-Error-Message": error.message,
                             **({"X-Error-Code": error.code} if error.code else {})})

    def _route(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        parts = [unquote(p) for p in path.split("/")[1:]]  # quoted segments ("refs%2Fpr%2F1") stay whole
        match parts:
            case ["api", "datasets", ns, name] if method == "GET":
                self._send_json(200, self.hub.dataset_info(f"{ns}/{name}", None))
            case ["api", "datasets", ns, name, "revision", revision] if method == "GET":
                self._send_json(200, self.hub.dataset_info(f"{ns}/{name}", revision))
            case ["api", "datasets", ns, name, "tree", revision, *sub] if method == "GET":
                recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                self._send_json(200, self.hub.tree(f"{ns}/{name}", revision, "/".join(sub), recursive))
            case ["datasets", ns, name, "resolve", revision, *file] if file and method in ("GET", "HEAD"):
                self._send_file(method, f"{ns}/{name}", revision, "/".join(file))
            case _:
                raise HubError(404, f"no route for {method} {path}")

    def _send_file(self, method: str, repo_id: str, revision: str, path: str) -> None:
        sha, entry = self.hub.file(repo_id, revision, path)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{entry.oid}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if method == "HEAD":
            self._send(200, b"", "HEAD", {**headers, "Content-Length": str(entry.size)})
            return
        data = self.hub._git(self.hub._repo(repo_id), "cat-file", "blob", f"{sha}:{path}")
        start, status = 0, 200
        if m := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
            start, status = min(int(m.group(1)), len(data)), 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        with self.hub._lock:
            cut = self.hub.cut_downloads > 0 and (self.hub.cut_only or "") in path
            self.hub.cut_downloads -= cut
        if not cut:
            self._send(status, body, "GET", {**headers, "Content-Length": str(len(body))})
            return
        # Promise the whole body, send only what lies before the file's midpoint, then drop the connection.
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data[start:max(start, len(data) // 2)])
        self.wfile.flush()
        self.close_connection = True

    def _send_json(self, status: int, payload, method: str = "GET", headers: dict | None = None) -> None:
        headers = {"Content-Type": "application/json", **(headers or {})}
        self._send(status, json.dumps(payload).encode(), method, headers)

    def _send(self, status: int, body: bytes, method: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)
