"""The Dagster UI in a real (headless) browser: launch one episode partition by clicking, see its metadata.

Steps (screenshots of each go to ``test-output/ui/``):

1. ingest episodes 0 and 1 of the official sample into a temporary home; episode 2 is then a
   registered partition of the dataset's episode assets that is not materialized;
2. start ``dagster dev`` on that home's instance on a free 127.0.0.1 port, in its own process group,
   and wait until it serves and the code location is loaded;
3. in Chromium: open the asset lineage (three groups: ingest, training, labels), then the ingest group, filter it to the three per-episode assets, click
   "Materialize all…", pick episode ``000002`` in the launch dialog (the dataset's own episodes only), launch;
4. follow the "View" link of the toast to the run, wait until the run succeeded;
5. open ``small/deeplake_table``'s page for partition ``000002`` and check that the latest
   materialization's metadata is rendered: the ``preview`` thumbnail (a decoded ``data:image/jpeg``
   ``<img>``) and ``rows_written`` = 31 (episode 2 of the sample has 31 frames).

Needs Chromium (``/usr/bin/chromium``) and Playwright for Python; ``tests/support/ui_setup.sh`` installs
both. Without a browser that starts, the test is skipped with the reason; anything else fails.
"""

from __future__ import annotations

import re
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.browser import chromium, launch_browser, skip_community_dialog  # noqa: F401 - chromium is a fixture
from tests.support.dagster_server import LOCATIONS, dagster_dev, graphql

REPO = Path(__file__).resolve().parents[2]
_STARTED = time.monotonic()
OUT = REPO / "test-output" / "ui"
DATASET = "small"
EPISODE_KEY = "000002"  # registered by episode_metadata, not materialized by the ingest below
EPISODE_ROWS = 31  # frames of episode 2 in the official sample (101 in total, 70 in episodes 0-1)
EPISODE_ASSETS = ("telemetry_frame", "decoded_camera_frames", "deeplake_table")

RUN_TIMEOUT_S = 120
UI_TIMEOUT_MS = 30_000

pytestmark = pytest.mark.timeout(300)


# --------------------------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser(chromium: str, ui: str):
    """Headless Chromium driven by Playwright; skips (with the reason) only if it does not start.

    Started after ``ui``: Playwright's sync API keeps an asyncio loop on this thread, which the
    in-process ``ingest`` (Dagster's executor) must not see.
    """
    from playwright.sync_api import sync_playwright

    manager = sync_playwright().start()
    chrome = launch_browser(manager, chromium)
    yield chrome
    chrome.close()
    manager.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture(scope="module")
def ui(chromium: str, official_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A home with episodes 0-1 of ``small`` ingested and ``dagster dev`` serving it; yields the base URL."""
    from lerobot_assets.runtime.commands import ingest

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    home = tmp_path_factory.mktemp("ui") / "home"
    result = ingest(str(official_dataset), name=DATASET, home=home, workers=1, episodes=[0, 1])
    assert result["episodes"] == [0, 1], result
    print(f"{time.monotonic() - _STARTED:6.1f} s  ingested episodes 0-1")

    with dagster_dev(home, OUT / "dagster-dev.log") as base:
        print(f"{time.monotonic() - _STARTED:6.1f} s  dagster dev serving at {base}")
        yield base


# --------------------------------------------------------------------------------------------- test


def _shot(page, name: str) -> None:
    """Screenshot ``test-output/ui/<name>.png``; prints the elapsed time (shown by pytest on failure)."""
    page.screenshot(path=str(OUT / f"{name}.png"))
    print(f"{time.monotonic() - _STARTED:6.1f} s  {name}.png")


_RUN = """query($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run { status } } }"""
_RUN_ERRORS = """query($runId: ID!) { logsForRun(runId: $runId) { ... on EventConnection { events {
  __typename ... on MessageEvent { message stepKey }
  ... on ExecutionStepFailureEvent { error { message causes { message } } }
  ... on EngineEvent { error { message } }
  ... on RunFailureEvent { error { message } } } } } }"""


def _wait_for_run(base: str, run_id: str) -> str:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    status = "unknown"
    while time.monotonic() < deadline:
        run = graphql(base, _RUN, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", run
        status = run["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        time.sleep(1)
    return f"{status} (still, after {RUN_TIMEOUT_S} s)"


def _run_errors(base: str, run_id: str) -> str:
    events = graphql(base, _RUN_ERRORS, {"runId": run_id})["logsForRun"].get("events", [])
    lines = []
    for event in events:
        error = event.get("error")
        if error:
            causes = " / ".join(c["message"].strip() for c in error.get("causes") or [])
            lines.append(f"{event['__typename']} {event.get('stepKey') or ''}: {error['message'].strip()} {causes}")
    return "\n".join(lines) or "(no error events)"


def _settle(page) -> None:
    """Let the page's pending GraphQL requests finish (only for nicer screenshots; bounded)."""
    try:
        page.wait_for_load_state("networkidle", timeout=5_000)
    except Exception:  # noqa: BLE001 - the UI polls; a busy network only means a less settled screenshot
        pass


def _pick_partition(page, dialog, key: str) -> None:
    """Choose ``key`` in the first still-empty partition selector of the launch dialog."""
    from playwright.sync_api import expect

    dialog.get_by_text("Select a partition or create one").first.click()
    page.get_by_placeholder("Filter partitions").fill(key)
    page.get_by_role("menuitem").filter(has=page.get_by_text(key, exact=True)).first.click()
    dialog.get_by_text("Launch runs to materialize").click()  # closes the selector's popover
    expect(page.get_by_placeholder("Filter partitions")).to_have_count(0)


def test_materialize_one_episode_partition_from_the_ui(ui: str, page) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=UI_TIMEOUT_MS)
    skip_community_dialog(
        page, lambda: print(f"{time.monotonic() - _STARTED:6.1f} s  dismissed the 'Join the Dagster community' dialog")
    )
    try:
        _drive(ui, page, expect)
    except BaseException:
        _shot(page, "failure")
        (OUT / "failure.html").write_text(page.content())
        raise


def _drive(base: str, page, expect) -> None:
    # 1. the asset graph ---------------------------------------------------------------------------
    page.goto(f"{base}/asset-groups", wait_until="domcontentloaded")
    for group in ("ingest", "training", "labels"):  # one group per use, collapsed in the global lineage
        expect(page.get_by_text(group, exact=True).first).to_be_visible()
    _shot(page, "01_asset_groups")
    location = graphql(base, LOCATIONS)["workspaceOrError"]["locationEntries"][0]["name"]
    page.goto(f"{base}/locations/{urllib.request.quote(location)}/asset-groups/ingest", wait_until="domcontentloaded")
    for key in EPISODE_ASSETS + ("hf_snapshot", "episode_metadata"):
        expect(page.get_by_text(key, exact=True).first).to_be_visible()
    # the live status arrived: episodes 0 and 1 of the dataset's 3 were materialized by the ingest
    expect(page.get_by_text("66% filled").first).to_be_visible()
    _settle(page)
    _shot(page, "02_ingest_group")

    # 2. filter it to the three per-episode assets (the search box is a CodeMirror editor) -----------
    page.locator(".CodeMirror", has=page.get_by_label("Search and filter assets")).click()
    page.keyboard.type(" or ".join(f"key:{DATASET}/{key}" for key in EPISODE_ASSETS))
    page.keyboard.press("Enter")
    expect(page.get_by_text("hf_snapshot", exact=True)).to_have_count(0)
    expect(page.get_by_text("3 partitions").first).to_be_visible()  # the nodes' live data arrived
    _settle(page)
    _shot(page, "03_selection")

    # 3. "Materialize all…" -> launch dialog: dataset small, episode 000002 -------------------------
    page.get_by_role("button", name=re.compile(r"Materialize (all|selected)")).first.click()
    dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize").first
    expect(dialog).to_contain_text(f"Launch runs to materialize {len(EPISODE_ASSETS)} assets")
    _pick_partition(page, dialog, EPISODE_KEY)
    expect(dialog).to_contain_text("1 partition")
    launch = dialog.get_by_role("button", name="Launch 1 run")
    expect(launch).to_be_enabled()
    _shot(page, "04_launch_dialog")
    launch.click()

    # 4. the toast's "View" opens the run; wait (bounded) until it finished ---------------------------
    toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}"))
    expect(toast).to_be_visible()
    _shot(page, "05_run_launched")
    page.get_by_role("button", name="View").or_(page.get_by_role("link", name="View")).first.click()
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))
    run_id = re.search(r"/runs/([0-9a-f-]{36})", page.url).group(1)
    status = _wait_for_run(base, run_id)
    print(f"{time.monotonic() - _STARTED:6.1f} s  run {run_id}: {status}")
    assert status == "SUCCESS", f"run {run_id} ended {status}:\n{_run_errors(base, run_id)}"
    expect(page.get_by_text("Success", exact=True).first).to_be_visible()
    _shot(page, "06_run")

    # 5. deeplake_table's page for the partition: the materialization's metadata ---------------------
    page.goto(
        f"{base}/assets/{DATASET}/deeplake_table?view=partitions&partition={EPISODE_KEY}",
        wait_until="domcontentloaded",
    )
    metadata = page.locator("table", has=page.get_by_text("rows_written", exact=True)).first
    expect(metadata).to_be_visible()
    rows_written = metadata.locator("tr", has=page.get_by_text("rows_written", exact=True))
    expect(rows_written.locator("td").nth(1)).to_have_text(str(EPISODE_ROWS))
    _shot(page, "07_partition_metadata")
    page.screenshot(path=str(OUT / "07_partition_metadata_full.png"), full_page=True)

    # Markdown metadata is behind "[Show Markdown]", which opens a dialog rendering it.
    preview = metadata.locator("tr", has=page.get_by_text("preview", exact=True))
    preview.get_by_text("Show Markdown").click()
    markdown = page.get_by_role("dialog").filter(has_text="preview")
    thumbnail = markdown.locator('img[src^="data:image/jpeg;base64,"]').first
    expect(thumbnail).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumbnail.element_handle())
    width, height = thumbnail.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert width == 160 and height > 0, (width, height)  # preview.THUMBNAIL_WIDTH, decoded by the browser
    _shot(page, "08_preview_markdown")
    thumbnail.screenshot(path=str(OUT / "09_preview_thumbnail.png"))
