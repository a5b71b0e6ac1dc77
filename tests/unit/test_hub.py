"""``lerobot_assets.core.sources`` against a real HTTP Hub look-alike (tests/support/hub_server.py) serving real git repos.

Everything here is real: git repositories made in tmp_path, an HTTP server on 127.0.0.1, and the installed
huggingface_hub client talking to it through ``endpoint=`` (or ``HF_ENDPOINT`` in a subprocess).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import traceback
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from lerobot_assets.core.sources import HubSettings, SourceError, latest_revision, pin
from lerobot_assets.core.table.registry import DatasetSource
from tests.conftest import SHARED_FIXTURE
from tests.support.hub_server import HubServer

REPO_ID = "lerobot/demo"
TOKEN = "hf_test_SECRET_token_0123456789"


# -- fixtures -----------------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No telemetry, no Xet, no hf_transfer, no stored token, no real endpoint; git without user config.

    huggingface_hub reads most variables once, at import, into ``huggingface_hub.constants``: the variables are set
    for code that reads them later (and for subprocesses), and the constants are patched for this process.
    """
    from huggingface_hub import constants

    env = {
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_ENABLE_HF_TRANSFER": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))


@pytest.fixture
def no_retry_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub sleeps 1 s before each of its (up to 5) download resumes; skip the waiting, keep the retries."""
    from huggingface_hub import file_download

    monkeypatch.setattr(file_download, "time", SimpleNamespace(sleep=lambda seconds: None))


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, files: dict[str, bytes | str], message: str) -> str:
    for name, content in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def committed_files(repo: Path, sha: str) -> dict[str, bytes]:
    """Every file of ``repo`` as committed at ``sha`` (what the Hub would serve at that revision)."""
    names = git(repo, "ls-tree", "-r", "--name-only", sha).splitlines()
    return {
        name: subprocess.run(["git", "-C", str(repo), "cat-file", "blob", f"{sha}:{name}"], check=True,
                             capture_output=True).stdout
        for name in names
    }


def tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repo holding the official LeRobot v3.0 sample (meta/, data/, videos/), one commit on ``main``."""
    path = tmp_path / "git" / "demo"
    shutil.copytree(SHARED_FIXTURE, path, copy_function=shutil.copyfile)  # the shared files are read-only
    git(path, "init", "-q", "-b", "main")
    commit(path, {".gitattributes": "*.mp4 binary\n"}, "LeRobot v3.0 sample")
    return path


@pytest.fixture
def hub(repo: Path):
    with HubServer({REPO_ID: repo}) as server:
        yield server


@pytest.fixture
def source() -> DatasetSource:
    return DatasetSource(name="demo", source=REPO_ID, kind="hub", table="mem://demo")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "home" / "sources" / "demo"


def settings(server: HubServer, **kwargs) -> HubSettings:
    return HubSettings(endpoint=server.url, **kwargs)


# -- the server itself -------------------------------------------------------------------------------------------
def test_server_speaks_the_hub_protocol(hub: HubServer, repo: Path) -> None:
    """What the client relies on but these tests would not otherwise show: headers, ranges, listings, errors."""
    head = git(repo, "rev-parse", "HEAD")
    url = f"{hub.url}/datasets/{REPO_ID}/resolve/main/meta/info.json"

    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as response:
        assert response.headers["X-Repo-Commit"] == head
        assert response.headers["ETag"] == f'"{git(repo, "rev-parse", f"{head}:meta/info.json")}"'
        assert int(response.headers["Content-Length"]) == (repo / "meta" / "info.json").stat().st_size
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=10-"})) as response:
        assert response.status == 206 and response.read() == (repo / "meta" / "info.json").read_bytes()[10:]
    with urllib.request.urlopen(f"{hub.url}/api/datasets/{REPO_ID}/tree/{head}/meta") as response:
        listing = json.loads(response.read())
    assert listing == [  # not recursive: the folder itself, not its content
        {"type": "directory", "oid": git(repo, "rev-parse", f"{head}:meta/episodes"), "size": 0,
         "path": "meta/episodes"},
        *({"type": "file", "oid": git(repo, "rev-parse", f"{head}:meta/{name}"),
           "size": (repo / "meta" / name).stat().st_size, "path": f"meta/{name}"}
          for name in ("info.json", "stats.json", "tasks.parquet")),
    ]

    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{hub.url}/datasets/{REPO_ID}/resolve/{head}/nope.json")
    assert missing.value.code == 404 and missing.value.headers["X-Error-Code"] == "EntryNotFound"
    hub.token = TOKEN
    with pytest.raises(urllib.error.HTTPError) as unauthorized:
        urllib.request.urlopen(url)
    assert unauthorized.value.code == 401
    assert hub.counts[f"HEAD /datasets/{REPO_ID}/resolve/main/meta/info.json"] == 1


# -- resolving and pinning ----------------------------------------------------------------------------------------
def test_latest_revision_is_the_head_commit(hub: HubServer, repo: Path, source: DatasetSource) -> None:
    assert latest_revision(source, settings(hub)) == git(repo, "rev-parse", "HEAD")
    assert hub.count("/api/datasets/lerobot/demo", method="GET") == 1
    assert hub.count("/resolve/") == 0  # cheap: no file is touched


def test_pin_downloads_the_files_committed_at_that_sha(
    hub: HubServer, repo: Path, source: DatasetSource, cache: Path
) -> None:
    head = git(repo, "rev-parse", "HEAD")
    snapshot = pin(source, cache, settings(hub))

    assert snapshot.revision == head
    assert snapshot.path.is_relative_to(cache)
    expected = committed_files(repo, head)
    assert tree(snapshot.path) == expected
    assert (snapshot.files, snapshot.bytes) == (len(expected), sum(map(len, expected.values())))
    assert tree(snapshot.path)["meta/info.json"] == (SHARED_FIXTURE / "meta" / "info.json").read_bytes()
    # every file was fetched at the exact sha, never through a branch name
    assert all(f"/resolve/{head}/" in r.path for r in hub.requests if "/resolve/" in r.path)


def test_new_commit_is_a_new_revision_and_old_sha_still_pins_old_content(
    hub: HubServer, repo: Path, source: DatasetSource, cache: Path
) -> None:
    old = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "v1")
    old_files = committed_files(repo, old)
    assert pin(source, cache, settings(hub)).revision == old

    new = commit(repo, {"meta/info.json": '{"codebase_version": "v3.0", "edited": true}\n', "README.md": "# demo\n"},
                 "edit")
    assert new != old
    assert latest_revision(source, settings(hub)) == new
    latest = pin(source, cache, settings(hub))
    assert (latest.revision, tree(latest.path)) == (new, committed_files(repo, new))

    for revision in (old, "v1"):  # by sha and by tag
        pinned = DatasetSource(**{**source.__dict__, "revision": revision})
        assert latest_revision(pinned, settings(hub)) == old
        snapshot = pin(pinned, cache, settings(hub))
        assert (snapshot.revision, tree(snapshot.path)) == (old, old_files)
        assert "README.md" not in tree(snapshot.path)


def test_unknown_revision_is_a_source_error(hub: HubServer, source: DatasetSource, cache: Path) -> None:
    missing = DatasetSource(**{**source.__dict__, "revision": "no-such-branch"})
    with pytest.raises(SourceError, match=r"dataset 'demo'.*'lerobot/demo'.*no-such-branch"):
        pin(missing, cache, settings(hub))
    unknown = DatasetSource(name="other", source="lerobot/other", kind="hub", table="mem://other")
    with pytest.raises(SourceError, match=r"dataset 'other'.*'lerobot/other'"):
        latest_revision(unknown, settings(hub))


# -- tokens -------------------------------------------------------------------------------------------------------
def _full_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)) + repr(error.args)


def test_token_is_sent_and_never_leaked(hub: HubServer, repo: Path, source: DatasetSource, cache: Path) -> None:
    hub.token = TOKEN
    snapshot = pin(source, cache, settings(hub, token=TOKEN))
    assert snapshot.revision == git(repo, "rev-parse", "HEAD")
    assert hub.requests and all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub.requests)

    with pytest.raises(SourceError) as missing:  # the server wants a token, none is given
        latest_revision(source, settings(hub))
    wrong = "hf_WRONG_token_9876543210"
    with pytest.raises(SourceError) as rejected:
        pin(source, cache / "other", settings(hub, token=wrong))
    hub.fail_status = 500
    with pytest.raises(SourceError) as failed:
        pin(source, cache / "other", settings(hub, token=TOKEN))

    for error, secret in ((missing.value, TOKEN), (rejected.value, wrong), (failed.value, TOKEN)):
        assert "lerobot/demo" in str(error)
        assert secret not in _full_text(error)
        assert TOKEN not in _full_text(error)
    assert "401" in str(rejected.value) and "500" in str(failed.value)


# -- failures -----------------------------------------------------------------------------------------------------
def test_server_error_is_a_source_error_naming_dataset_and_repo(
    hub: HubServer, source: DatasetSource, cache: Path
) -> None:
    hub.fail_status = 500
    for call in (lambda: latest_revision(source, settings(hub)), lambda: pin(source, cache, settings(hub))):
        with pytest.raises(SourceError) as error:
            call()
        message = str(error.value)
        assert "'demo'" in message and "'lerobot/demo'" in message and "500" in message
    assert not (cache / "hf_cache").exists() or not list((cache / "hf_cache").rglob("snapshots/*/*"))


def test_a_download_resumed_after_a_cut_has_the_right_content(
    hub: HubServer, repo: Path, source: DatasetSource, cache: Path, no_retry_wait: None
) -> None:
    hub.cut_downloads = 2  # two responses drop at their file's midpoint; the client retries them
    snapshot = pin(source, cache, settings(hub))
    expected = committed_files(repo, snapshot.revision)
    assert tree(snapshot.path) == expected
    assert hub.count("/resolve/", method="GET") == len(expected) + 2


def _cut_download(hub: HubServer, source: DatasetSource, cache: Path, only: str | None = None) -> BaseException:
    hub.cut_downloads, hub.cut_only = 10**6, only  # each response drops at the file's midpoint, retries included
    with pytest.raises(Exception) as error:
        pin(source, cache, settings(hub))
    hub.cut_downloads, hub.cut_only = 0, None
    return error.value


def test_a_cut_download_is_a_source_error(hub: HubServer, source: DatasetSource, cache: Path, no_retry_wait) -> None:
    error = _cut_download(hub, source, cache)
    assert isinstance(error, SourceError), f"{type(error).__module__}.{type(error).__name__}: {error}"
    assert "'demo'" in str(error) and "'lerobot/demo'" in str(error)


def test_a_cut_download_leaves_nothing_a_later_pin_would_reuse(
    hub: HubServer, repo: Path, source: DatasetSource, cache: Path, no_retry_wait: None
) -> None:
    head = git(repo, "rev-parse", "HEAD")
    _cut_download(hub, source, cache, only="meta/episodes/")  # every other file arrives whole

    expected = committed_files(repo, head)
    snapshot_dir = cache / "hf_cache" / "datasets--lerobot--demo" / "snapshots" / head
    partial = tree(snapshot_dir)
    assert sorted(partial) == sorted(name for name in expected if not name.startswith("meta/episodes/"))
    assert all(content == expected[name] for name, content in partial.items())  # no truncated file in it
    # offline, the half-filled snapshot is refused rather than served as if complete
    pinned = DatasetSource(**{**source.__dict__, "revision": head})
    with pytest.raises(SourceError, match="incomplete|Cannot find"):
        pin(pinned, cache, settings(hub, offline=True))

    snapshot = pin(source, cache, settings(hub))  # healthy again: completes the snapshot
    assert (snapshot.revision, tree(snapshot.path)) == (head, expected)


# -- offline ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["settings", "HF_HUB_OFFLINE"])
def test_offline_reuses_the_cache_without_contacting_the_hub(
    how: str, hub: HubServer, repo: Path, source: DatasetSource, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = git(repo, "rev-parse", "HEAD")
    online = pin(source, cache, settings(hub))
    hub.reset_counts()
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = settings(hub, offline=how == "settings")

    pinned = DatasetSource(**{**source.__dict__, "revision": head})
    snapshot = pin(pinned, cache, offline)
    assert (snapshot.revision, snapshot.path, tree(snapshot.path)) == (head, online.path, tree(online.path))
    assert hub.requests == []

    other = DatasetSource(name="other", source="lerobot/other", kind="hub", table="mem://other")
    with pytest.raises(SourceError, match="'other'"):  # never downloaded: nothing to reuse
        pin(other, cache, offline)
    assert hub.requests == []


@pytest.mark.parametrize("how", ["settings", "HF_HUB_OFFLINE"])
def test_offline_reuses_the_cache_for_a_source_without_revision(
    how: str, hub: HubServer, source: DatasetSource, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    online = pin(source, cache, settings(hub))
    hub.reset_counts()
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = pin(source, cache, settings(hub, offline=how == "settings"))
    assert (snapshot.revision, snapshot.path) == (online.revision, online.path)
    assert hub.requests == []


def test_latest_revision_offline_does_not_contact_the_hub(hub: HubServer, source: DatasetSource) -> None:
    try:
        latest_revision(source, settings(hub, offline=True))
    except SourceError:
        pass
    assert hub.requests == []


def test_unreachable_hub_is_a_source_error(source: DatasetSource) -> None:
    server = HubServer().start()
    url = server.url
    server.stop()  # nothing listens on that port any more
    with pytest.raises(SourceError, match="'lerobot/demo'"):
        latest_revision(source, HubSettings(endpoint=url))


# -- configuration through the environment, as a deployment does it ----------------------------------------------
def test_endpoint_and_token_from_environment(hub: HubServer, repo: Path, tmp_path: Path) -> None:
    """``HubSettings()`` defers to HF_ENDPOINT / HF_TOKEN, which huggingface_hub reads when it is imported."""
    hub.token = TOKEN
    script = textwrap.dedent(f"""
        from pathlib import Path
        from lerobot_assets.core.sources import HubSettings, latest_revision, pin
        from lerobot_assets.core.table.registry import DatasetSource
        source = DatasetSource(name="demo", source={REPO_ID!r}, kind="hub", table="mem://demo")
        print(latest_revision(source, HubSettings()))
        print(pin(source, Path({str(tmp_path / "cache")!r}), HubSettings()).path)
    """)
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN}
    env.pop("HF_HUB_DISABLE_IMPLICIT_TOKEN")  # the token must come from HF_TOKEN here
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    revision, path = result.stdout.split()
    head = git(repo, "rev-parse", "HEAD")
    assert revision == head and Path(path).name == head
    assert tree(Path(path)) == committed_files(repo, head)
    assert hub.requests and all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub.requests)


def test_untracked_directory_inside_a_git_work_tree_is_pinned_by_content(tmp_path: Path) -> None:
    """Like the demo's sample under an ignored .lerobot_assets/ in this repository's own checkout."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("samples/\n")
    dataset = tmp_path / "samples" / "ds"
    (dataset / "meta").mkdir(parents=True)
    (dataset / "meta" / "info.json").write_text("{}")
    source = DatasetSource(name="ds", source=str(dataset), kind="local", table="unused")
    snapshot = pin(source, tmp_path / "cache", HubSettings())
    assert (snapshot.path / "meta" / "info.json").read_text() == "{}"
    assert snapshot.revision == latest_revision(source, HubSettings()) and len(snapshot.revision) == 64
