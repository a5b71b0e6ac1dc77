"""Secrets stay secret: a recognizable HF_TOKEN never reaches output, logs, run metadata or errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lerobot_assets.testing.synthetic import generate_dataset

from tests.support.hub_server import HubServer

TOKEN = "hf_SecretTokenForLeakTest_9f3c2a7e51"


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
                   check=True, capture_output=True)


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lerobot_assets.cli", *args], env=env, capture_output=True,
                          text=True, timeout=600)


def test_hf_token_never_leaks(tmp_path: Path) -> None:
    repo = generate_dataset(tmp_path / "repo", episode_lengths=(6, 7), cameras=("front",), codec="libx264")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "dataset")
    home = tmp_path / "home"
    with HubServer({"lerobot/tiny": repo}, token=TOKEN) as hub:
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.url,
            "HF_TOKEN": TOKEN,
            "HF_HOME": str(tmp_path / "hf"),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "LEROBOT_ASSETS_HOME": str(home),
        }
        ok = _cli(["ingest", "lerobot/tiny", "--name", "tiny", "--workers", "1"], env)
        assert ok.returncode == 0, ok.stderr[-3000:]
        assert '"rows": 13' in ok.stdout.splitlines()[-1]
        assert any(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub.requests)  # it was used
        tagged = _cli(["snapshot", "tiny", "--tag", "t1"], env)
        missing = _cli(["ingest", "lerobot/tiny", "--name", "tiny", "--revision", "no-such-branch"], env)
        hub.fail_status = 500
        down = _cli(["ingest", "lerobot/tiny", "--name", "tiny"], env)
    assert tagged.returncode == 0
    assert missing.returncode == 1 and "no-such-branch" in missing.stderr
    assert down.returncode == 1 and "lerobot/tiny" in down.stderr.splitlines()[-1]
    outputs = [p.stdout + p.stderr for p in (ok, tagged, missing, down)]
    assert all(TOKEN not in text for text in outputs)
    # Every file the runs left behind: Dagster's SQLite run and event storage (all run metadata, logs and
    # tags), compute logs, pickled outputs, the registry, the Deeplake table and the source copies.
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".db") for p in files)
    leaked = [str(p) for p in files if TOKEN.encode() in p.read_bytes()]
    assert leaked == []
