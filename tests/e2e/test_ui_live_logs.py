"""A run page shows a running run's log lines as they happen, without a reload, in both ways of
starting the UI: ``lerobot-assets ui`` and ``dagster dev -w workspace.yaml`` (the repository's
``dagster.yaml`` and ``workspace.yaml``, copied into a temporary checkout so that the test never
writes into the repository's default home).

The run is a real one: ``lerobot-assets ingest`` (a separate process, as a user would start it) of a
generated one-episode dataset, recorded in the instance the UI serves. To open the page while the run
is surely still going, the test holds the lease a run holds while it records its events (as a
concurrent run of the dataset would): the episode run decodes and writes, then waits for the lease
before it records its materializations. The test then

1. opens the page of the STARTED run that plans ``deeplake_table``, waits until it shows every event
   the instance holds so far, and records the rows (timestamp, event type or level, message);
2. releases the lock and, with no reload or navigation, waits until the page shows the run's end;
3. checks that the rows now on the page are exactly the run's events in the instance
   (``instance.all_logs``: same order, timestamps, types, log messages), that the new ones were all
   recorded after the page showed the others (so they arrived live), among them the episode's
   materializations (recorded after the release), and that the step's captured stderr
   (Dagster's compute logs) shows its ``wrote N rows`` line in the page's ``stderr`` tab;
4. starts the sensor and reads its first tick's log lines as the UI does (GraphQL), which name the dataset.

On the code before the CLI used Dagster's default storage (its pooled event log kept events in the
SQLite write-ahead log), step 2 failed: the page stayed at the rows it loaded first while the
instance recorded the run's success.

Screenshots and the page's HTML on failure go to ``test-output/ui-live-logs/``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, EventLogEntry, RunsFilter
from filelock import FileLock

from lerobot_assets.core.table.access import table_url
from lerobot_assets.core.table.lease import lease_url
from lerobot_assets.runtime.home import Home
from lerobot_assets.testing.synthetic import generate_dataset
from tests.support.browser import chromium, launch_browser, skip_community_dialog  # noqa: F401 - chromium is a fixture
from tests.support.dagster_server import dagster_command, free_port, graphql, serve, server_env, tail

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "test-output" / "ui-live-logs"
DATASET = "gen"
FRAMES = 40
RUN_START_TIMEOUT_S = 120
RUN_END_TIMEOUT_S = 120
UI_TIMEOUT_MS = 60_000
SERVERS = ("lerobot-assets ui", "dagster dev -w workspace.yaml")
SENSOR = "upstream_revision_sensor"

pytestmark = pytest.mark.timeout(400)


@dataclass(frozen=True)
class Row:
    """One rendered row of a run page's event log."""

    index: int  # position in the page's list
    ms: int  # the event's timestamp, in ms since the epoch
    kind: str  # the Dagster event type (STEP_START, ...) or the level of a log line (INFO, ...)
    message: str


#: The event log rows the page renders (its list is virtualized: the viewport is tall enough for all).
_ROWS_JS = """() => Array.from(document.querySelectorAll('[data-index]')).flatMap(row => {
  const time = row.querySelector('a[href*="focusedTime="]');
  const message = row.querySelector('[class*="messageColumn"]');
  const kind = row.querySelector('[class*="eventTypeColumn"]');
  if (!time || !message || !kind) return [];
  return [{index: Number(row.dataset.index), ms: Number(new URL(time.href).searchParams.get('focusedTime')),
           kind: kind.innerText.trim(), message: message.innerText.trim()}];
}).sort((a, b) => a.index - b.index)"""


def _rows(page) -> list[Row]:
    return [Row(**row) for row in page.evaluate(_ROWS_JS)]


def _shown(entry: EventLogEntry) -> bool:
    """Whether the run page lists this event by default: Dagster's events except the planning ones
    (recorded when the run is created), and log lines from INFO up (DEBUG is filtered out)."""
    if entry.dagster_event is not None:
        return not entry.dagster_event.event_type.name.endswith("_PLANNED")
    return entry.level >= logging.INFO


def _kind(entry: EventLogEntry) -> str:
    return entry.dagster_event.event_type.name if entry.dagster_event else logging.getLevelName(entry.level)


def _matches(row: Row, entry: EventLogEntry) -> bool:
    """Same event: timestamp (to the ms), type or level, and for a log line the message itself."""
    same_time = abs(row.ms - entry.timestamp * 1000) <= 1
    return same_time and row.kind == _kind(entry) and (entry.dagster_event is not None or row.message == entry.user_message)


def _mismatch(rows: list[Row], entries: list[EventLogEntry]) -> str:
    lines = [f"page: {len(rows)} rows, instance: {len(entries)} shown events"]
    for i in range(max(len(rows), len(entries))):
        row = f"{rows[i].ms} {rows[i].kind} {rows[i].message[:60]!r}" if i < len(rows) else "-"
        entry = entries[i] if i < len(entries) else None
        event = f"{entry.timestamp * 1000:.0f} {_kind(entry)} {entry.user_message[:60]!r}" if entry else "-"
        lines.append(f"{'  ' if entry and i < len(rows) and _matches(rows[i], entry) else '!='} {row}  |  {event}")
    return "\n".join(lines)


@dataclass
class Setup:
    """One way of starting the UI, and the home it and the CLI share."""

    home: Path
    cwd: Path
    server: list[str]
    ingest: list[str]  # extra arguments of `lerobot-assets ingest`


def _setup(server: str, tmp_path: Path, port: int) -> Setup:
    listen = ["127.0.0.1", str(port)]
    if server == "lerobot-assets ui":
        home = tmp_path / "home"
        cli_ui = [sys.executable, "-m", "lerobot_assets.cli", "ui", "--home", str(home)]
        return Setup(home, tmp_path, [*cli_ui, "--host", listen[0], "--port", listen[1]], ["--home", str(home)])
    checkout = tmp_path / "checkout"  # the repository's instance settings, run from "its root"
    checkout.mkdir()
    for name in ("dagster.yaml", "workspace.yaml"):
        shutil.copy(REPO / name, checkout / name)
    dev = [*dagster_command(), "dev", "-w", "workspace.yaml", "-h", listen[0], "-p", listen[1]]
    return Setup(checkout / ".lerobot_assets", checkout, dev, [])  # the default home, ./.lerobot_assets


@pytest.fixture
def page(chromium: str) -> Iterator:
    from playwright.sync_api import sync_playwright

    manager = sync_playwright().start()
    browser = launch_browser(manager, chromium)
    context = browser.new_context(viewport={"width": 1600, "height": 3000})
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    skip_community_dialog(page)
    yield page
    context.close()
    browser.close()
    manager.stop()


@pytest.mark.parametrize("server", SERVERS)
def test_run_page_streams_log_lines_live(server: str, page, tmp_path: Path) -> None:
    out = OUT / server.replace(" ", "_")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    source = generate_dataset(tmp_path / "source", episode_lengths=(FRAMES,), cameras=("front",), codec="libx264")
    port = free_port()
    setup = _setup(server, tmp_path, port)
    env = server_env()
    with serve(setup.server, f"http://127.0.0.1:{port}", setup.cwd, env, out / "server.log") as base:
        lock = Path(lease_url(f"{table_url(Home(setup.home).tables, DATASET)}#events"))  # a local lease is an flock
        lock.parent.mkdir(parents=True, exist_ok=True)
        table_lock = FileLock(str(lock))
        table_lock.acquire()
        ingest = [sys.executable, "-m", "lerobot_assets.cli", "ingest", str(source), "--name", DATASET, "--workers", "1"]
        with open(out / "ingest.out", "wb") as stdout, open(out / "ingest.err", "wb") as stderr:
            cli = subprocess.Popen([*ingest, *setup.ingest], cwd=setup.cwd, env=env, stdout=stdout, stderr=stderr)
        try:
            _watch(page, base, setup, cli, table_lock, out)
        except BaseException:
            page.screenshot(path=str(out / "failure.png"))
            (out / "failure.html").write_text(page.content())
            raise
        finally:
            if table_lock.is_locked:
                table_lock.release()
            try:
                cli.wait(timeout=RUN_END_TIMEOUT_S)
            finally:
                if cli.poll() is None:
                    cli.kill()
    result = json.loads((out / "ingest.out").read_text().strip().splitlines()[-1])
    assert cli.returncode == 0 and result["rows"] == FRAMES, (cli.returncode, tail(out / "ingest.err"))


def _blocked_run(setup: Setup, cli: subprocess.Popen, out: Path) -> tuple[DagsterInstance, str]:
    """The instance the CLI records in, and its STARTED run that plans the table (soon waiting for the lease)."""
    config = setup.home / "dagster"
    deadline = time.monotonic() + RUN_START_TIMEOUT_S
    instance = None
    while time.monotonic() < deadline:
        if cli.poll() is not None:
            pytest.fail(f"ingest exited ({cli.returncode}) before its episode run started:\n{tail(out / 'ingest.err')}")
        if instance is None and (config / "dagster.yaml").is_file():
            instance = DagsterInstance.from_config(str(config))
        for run in instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED])) if instance else []:
            planned = instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED)
            if any("deeplake_table" in entry.dagster_event.asset_key.to_user_string() for entry in planned):
                return instance, run.run_id
        time.sleep(0.5)
    pytest.fail(f"no STARTED run planning deeplake_table after {RUN_START_TIMEOUT_S} s:\n{tail(out / 'ingest.err')}")


def _wait_for(what: str, check, timeout_s: float, diagnose=lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout_s:.0f} s. {diagnose()}")
        time.sleep(0.5)


def _watch(page, base: str, setup: Setup, cli: subprocess.Popen, table_lock: FileLock, out: Path) -> None:
    from playwright.sync_api import expect

    instance, run_id = _blocked_run(setup, cli, out)
    url = f"{base}/runs/{run_id}"
    page.goto(url, wait_until="domcontentloaded")

    # 1. the page while the run is going (it cannot end: the lock): the same rows as the instance's events
    def shown() -> list[EventLogEntry]:
        return [entry for entry in instance.all_logs(run_id) if _shown(entry)]

    def consistent() -> bool:
        nonlocal before, so_far, seen
        seen = time.time()
        before = _rows(page)
        so_far = shown()  # read after the page: any event the page does not show yet makes them differ
        return len(before) == len(so_far) and all(map(_matches, before, so_far))

    before, so_far, seen = [], [], 0.0
    _wait_for(
        "the run page shows the events recorded so far", consistent, UI_TIMEOUT_MS / 1000, lambda: _mismatch(before, so_far)
    )
    page.screenshot(path=str(out / "1_running.png"))
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.STARTED
    assert not {"STEP_SUCCESS", "RUN_SUCCESS"} & {row.kind for row in before}
    page.evaluate("() => { window.liveLogsMarker = true }")  # gone if the page reloads

    # 2. let the run finish; the page must follow by itself
    released = time.time()
    table_lock.release()

    def ended() -> bool:
        return any(row.kind in ("RUN_SUCCESS", "RUN_FAILURE") for row in _rows(page))

    _wait_for(
        "the run page shows the end of the run without a reload",
        ended,
        RUN_END_TIMEOUT_S,
        lambda: f"Run status in the instance: {instance.get_run_by_id(run_id).status.value}\n{_mismatch(_rows(page), shown())}",
    )
    after = _rows(page)
    page.screenshot(path=str(out / "2_finished.png"))
    assert page.evaluate("() => window.liveLogsMarker === true") and page.url == url  # no reload, no navigation

    # 3. the rows are the run's events in the instance; the new ones were recorded after the page showed the others
    events = shown()
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.SUCCESS, _mismatch(after, events)
    assert len(after) == len(events) and all(map(_matches, after, events)), _mismatch(after, events)
    new = events[len(before) :]  # recorded after the page showed the others, so they came in live
    assert new and all(entry.timestamp >= seen for entry in new), _mismatch(after, events)
    recorded = [e for e in new if e.dagster_event is not None and e.dagster_event.event_type_value == "ASSET_MATERIALIZATION"]
    assert recorded and all(e.timestamp >= released for e in recorded), [e.user_message for e in new]
    wrote = [e for e in events if e.dagster_event is None and f"wrote {FRAMES} rows" in e.user_message]
    assert wrote, [e.user_message for e in events]
    line = wrote[0].user_message
    print(f"{len(before)} rows before the release, {len(new)} arrived live, among them {len(recorded)} materializations")

    # 4. the captured stderr (compute logs) of the step that logged it, in the page's stderr tab
    page.get_by_role("button", name="stderr").click()
    page.get_by_role("combobox", name="Select a step…").click()
    page.get_by_role("menuitem").filter(has_text=wrote[0].step_key).first.click()
    expect(page.get_by_text(re.compile(rf"INFO - .*{re.escape(line)}")).first).to_be_visible(timeout=UI_TIMEOUT_MS)
    page.screenshot(path=str(out / "3_stderr.png"))

    # 5. the sensor's tick logs (also kept by the compute log manager), as the UI reads them
    messages = _sensor_tick_logs(base)
    assert any(DATASET in message for message in messages), messages
    print(f"sensor tick logged {messages}")


_SENSORS = """{ workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError {
  ... on RepositoryLocation { repositories { name sensors { name } } } } } } } }"""
_START_SENSOR = """mutation($sensor: SensorSelector!) { startSensor(sensorSelector: $sensor) {
  __typename ... on PythonError { message } ... on SensorNotFoundError { message } } }"""
_LAST_TICK = """query($sensor: SensorSelector!) { sensorOrError(sensorSelector: $sensor) { ... on Sensor { sensorState {
  ticks(limit: 1) { status error { message } logEvents { events { message } } } } } } }"""


def _sensor_tick_logs(base: str) -> list[str]:
    """Start the code location's sensor; the log lines of its first tick (evaluated by the daemon)."""
    [location] = graphql(base, _SENSORS)["workspaceOrError"]["locationEntries"]
    [repository] = location["locationOrLoadError"]["repositories"]
    names = [sensor["name"] for sensor in repository["sensors"]]
    assert SENSOR in names, names
    selector = {"repositoryLocationName": location["name"], "repositoryName": repository["name"], "sensorName": SENSOR}
    started = graphql(base, _START_SENSOR, {"sensor": selector})["startSensor"]
    assert started["__typename"] == "Sensor", started
    ticks: list[dict] = []

    def ticked() -> bool:
        nonlocal ticks
        ticks = graphql(base, _LAST_TICK, {"sensor": selector})["sensorOrError"]["sensorState"]["ticks"]
        return bool(ticks) and ticks[0]["status"] != "STARTED"

    _wait_for(f"a finished tick of {SENSOR}", ticked, RUN_END_TIMEOUT_S, lambda: str(ticks))
    assert ticks[0]["status"] in ("SUCCESS", "SKIPPED"), ticks[0]
    return [event["message"] for event in ticks[0]["logEvents"]["events"]]
