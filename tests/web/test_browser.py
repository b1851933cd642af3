"""The dashboard in a real Chromium (Playwright) against a real gateway in front of the real services.

The fleet: organizations/acme with site "gw", whose edge holds an EdgeLink stream open and has pushed a
grid power sample, and site "north", whose edge never connected. The browser logs in, sees both with
their state and power, switches site and organization views, refreshes its tokens before they expire,
fits a phone's width and logs out (which revokes the session on the server).

The browser is the system's Chromium (Debian's `chromium`, installed by .ci/run), or Playwright's own
download when that is present; with neither the tests fail saying so, they never skip.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from gateway.config import GatewayConfig
from gateway.server import running_gateway
from tests.support.cloud import new_edge
from tests.support.edge_client import EdgeStream, batch, hello
from tests.support.gateway import USER_EMAIL, USER_PASSWORD, create_user, hosted

GRID_POWER_W = -1500.0  # exporting 1.5 kW; "meter/GridPower" is channel 2 of the test hello's table
TIMEOUT_MS = 15_000


@dataclass
class Dashboard:
    url: str
    browser: Browser
    artifacts: Path


def chromium_executable() -> str | None:
    """The system's Chromium; None means Playwright's own download (checked at launch)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
async def dashboard(migrated_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Dashboard]:
    conn = await asyncpg.connect(migrated_url)
    try:
        gw, _, gw_key = await new_edge(conn, "gw")
        await new_edge(conn, "north", time_zone="Europe/Berlin")
    finally:
        await conn.close()
    await create_user(migrated_url, "acme")
    async with hosted(migrated_url) as (port, _):
        stream = EdgeStream(port)
        try:
            await stream.send(hello(str(gw), gw_key))
            assert (await stream.recv()).WhichOneof("message") == "welcome"
            now = time.time()
            await stream.send(batch(1, now, [(2, 0, GRID_POWER_W), (0, 0, 61.0)]))
            await stream.recv_ack()
            config = GatewayConfig(target=f"127.0.0.1:{port}", host="127.0.0.1", port=0)
            async with running_gateway(config) as http_port, async_playwright() as pw:
                executable = chromium_executable()
                try:
                    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
                    browser = await pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
                except Exception as exc:  # any launch failure gets the same advice
                    pytest.fail(
                        "no Chromium for the dashboard tests: install Debian's `chromium` (as root: "
                        "apt-get install -y chromium; .ci/run does it) or run `playwright install chromium`"
                        f" ({type(exc).__name__}: {str(exc).splitlines()[0]})"
                    )
                artifacts = tmp_path_factory.mktemp("dashboard-screenshots")
                (artifacts / "browser.txt").write_text(f"{executable or 'playwright chromium'} {browser.version}\n")
                try:
                    yield Dashboard(f"http://127.0.0.1:{http_port}", browser, artifacts)
                finally:
                    await browser.close()
        finally:
            await stream.close()


@pytest.fixture
async def page(dashboard: Dashboard) -> AsyncIterator[Page]:
    context = await dashboard.browser.new_context(locale="en-US", timezone_id="UTC")
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        await context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


async def log_in(page: Page, url: str, password: str = USER_PASSWORD) -> None:
    await page.goto(url + "/")
    await page.get_by_label("E-mail address").fill(USER_EMAIL)
    await page.get_by_label("Password").fill(password)
    await page.get_by_label("Password").press("Enter")  # the keyboard submits the form


async def stored_session(page: Page) -> dict[str, object]:
    raw = await page.evaluate("localStorage.getItem('emma.session')")
    assert isinstance(raw, str), "no session in localStorage"
    session = json.loads(raw)
    assert isinstance(session, dict)
    return session


async def test_login_shows_the_fleet_with_state_and_power_then_logout_revokes_the_session(
    dashboard: Dashboard, page: Page
) -> None:
    await log_in(page, dashboard.url)
    await expect(page).to_have_url(f"{dashboard.url}/organizations/acme")
    await expect(page.get_by_role("heading", name="Fleet overview")).to_be_visible()
    gw = page.locator("tr[data-site=gw]")
    await expect(gw).to_contain_text("online")
    await expect(gw).to_contain_text("-1.5 kW")
    north = page.locator("tr[data-site=north]")
    await expect(north).to_contain_text("never connected")
    await expect(page.locator(".totals")).to_contain_text("2")
    await page.screenshot(path=dashboard.artifacts / "fleet.png", full_page=True)

    session = await stored_session(page)
    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_role("heading", name="Log in to EMMA")).to_be_visible()
    await expect(page.get_by_role("status")).to_contain_text("logged out")
    assert await page.evaluate("localStorage.getItem('emma.session')") is None
    # Logout revoked the session on the server: its refresh token no longer works anywhere.
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        r = await client.post("/v1/auth:refresh", json={"refreshToken": session["refreshToken"]})
    assert r.status_code == 401, r.text


async def test_a_wrong_password_is_refused_in_words(dashboard: Dashboard, page: Page) -> None:
    await log_in(page, dashboard.url, password="not the password at all")
    await expect(page.get_by_role("alert")).to_contain_text("the e-mail address or the password is wrong")
    await page.screenshot(path=dashboard.artifacts / "login-error.png")


async def test_the_site_switcher_opens_a_site_and_a_reload_keeps_the_page(dashboard: Dashboard, page: Page) -> None:
    await log_in(page, dashboard.url)
    await expect(page.locator("tr[data-site=gw]")).to_be_visible()
    await page.get_by_label("Site").select_option("gw")
    await expect(page).to_have_url(f"{dashboard.url}/organizations/acme/sites/gw")
    await expect(page.get_by_role("heading", level=1)).to_have_text("gw")
    await expect(page.locator("main table")).to_contain_text("meter \u203a GridPower")
    await expect(page.locator("main table")).to_contain_text("-1,500 W")
    await page.screenshot(path=dashboard.artifacts / "site.png", full_page=True)
    await page.reload()  # the gateway answers the client route with index.html; the session survives
    await expect(page.get_by_role("heading", level=1)).to_have_text("gw")
    await page.get_by_label("Site").select_option("")
    await expect(page).to_have_url(f"{dashboard.url}/organizations/acme")
    await page.go_back()
    await expect(page).to_have_url(f"{dashboard.url}/organizations/acme/sites/gw")


async def test_tokens_are_refreshed_before_the_access_token_expires(dashboard: Dashboard, page: Page) -> None:
    await log_in(page, dashboard.url)
    await expect(page.locator("tr[data-site=gw]")).to_be_visible()
    before = await stored_session(page)
    # Make the stored 15-minute access token look 14.5 minutes old, 30 s from expiry and so inside the
    # 60 s refresh margin: the app refreshes as soon as it loads it.
    now_ms = int(time.time() * 1000)
    soon = dict(before, accessIssued=now_ms - 870_000, accessExpires=now_ms + 30_000)
    await page.evaluate("s => localStorage.setItem('emma.session', s)", json.dumps(soon))
    await page.reload()
    await page.wait_for_function(
        "old => JSON.parse(localStorage.getItem('emma.session') || '{}').refreshToken !== old",
        arg=before["refreshToken"],
    )
    after = await stored_session(page)
    assert after["accessToken"] != before["accessToken"]
    assert int(str(after["accessExpires"])) > int(time.time() * 1000) + 60_000
    # The new tokens work (the page still loads data) and the old refresh token was rotated away.
    await expect(page.locator("tr[data-site=gw]")).to_contain_text("online")
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        r = await client.post("/v1/auth:refresh", json={"refreshToken": before["refreshToken"]})
    assert r.status_code == 401, r.text


async def test_the_app_fits_a_phone_and_is_installable(dashboard: Dashboard, page: Page) -> None:
    await page.set_viewport_size({"width": 375, "height": 740})
    await log_in(page, dashboard.url)
    await expect(page.locator("tr[data-site=gw]")).to_be_visible()
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a phone's screen"
    await page.screenshot(path=dashboard.artifacts / "fleet-phone.png", full_page=True)
    manifest = await page.evaluate("fetch(document.querySelector('link[rel=manifest]').href).then(r => r.json())")
    assert manifest["display"] == "standalone" and manifest["icons"]


async def test_the_header_is_reachable_by_keyboard(dashboard: Dashboard, page: Page) -> None:
    await log_in(page, dashboard.url)
    await expect(page.locator("tr[data-site=gw]")).to_be_visible()
    await page.locator("body").focus()
    reached = []
    for _ in range(5):
        await page.keyboard.press("Tab")
        reached.append(await page.evaluate("document.activeElement.tagName + ' ' + document.activeElement.innerText"))
    # The skip link first, then the brand, both switchers and logout, in reading order.
    assert [r.split(" ")[0] for r in reached] == ["A", "A", "SELECT", "SELECT", "BUTTON"], reached
    assert reached[0] == "A Skip to content" and reached[4] == "BUTTON Log out", reached
    await page.keyboard.press("Shift+Tab")
    await page.keyboard.press("ArrowDown")  # the site switcher works from the keyboard
    await expect(page).to_have_url(f"{dashboard.url}/organizations/acme/sites/gw")


async def test_dark_theme_follows_the_system_setting(dashboard: Dashboard, page: Page) -> None:
    await page.emulate_media(color_scheme="dark")
    await page.goto(dashboard.url + "/")
    dark = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    await page.emulate_media(color_scheme="light")
    light = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert dark == "rgb(13, 17, 23)" and light == "rgb(255, 255, 255)", (dark, light)
    await page.emulate_media(color_scheme="dark")
    await page.screenshot(path=dashboard.artifacts / "login-dark.png")
