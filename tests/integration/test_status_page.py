"""The status page in a real browser: headless Chromium (Debian's ``chromium``) via Playwright.

A real worker (``driftswitch run``) on the embedded broker serves the page; the tests produce a
scenario's events and drive the page as an operator would: every flag is shown, a guardrail's
chart moves as events arrive, the admin token makes Kill publish a kill on the flags topic (read
back from Kafka), a wrong token shows the API's refusal and publishes nothing. The browser's
network log shows that the page requests nothing outside the worker. Each test saves a
screenshot and names it in the run's summary (``artefact: ...``); with
``DRIFTSWITCH_DOCS_IMAGES=1`` the screenshot also replaces ``docs/img/status-page.png``.

Playwright only drives the system browser (``/usr/bin/chromium``, or ``$DRIFTSWITCH_CHROMIUM``);
it never downloads one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright

from driftswitch.streams.contract.events import Action, CauseKind, FlagChangeEvent
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.tools.broker import EmbeddedBroker
from driftswitch.streams.tools.simulate import Scenario, VariantSpec, config_yaml, simulate
from driftswitch.streams.tools.testing import (
    WorkerProcess,
    event_records,
    flag_changes,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "page-test-token"
CHROMIUM = os.environ.get("DRIFTSWITCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCENARIO = Scenario(
    flag="ranker",
    variants=(
        VariantSpec("control", weight=50, accuracy=0.9),
        VariantSpec("candidate", weight=50, accuracy=0.9, accuracy_after=0.7),
    ),
    requests=4000,
    change_at=2000,
    rate=100.0,
    label_delay=0.5,
    seed=7,
)
#: Events produced at a time: the chart gets a point per batch the worker reads.
PART = 400
GUARDRAIL = """\
      - name: candidate-accuracy
        variant: candidate
        metric: accuracy
        detector: {kind: cusum, baseline: 0.90, target: 0.80, arl0: 10000}
        min_samples: 200
        action: kill
"""
OTHER_FLAGS = """\
  search:
    description: query understanding model
    owner: search-team
    tags: [search, nlp]
    expires: 2099-12-31
    variants:
      alpha: {weight: 60, value: alpha}
      beta: {weight: 40, value: beta}
    default: alpha
  checkout:
    owner: payments
    default: old
    variants:
      old: {weight: 90, value: old}
      new: {weight: 10, value: new}
    rollout:
      variant: new
      steps: [10, 50, 100]
      min_samples: 100
      min_duration: 5m
      metric: accuracy
      margin: 0.05
  banner:
    owner: growth
    temporary: true
    expires: 2020-01-01
    variants:
      old: {weight: 100, value: old}
      new: {weight: 0, value: new}
    default: old
"""


def chromium_path() -> str:
    path = shutil.which(CHROMIUM) or CHROMIUM
    if not Path(path).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install Debian's chromium package "
            "(.ci/run does), or set DRIFTSWITCH_CHROMIUM"
        )
    return path


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Headless system Chromium. Playwright's API is async here: its sync API runs an event loop
    of its own, which the Kafka helpers (``asyncio.run``) cannot share; they run in threads."""
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


def tail(log: Path) -> str:
    return log.read_text()[-4000:]


async def until(what: str, cond: Callable[[], Awaitable[bool]], within: float, log: Path) -> None:
    """Poll ``cond`` until it holds; after ``within`` seconds fail with the worker log's tail."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not reached in {within} s:\n{tail(log)}")


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    text = config_yaml(SCENARIO, GUARDRAIL).replace("  ranker:\n", "  ranker:\n    owner: ml\n")
    path = tmp_path / "driftswitch.yaml"
    path.write_text(text + OTHER_FLAGS)
    return path


def artefact_dir() -> Path:
    path = Path(os.environ.get("DRIFTSWITCH_ARTEFACTS", ROOT / "out" / "artefacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


async def open_page(browser: Browser, worker: WorkerProcess) -> tuple[Page, list[str]]:
    """The page at ``worker``'s ``/``, and the list the browser's requests are logged to."""
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    await page.goto(worker.url + "/")
    return page, requests


async def chart(page: Page, flag: str, guardrail: str) -> dict[str, Any]:
    """What the page's chart of one guardrail shows: its point count and newest event time."""
    svg = page.locator(f'details[data-flag="{flag}"] figure[data-guardrail="{guardrail}"] svg')
    if await svg.count() == 0:
        return {"points": 0, "last_ts": None}
    points = await svg.get_attribute("data-points")
    last = await svg.get_attribute("data-last-ts")
    return {"points": int(points or 0), "last_ts": float(last) if last else None}


def test_page_shows_every_flag_and_a_live_chart_and_requests_only_the_worker(
    broker: EmbeddedBroker,
    topics: Topics,
    config_path: Path,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
    produce: Callable[[list[tuple[str, bytes, bytes]]], None],
    record_artefact: Callable[[Path], None],
) -> None:
    log = tmp_path / "worker.log"
    worker: WorkerProcess = start_worker(config_path, log, env={"DRIFTSWITCH_ADMIN_TOKEN": TOKEN})
    worker.wait_active()
    # Event time ends now: the flag has fresh traffic, as in production.
    live = dataclasses.replace(SCENARIO, start_ts=round(time.time()) - 60)
    events = list(simulate(live))
    shot = artefact_dir() / "status-page.png"

    async def scenario() -> list[str]:
        async with chromium() as browser:
            page, requests = await open_page(browser, worker)
            # Every flag of the config, with its owner and lifecycle state.
            await page.wait_for_selector('details.flag[data-flag="banner"]')
            flags = await page.locator("details.flag").evaluate_all(
                "els => els.map(e => e.dataset.flag)"
            )
            assert flags == ["banner", "checkout", "ranker", "search"]
            banner = await page.locator('details[data-flag="banner"] > summary').inner_text()
            assert "owner: growth" in banner
            assert "expired" in banner
            search = await page.locator('details[data-flag="search"]').inner_text()
            assert "owner: search-team" in search
            assert (await chart(page, "ranker", "candidate-accuracy"))["points"] == 0
            # A rollout's position and gates.
            rollout = await page.locator('details[data-flag="checkout"] p.rollout').inner_text()
            assert "Rollout of new against old" in rollout
            assert "step 1 of 3 (10 %)" in rollout
            assert "Gates: samples 0 of 100 needed" in rollout

            # The statistic chart follows the events as they arrive.
            await asyncio.to_thread(produce, event_records(topics, events[:PART]))

            async def has_points() -> bool:
                return (await chart(page, "ranker", "candidate-accuracy"))["points"] > 0

            await until("the chart shows the first half", has_points, 60, log)
            first = await chart(page, "ranker", "candidate-accuracy")
            # The rest in slices, a little apart, as a live service sends them.
            for start in range(PART, len(events), PART):
                part = events[start : start + PART]
                await asyncio.to_thread(produce, event_records(topics, part))
                await asyncio.sleep(0.3)

            async def moved() -> bool:
                last = (await chart(page, "ranker", "candidate-accuracy"))["last_ts"]
                return (last or 0) > first["last_ts"]

            await until("the chart moves on with the second half", moved, 60, log)

            # The degraded candidate is killed by its guardrail: the page shows alarm and kill.
            ranker = page.locator('details[data-flag="ranker"]')

            async def killed() -> bool:
                return "candidate killed" in await ranker.locator("> summary").inner_text()

            async def alarm_marked() -> bool:
                return await ranker.locator("svg line.breach").count() == 1

            await until("the page shows the kill", killed, 60, log)
            await until("the chart marks the alarm", alarm_marked, 30, log)
            assert "breached" in await ranker.locator("figcaption").inner_text()
            # Under the chart: the guardrail's false-alarm budget in time at the observed traffic.
            budget = await ranker.locator("figure p.budget").inner_text()
            assert budget.startswith("False-alarm budget: one false alarm every ~"), budget
            assert "(observed) for this variant" in budget
            svg = ranker.locator("figure svg")
            # Both read in one script run: the live chart may redraw between two separate reads.
            marks, alarms = await svg.evaluate(
                "s => [s.querySelectorAll('path.alarm').length,"
                " Number(s.getAttribute('data-alarms') || 0)]"
            )
            assert alarms >= 1
            assert marks == alarms
            later = await chart(page, "ranker", "candidate-accuracy")
            assert later["points"] > first["points"]
            await page.screenshot(path=str(shot), full_page=True)
            await page.close()
            return requests

    requests = asyncio.run(scenario())
    record_artefact(shot)
    if os.environ.get("DRIFTSWITCH_DOCS_IMAGES") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "img" / "status-page.png")
    # Nothing outside the worker: every request the browser made went to the worker's origin.
    assert any(u.endswith("/api/v1/status?traces=banner,checkout,ranker,search") for u in requests)
    assert [u for u in requests if not u.startswith(worker.url + "/")] == []


def test_kill_with_the_token_publishes_and_a_wrong_token_changes_nothing(
    broker: EmbeddedBroker,
    topics: Topics,
    config_path: Path,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
    record_artefact: Callable[[Path], None],
) -> None:
    log = tmp_path / "worker.log"
    worker: WorkerProcess = start_worker(config_path, log, env={"DRIFTSWITCH_ADMIN_TOKEN": TOKEN})
    worker.wait_active()
    wait_until(
        "version 1 of every flag is published",
        lambda: len(flag_changes(broker.bootstrap, topics)) == 4,
        timeout=30,
    )
    before = flag_changes(broker.bootstrap, topics)
    shot = artefact_dir() / "status-page-kill.png"

    async def changes() -> list[FlagChangeEvent]:
        return await asyncio.to_thread(flag_changes, broker.bootstrap, topics)

    async def scenario() -> list[str]:
        async with chromium() as browser:
            page, requests = await open_page(browser, worker)
            page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
            search = page.locator('details[data-flag="search"]')
            kill = search.get_by_role("button", name="Kill beta")
            await kill.wait_for()
            message = page.locator("#message")

            # Read-only without a token.
            assert await kill.is_disabled()

            # A wrong token: the API's refusal is shown, nothing is published.
            await page.get_by_label("Admin token").fill("not-the-token")
            assert await kill.is_enabled()
            await kill.click()

            async def refused() -> bool:
                return "refused" in await message.inner_text()

            await until("the refusal is shown", refused, 30, log)
            text = await message.inner_text()
            assert "403 forbidden" in text
            assert "the bearer token is not valid" in text
            assert await changes() == before
            assert "serving" in await search.locator('tr[data-variant="beta"]').inner_text()

            # The right token: Kill publishes the kill on the flags topic.
            await page.get_by_label("Admin token").fill(TOKEN)
            await page.get_by_label("reason for search").fill("bad answers in the beta")
            await kill.click()

            async def applied() -> bool:
                return "applied" in await message.inner_text()

            await until("the kill is applied", applied, 30, log)
            after = await changes()
            assert len(after) == len(before) + 1
            change = after[-1]
            assert (change.flag, change.version) == ("search", 2)
            assert change.cause.kind is CauseKind.MANUAL
            assert change.cause.action is Action.KILL
            assert change.cause.variant == "beta"
            assert change.cause.reason == "bad answers in the beta"
            assert change.actor == "status-page"
            assert change.variants["beta"].killed
            # The page follows: beta is killed and can be restored.
            await search.get_by_role("button", name="Restore beta").wait_for()
            assert "beta killed" in await search.locator("> summary").inner_text()
            # The change history (read from the flags topic) names the cause, actor and reason.
            await search.locator("details.history > summary").click()
            rows = search.locator("details.history tbody tr")

            async def history_loaded() -> bool:
                return await rows.count() == 2 and "loading" not in await rows.first.inner_text()

            await until("the history is shown", history_loaded, 30, log)
            newest = (await rows.first.inner_text()).split("\t")
            assert [c.strip() for c in newest] == [
                "2",
                newest[1].strip(),  # the change time, checked below
                "kill",
                "manual",
                "status-page",
                "–",
                "–",
                "bad answers in the beta",
            ]
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", newest[1].strip())
            await page.screenshot(path=str(shot), full_page=True)
            await page.close()
            return requests

    requests = asyncio.run(scenario())
    record_artefact(shot)
    assert [u for u in requests if not u.startswith(worker.url + "/")] == []


def test_the_page_stays_usable_at_200_flags(
    broker: EmbeddedBroker,
    topics: Topics,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    lines = ["flags:"]
    for i in range(200):
        lines += [
            f"  flag-{i:03d}:",
            f"    owner: team-{i % 7}",
            "    default: a",
            "    variants:",
            "      a: {weight: 50, value: a}",
            "      b: {weight: 50, value: b}",
        ]
    # Text from the config is shown as text, never parsed as HTML (the probe would be fetched).
    lines.insert(2, """    description: 'ranking <img src="/xss-probe">'""")
    config = tmp_path / "many.yaml"
    config.write_text("\n".join(lines) + "\n")
    log = tmp_path / "worker.log"
    worker: WorkerProcess = start_worker(config, log)
    worker.wait_active(timeout=120)

    async def scenario() -> list[str]:
        async with chromium() as browser:
            page, requests = await open_page(browser, worker)
            await page.wait_for_selector(
                'details[data-flag="flag-199"]', state="attached", timeout=60_000
            )
            assert await page.locator("details.flag").count() == 200
            # Folded, so the list is scannable; each opens with the keyboard.
            assert await page.locator("details.flag[open]").count() == 0
            await page.get_by_label("Filter flags").fill("team-3")
            shown = page.locator("details.flag:not([hidden])")

            async def filtered() -> bool:
                return await shown.count() == len(range(3, 200, 7))

            await until("the filter shows one team's flags", filtered, 10, log)
            await shown.locator("summary").first.focus()
            await page.keyboard.press("Enter")
            assert await page.locator("details.flag[open]").count() == 1
            assert await page.locator("details.flag[open]").get_attribute("data-flag") == "flag-003"
            meta = await page.locator('details[data-flag="flag-000"] p.meta').inner_text()
            assert 'ranking <img src="/xss-probe">' in meta
            await page.close()
            return requests

    requests = asyncio.run(scenario())
    assert requests
    assert [u for u in requests if not u.startswith(worker.url + "/")] == []
    assert not [u for u in requests if "xss-probe" in u]
