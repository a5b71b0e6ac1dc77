"""Headless Chromium for the UI tests: find it, check that it starts, and drive it with Playwright.

Needs Chromium (``/usr/bin/chromium``) and Playwright for Python; ``tests/support/ui_setup.sh`` installs
both. Without a browser that starts, the tests using these fixtures are skipped with the reason.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import pytest

BROWSER_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
BROWSER_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium executable, once Playwright is importable; skips (with the reason) otherwise."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"Playwright for Python is not installed ({exc}); run tests/support/ui_setup.sh")
    executable = next((p for p in map(shutil.which, BROWSER_CANDIDATES) if p), None)
    if executable is None:
        pytest.skip(f"no Chromium found (looked for {', '.join(BROWSER_CANDIDATES)}); run tests/support/ui_setup.sh")
    # Cheap preflight before any ingest or server: does it render a blank page headless?
    with tempfile.TemporaryDirectory() as profile:
        try:
            probe = subprocess.run(
                [executable, *BROWSER_ARGS, f"--user-data-dir={profile}", "--dump-dom", "about:blank"],
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"Chromium at {executable} does not start headless: {exc}")
    if probe.returncode != 0 or "<body" not in probe.stdout:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"Chromium at {executable} does not start headless (exit {probe.returncode}): {last}")
    return executable


def launch_browser(manager, chromium: str):
    """Chromium started by a running ``sync_playwright()`` manager; skips (with the reason) if it does not start."""
    try:
        return manager.chromium.launch(executable_path=chromium, args=BROWSER_ARGS, timeout=60_000)
    except Exception as exc:  # noqa: BLE001 - any launch failure means: no usable browser here
        manager.stop()
        pytest.skip(f"Chromium at {chromium} does not start headless: {str(exc).splitlines()[0]}")


def skip_community_dialog(page, on_skip=lambda: None) -> None:
    """Dismiss, whenever it shows, the "Join the Dagster community" dialog that a fresh instance's
    first visit puts over everything."""
    community = page.get_by_role("dialog").filter(has_text="Join the Dagster community")

    def skip(*_) -> None:
        on_skip()
        community.get_by_role("button", name="Skip").click()

    page.add_locator_handler(community, skip)
