"""Shared test fixtures: the official v3.0 sample from ../shared, and generated datasets."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURE = REPO.parent / "shared" / "fixtures" / "lerobot_v30_small"


@pytest.fixture(scope="session")
def official_dataset() -> Path:
    """The v3.0 dataset written by the official lerobot library (read-only)."""
    if not (SHARED_FIXTURE / "meta" / "info.json").is_file():
        pytest.fail(f"shared fixture missing at {SHARED_FIXTURE}; CI clones the repo with ../shared beside it")
    return SHARED_FIXTURE


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh lerobot-assets home (Dagster instance, tables, staging) in a temporary directory."""
    root = tmp_path / "home"
    monkeypatch.setenv("LEROBOT_ASSETS_HOME", str(root))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return root


def white_block_x(encoded: bytes | np.ndarray) -> int:
    """x of the white 30x30 block in a frame (its left edge), which encodes the frame index."""
    image = encoded if isinstance(encoded, np.ndarray) else np.asarray(Image.open(io.BytesIO(encoded)))
    gray = image.astype(np.int32).mean(axis=2) if image.ndim == 3 else image
    columns = np.flatnonzero((gray > 235).sum(axis=0) >= 20)
    return int(columns.min()) if len(columns) else -1


os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
