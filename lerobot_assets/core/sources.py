"""Pinning a dataset source to an exact revision and keeping a local copy of it.

A source is either a Hugging Face Hub dataset repo id (resolved to a commit sha and downloaded with
``snapshot_download(revision=sha)``) or a local directory (its git HEAD when its files are exactly
those committed, else a content hash of its files). A local directory's copy lives under
``<home>/sources/<name>/<revision>``: a copy of the bytes, never a hard link, written atomically (a
failed copy leaves nothing a later run could mistake for a complete pin) and checked against
what was copied before each use. Hashes of files already seen are cached by size, mtime and inode
in ``<home>/sources/<name>/.records/``, so checking an unchanged directory reads no file.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from lerobot_assets.core.errors import LeRobotAssetsError
from lerobot_assets.core.files import write_text
from lerobot_assets.core.table.registry import DatasetSource

log = logging.getLogger(__name__)


#: A Hub repo id: ``org/name`` with the characters the Hub allows.
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


class SourceError(LeRobotAssetsError):
    """A source cannot be resolved or copied."""


@dataclass(frozen=True)
class PinnedSource:
    """A local copy of a source at one revision."""

    revision: str
    path: Path
    files: int
    bytes: int
    hashed_bytes: int  # of the source and the pin, read to check them


def classify_source(source: str) -> str:
    """``"local"`` for an existing directory, ``"hub"`` for something shaped like ``org/name``.

    Anything that looks like a path (``./x``, ``../x``, ``/x``, ``~/x``, or two or more separators) is
    a local directory or an error naming it: a mistyped path is never sent to the Hub.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return "local"
    if _looks_like_path(source):
        shown = repr(source) if path.is_absolute() else f"{source!r} ({path.absolute()})"
        raise SourceError(f"{'not a directory' if path.exists() else 'no such directory'}: {shown}")
    if _REPO_ID.fullmatch(source) and ".." not in source:
        return "hub"
    raise SourceError(
        f"source {source!r} is neither an existing directory nor a Hub dataset repo id like 'lerobot/pusht'"
    )


def _looks_like_path(source: str) -> bool:
    separators = [s for s in (os.sep, os.altsep) if s]
    starts = tuple(f"{prefix}{s}" for prefix in (".", "..") for s in separators) + tuple(separators) + ("~",)
    return source in (".", "..") or source.startswith(starts) or sum(source.count(s) for s in separators) > 1


@dataclass(frozen=True)
class HubSettings:
    """How to reach the Hub. ``None`` fields fall back to huggingface_hub's own environment handling
    (``HF_TOKEN``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``)."""

    endpoint: str | None = None
    token: str | None = None
    offline: bool = False


def latest_revision(source: DatasetSource, hub: HubSettings, cache: Path | None = None) -> str:
    """The revision ``source`` resolves to now, used by the sensor: no download, and for a local
    directory only the files whose size, mtime or inode changed since ``cache`` (the dataset's
    ``<home>/sources/<name>``) last saw them are read."""
    if source.kind == "hub":
        return _hub_revision(source, hub)
    path = _local_directory(source)
    return _local_revision(path, cache)[0]


def pin(source: DatasetSource, cache: Path, hub: HubSettings) -> PinnedSource:
    """Resolve ``source`` to an exact revision and return a local copy pinned to it.

    A local pin is an independent copy (never a hard link, so an edit of the source cannot reach it)
    and is checked against what was copied before each use: a pin that differs is copied again.
    """
    if source.kind == "hub":
        return _pin_hub(source, cache, hub)
    path = _local_directory(source)
    revision, content = _local_revision(path, cache)
    target = cache / revision
    record = cache / _RECORDS / f"{revision}.json"
    intact = _intact_pin(cache, revision)
    if intact is not None:
        return replace(intact, hashed_bytes=_hashed(content) + intact.hashed_bytes)
    if target.is_dir():
        log.warning("%s: the pinned copy of revision %s differs from what was copied; copying it again", path, revision)
        stale = target.with_name(f".{revision}.stale.{os.getpid()}")
        try:
            target.rename(stale)
        except FileNotFoundError:  # a concurrent run moved it first
            pass
        shutil.rmtree(stale, ignore_errors=True)
    with _atomic_dir(target) as tmp:
        if content is None:
            _git_export(path, revision, tmp)
        else:
            _copy_files(path, tmp, _home_inside(path, cache))
        copied = directory_revision(tmp, record)  # keys are relative paths and inodes survive the rename
        if content is not None and copied.revision != content.revision:
            raise SourceError(f"{str(path)!r} changed while it was being copied; run again")
        _write_json(record, {**_read_record(record), "content": copied.revision})
    return PinnedSource(revision, target, copied.files, copied.bytes, _hashed(content) + copied.hashed_bytes)


def pin_revision(source: DatasetSource, revision: str, cache: Path, hub: HubSettings) -> PinnedSource:
    """This machine's copy of ``source`` at ``revision``, pinned here if it is not yet: a run may land
    on a machine that has never seen the dataset. A Hub source is downloaded at that commit; a local
    source is copied from its path, which must hold the same files on every machine that runs
    episodes (a shared file system), or the run is refused."""
    if source.kind == "hub":
        at_revision = replace(source, revision=revision)
        if not hub.offline:
            try:  # already downloaded here: no request to the Hub
                return _pin_hub(at_revision, cache, replace(hub, offline=True))
            except SourceError:
                pass
        return _pin_hub(at_revision, cache, hub)
    intact = _intact_pin(cache, revision)
    if intact is not None:
        return intact
    pinned = pin(source, cache, hub)
    if pinned.revision != revision:
        raise SourceError(
            f"dataset {source.name!r}: {source.source!r} is at revision {pinned.revision[:12]} here, not at "
            f"{revision[:12]}, the revision hf_snapshot pinned: it changed since, or this machine sees other files "
            "at that path; materialize hf_snapshot again"
        )
    return pinned


def _intact_pin(cache: Path, revision: str) -> PinnedSource | None:
    """The local pin of ``revision`` if it holds exactly what was copied into it."""
    target, record = cache / revision, cache / _RECORDS / f"{revision}.json"
    if not target.is_dir():
        return None
    check = directory_revision(target, record)
    if check.revision != _read_record(record).get("content"):
        return None
    return PinnedSource(revision, target, check.files, check.bytes, check.hashed_bytes)


def _local_directory(source: DatasetSource) -> Path:
    path = Path(source.source).expanduser().absolute()
    if not path.is_dir():
        raise SourceError(f"dataset {source.name!r}: no such directory: {str(path)!r}")
    return path


def _local_revision(path: Path, cache: Path | None) -> tuple[str, DirectoryRevision | None]:
    """The revision of a local directory, and its content when that is what the revision names.

    The git HEAD sha names the directory only when its files are exactly those committed: no
    modified or untracked file below it (ignored files are not part of it, and are not copied).
    Otherwise the revision is the content hash of the directory as it is (what a plain directory
    gets), so an uncommitted edit is ingested and seen as a change, and committing exactly those
    files later changes the revision but no fingerprint.
    """
    head = _git_head(path)
    if head is not None:
        if _git(path, "status", "--porcelain", "--untracked-files=all", "--", ".") == "":
            return head, None
        log.warning("%s differs from git HEAD %s (uncommitted or untracked files): pinned by content", path, head[:12])
    record = None if cache is None else cache / _RECORDS / "source.json"
    content = directory_revision(path, record, _home_inside(path, cache))
    return content.revision, content


def _home_inside(root: Path, cache: Path | None) -> Path | None:
    """The directory of ``root`` that holds the pins in ``cache``: a home kept inside the dataset
    (``lerobot-assets ingest .`` with the default ``./.lerobot_assets``). It is not part of the
    dataset, and would change at every run: it is neither hashed nor copied."""
    if cache is None:
        return None
    try:
        relative = cache.resolve().relative_to(root.resolve())
    except ValueError:
        return None
    return root / relative.parts[0] if relative.parts else None


def _hashed(content: DirectoryRevision | None) -> int:
    return content.hashed_bytes if content is not None else 0


def _describe(revision: str, path: Path) -> PinnedSource:
    files = [p for p in path.rglob("*") if p.is_file()]
    return PinnedSource(revision, path, len(files), sum(p.stat().st_size for p in files), 0)


class _atomic_dir:
    """Build a directory under a temporary name and rename it into place only on success."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.tmp.rename(self.target)
                return
            except OSError:
                if not self.target.is_dir():  # a concurrent run may have finished the same copy first
                    raise
        shutil.rmtree(self.tmp, ignore_errors=True)


#: Where a dataset's pins keep their records, beside the pins: ``source.json`` (file hashes of the
#: source directory) and ``<revision>.json`` (what was copied into that pin, and its file hashes).
_RECORDS = ".records"

#: A file hashed less than this long after it was last modified may be modified again within the
#: filesystem's timestamp granularity (2 s on FAT and some network filesystems) without its mtime
#: changing: its cached hash is not trusted, and it is hashed again next time (git's "racy" files).
_RACY_NS = 2_000_000_000


@dataclass(frozen=True)
class DirectoryRevision:
    """The content hash of a directory, and how much of it had to be read to compute it."""

    revision: str
    files: int
    bytes: int
    hashed_files: int
    hashed_bytes: int


def directory_revision(root: Path, record: Path | None = None, skip: Path | None = None) -> DirectoryRevision:
    """A sha256 over every file's relative path and content: the revision of a plain directory.

    It covers exactly the files :func:`pin` copies (:func:`_files`: symlinks followed, ``skip`` not
    entered). A file whose size, mtime and inode match the hash cached in ``record`` is not read
    again. The cache is only an accelerator: anything it does not vouch for (another machine, a
    moved home, a recent or changed file) is hashed, and a lost or damaged record costs one full read.
    """
    saved = _read_record(record).get("files", {}) if record is not None else {}
    now = time.time_ns()
    digest = hashlib.sha256()
    files: dict[str, list] = {}
    hashed_files = hashed_bytes = total = 0
    for relative, path in _files(root, skip):
        st = path.stat()
        key = [st.st_size, st.st_mtime_ns, st.st_ino]
        entry = saved.get(relative)
        if not (isinstance(entry, list) and len(entry) == 5 and entry[:3] == key and entry[3] - key[1] >= _RACY_NS):
            with path.open("rb") as handle:
                entry = [*key, now, hashlib.file_digest(handle, "sha256").hexdigest()]
            hashed_files, hashed_bytes = hashed_files + 1, hashed_bytes + st.st_size
        files[relative] = entry
        total += st.st_size
        digest.update(relative.encode() + b"\0" + bytes.fromhex(entry[4]))
    if record is not None and files != saved:
        _write_json(record, {**_read_record(record), "files": files})
    return DirectoryRevision(digest.hexdigest(), len(files), total, hashed_files, hashed_bytes)


def _files(root: Path, skip: Path | None = None) -> list[tuple[str, Path]]:
    """Every regular file below ``root`` as (relative POSIX path, path), in path order, following
    symlinked files and directories as the copy does (a symlink loop is an error, a dangling
    symlink is skipped with a warning: neither can be copied)."""
    found: list[tuple[str, Path]] = []
    skipped = {(st.st_dev, st.st_ino) for st in [_stat(skip)] if st is not None}

    def visit(directory: Path, prefix: str, ancestors: frozenset[tuple[int, int]]) -> None:
        with os.scandir(directory) as entries:
            for entry in entries:
                path = Path(entry.path)
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    log.warning("skipping %s: a symlink to nothing", path)
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if (st.st_dev, st.st_ino) in skipped:
                        continue
                    if (st.st_dev, st.st_ino) in ancestors:
                        raise SourceError(f"{str(path)!r} is a symlink loop (it leads back to a directory above it)")
                    visit(path, f"{prefix}{entry.name}/", ancestors | {(st.st_dev, st.st_ino)})
                elif stat.S_ISREG(st.st_mode):
                    found.append((prefix + entry.name, path))

    st = root.stat()
    visit(root, "", frozenset({(st.st_dev, st.st_ino)}))
    return sorted(found, key=lambda item: item[0].split("/"))


def _copy_files(source: Path, target: Path, skip: Path | None) -> None:
    """Copy what :func:`_files` lists, keeping mtimes: bytes, never a hard link (an in-place edit of the
    source must not reach the pin). ``copy_file_range`` lets the kernel copy within the filesystem,
    and share the blocks (a reflink) where it supports that, as Btrfs and XFS do."""
    for relative, path in _files(source, skip):
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        with path.open("rb") as src, destination.open("xb") as dst:
            try:
                while os.copy_file_range(src.fileno(), dst.fileno(), 1 << 30):
                    pass
            except (AttributeError, OSError):  # no copy_file_range (not Linux) or not between these files
                src.seek(0)
                dst.seek(0)
                dst.truncate()
                shutil.copyfileobj(src, dst, 1 << 20)
            st = os.fstat(src.fileno())
        os.utime(destination, ns=(st.st_atime_ns, st.st_mtime_ns))


def _stat(path: Path | None) -> os.stat_result | None:
    try:
        return path.stat() if path is not None else None
    except OSError:
        return None


def _read_record(path: Path | None) -> dict:
    try:
        data = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, separators=(",", ":")))


def _git(path: Path, *args: str, binary: bool = False) -> str | bytes | None:
    try:
        result = subprocess.run(["git", "-C", str(path), *args], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout if binary else result.stdout.decode().strip()


def _git_head(path: Path) -> str | None:
    """HEAD's sha when ``path`` has files committed in a git repository, else None.

    A directory inside a work tree but not tracked (e.g. ignored, like the demo's sample under
    ``.lerobot_assets/``) is pinned by content instead.
    """
    if _git(path, "rev-parse", "--is-inside-work-tree") != "true" or not _git(path, "ls-files", "--", "."):
        return None
    return _git(path, "rev-parse", "--verify", "HEAD")


def _git_export(path: Path, sha: str, target: Path) -> None:
    """Write the files of ``path`` as committed at ``sha`` into ``target``.

    ``git archive`` runs at the top of the work tree: run in a subdirectory, it limits the archive
    to that subdirectory once more and fails on ``<sha>:<prefix>`` ("current working directory is
    untracked").
    """
    prefix = _git(path, "rev-parse", "--show-prefix") or ""
    top = _git(path, "rev-parse", "--show-toplevel")
    data = top and _git(Path(top), "archive", "--format=tar", f"{sha}:{prefix}" if prefix else sha, binary=True)
    if not data:
        raise SourceError(f"cannot export {str(path)!r} at commit {sha} with git archive")
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(target, filter="data")


def _hub_api(hub: HubSettings):
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub.endpoint, token=hub.token)


def _hub_errors() -> tuple[type[BaseException], ...]:
    """Errors meaning "the Hub cannot give us this now". huggingface_hub's own errors are all ``OSError``s; the
    network errors of its HTTP client are not (httpx2 in huggingface_hub 2.x, httpx in 1.x; requests in 0.x raises
    ``OSError`` subclasses)."""
    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).HTTPError)
        except ImportError:
            pass
    return tuple(errors)


def _hub_offline(hub: HubSettings) -> bool:
    return hub.offline or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _hub_revision(source: DatasetSource, hub: HubSettings) -> str:
    if _hub_offline(hub):
        raise SourceError(
            f"dataset {source.name!r}: cannot resolve Hub repo {source.source!r} at revision "
            f"{source.revision or 'main'}: offline mode is on (HubSettings.offline or HF_HUB_OFFLINE)"
            + _no_local_directory(source.source)
        )
    try:
        info = _hub_api(hub).dataset_info(source.source, revision=source.revision)
    except _hub_errors() as exc:
        raise SourceError(
            f"dataset {source.name!r}: cannot resolve Hub repo {source.source!r} at revision "
            f"{source.revision or 'main'}: {type(exc).__name__}: {_first_line(exc)}"
            + _no_local_directory(source.source)
        ) from None
    return info.sha


def _no_local_directory(repo_id: str) -> str:
    """A hint for ``datasets/pusth``: shaped like a repo id, but its first part is a local directory."""
    return f"; nor is it a local directory: no such directory: {repo_id!r}" if Path(repo_id).parent.is_dir() else ""


def _pin_hub(source: DatasetSource, cache: Path, hub: HubSettings) -> PinnedSource:
    from huggingface_hub import snapshot_download

    offline = _hub_offline(hub)
    revision = source.revision if offline else _hub_revision(source, hub)
    try:
        path = snapshot_download(
            source.source,
            repo_type="dataset",
            revision=revision,
            cache_dir=str(cache / "hf_cache"),
            endpoint=hub.endpoint,
            token=hub.token,
            local_files_only=offline,
        )
    except _hub_errors() as exc:
        raise SourceError(
            f"dataset {source.name!r}: download of Hub repo {source.source!r} at {revision or 'main'} failed: "
            f"{type(exc).__name__}: {_first_line(exc)}" + _no_local_directory(source.source)
        ) from None
    if not offline:
        _record_ref(Path(path).parents[1], source.revision or "main", revision)
    return _describe(Path(path).name, Path(path))


def _record_ref(storage: Path, ref: str, sha: str) -> None:
    """Let an offline pin of ``ref`` find this snapshot: ``snapshot_download(revision=sha)`` records no ref itself,
    and offline it resolves a branch or tag only through ``<repo cache>/refs/<ref>``."""
    if ref == sha:
        return
    path = storage / "refs" / ref
    write_text(path, sha)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]
