"""A call between two real browsers: Debian's Chromium (driven by Selenium) with fake
camera and microphone, each page the demo web app (web/demo) on its own origin, both
different from the API's, talking to the real stack through Envoy (CORS), Socket.IO and
LiveKit.

Screenshots of both pages are kept in .cache/test-artifacts/browser/.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from devstack.procs import ROOT
from tests.browser.conftest import DemoServer
from tests.stack import Stack

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
INSTALL = (
    "install them with: sudo apt-get update && sudo apt-get install -y chromium chromium-driver"
)
BUILT = ROOT / ".cache" / "demo" / "app.js"
ARTIFACTS = ROOT / ".cache" / "test-artifacts" / "browser"
FLAGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
    "--window-size=1100,900",
]
WAIT = 20.0  # generous: two browsers, LiveKit and the stack share two cores

pytestmark = [
    pytest.mark.livekit,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER), reason=f"chromium/chromedriver not found: {INSTALL}"
    ),
]

if CHROMIUM and CHROMEDRIVER:
    from selenium import webdriver
    from selenium.webdriver.common.by import By


@pytest.fixture(scope="module")
def demo_url(stack: Stack, demo_server: DemoServer) -> Callable[[str], str]:
    if not stack.livekit_enabled:
        pytest.skip("livekit-server not built (make livekit): the browser call needs media")
    if not BUILT.is_file():
        pytest.skip("the demo web app is not built: make demo")
    return demo_server.url


class Page:
    """One user's browser (its own Chromium, so its own profile, storage and devices)."""

    def __init__(self, name: str, workdir: Path) -> None:
        assert CHROMIUM and CHROMEDRIVER
        self.name = name
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={workdir / f'chromium-{name}'}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = webdriver.ChromeService(
            executable_path=CHROMEDRIVER, log_output=str(workdir / f"chromedriver-{name}.log")
        )
        self.driver = webdriver.Chrome(options=options, service=service)

    def js(self, script: str) -> Any:
        return self.driver.execute_script(f"return {script};")

    def click(self, css: str) -> None:
        self.driver.find_element(By.CSS_SELECTOR, css).click()

    def visible(self, css: str) -> bool:
        found = self.driver.find_elements(By.CSS_SELECTOR, css)
        return bool(found) and found[0].is_displayed()

    def wait(self, check: Callable[[], Any], what: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: timed out waiting for {what}\n{self.console()}")

    def sign_in(self, url: str, user_id: str) -> None:
        self.driver.get(url)
        self.wait(lambda: self.visible(f"#user-{user_id}"), "the user picker")
        self.click(f"#user-{user_id}")
        self.wait(lambda: self.js("window.demo.state.connected"), "sign-in and Socket.IO")

    def heard_from(self, user_id: str) -> bool:
        """The LiveKit SDK's own state: a remote audio track of that user, subscribed."""
        tracks = self.js("window.demo.remoteTracks()")
        return any(
            t["identity"] == user_id and t["kind"] == "audio" and t["subscribed"] for t in tracks
        )

    def sees(self, user_id: str) -> bool:
        tracks = self.js("window.demo.remoteTracks()")
        return any(
            t["identity"] == user_id and t["kind"] == "video" and t["subscribed"] for t in tracks
        )

    def call_status(self) -> str | None:
        return self.js("document.getElementById('call').dataset.status || null")

    def status_is(self, status: str) -> bool:
        return self.call_status() == status

    def media_left(self) -> bool:
        return self.js("window.demo.state.media") is None

    def screenshot(self, label: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(ARTIFACTS / f"{self.name}-{label}.png"))

    def console(self) -> str:
        try:
            lines = [e["message"] for e in self.driver.get_log("browser")]
        except Exception:  # the browser may already be gone
            return ""
        return "console:\n" + "\n".join(lines[-30:])

    def quit(self) -> None:
        self.driver.quit()


@pytest.fixture
def pages(stack: Stack) -> Iterator[dict[str, Page]]:
    opened: dict[str, Page] = {}
    try:
        for name in ("caller", "callee"):
            opened[name] = Page(name, stack.workdir)
        yield opened
    finally:
        for page in opened.values():
            page.screenshot("last")
            page.quit()


def room_button(page: Page, room_name: str, button: str) -> str:
    room_id = page.js(f"window.demo.state.rooms.find(r => r.name === {json.dumps(room_name)}).id")
    return f'li[data-room="{room_id}"] .{button}'


def test_audio_call_between_two_browsers(
    stack: Stack, demo_url: Callable[[str], str], pages: dict[str, Page]
) -> None:
    caller, callee = pages["caller"], pages["callee"]
    # Two origins, both different from the API's (http://127.0.0.1:<envoy port>).
    caller.sign_in(demo_url("127.0.0.1"), "alice")
    callee.sign_in(demo_url("localhost"), "bob")
    assert {caller.js("location.origin"), callee.js("location.origin")}.isdisjoint({stack.rest})

    caller.click(room_button(caller, "Alice & Bob", "call-audio"))
    callee.wait(lambda: callee.visible("#incoming"), "the ring")
    clicked = caller.js("window.demo.state.marks.startClickedAt")
    rang = callee.js("window.demo.state.marks.ringShownAt")
    assert 0 < rang - clicked < 1000, f"the ring took {rang - clicked} ms"
    assert "alice is calling (audio)" in callee.driver.find_element(By.ID, "incoming").text
    call_id = caller.js("window.demo.state.call.id")
    assert caller.call_status() == "ringing"

    callee.click("#accept")
    callee.wait(lambda: callee.heard_from("alice"), "alice's audio track (subscribed)")
    caller.wait(lambda: caller.heard_from("bob"), "bob's audio track (subscribed)")
    for page in (caller, callee):
        page.wait(partial(page.status_is, "active"), "the call to be active")
        assert not page.visible("#incoming")
        page.screenshot("in-call")

    caller.click("#hangup")
    for page in (caller, callee):
        page.wait(partial(page.status_is, "ended"), "the call to end")
        page.wait(page.media_left, "leaving the media")
        assert page.js("window.demo.remoteTracks().length") == 0
        history = f'#history-list li[data-call-id="{call_id}"]'
        page.wait(partial(page.visible, history), "the call in the history")
        assert "completed" in page.driver.find_element(By.CSS_SELECTOR, history).text
        page.screenshot("after-hang-up")


def test_declined_then_video_call_in_the_browser(
    demo_url: Callable[[str], str], pages: dict[str, Page]
) -> None:
    caller, callee = pages["caller"], pages["callee"]
    caller.sign_in(demo_url("localhost"), "carol")
    callee.sign_in(demo_url("127.0.0.1"), "bob")
    video_call = room_button(caller, "Bob & Carol", "call-video")

    caller.click(video_call)
    callee.wait(lambda: callee.visible("#incoming"), "the ring")
    callee.click("#decline")
    callee.wait(lambda: not callee.visible("#incoming"), "the ring to stop")
    caller.wait(lambda: caller.call_status() == "ended", "the call to end")
    assert "declined" in caller.driver.find_element(By.ID, "call-status").text
    assert callee.call_status() is None  # the callee never joined

    caller.click(video_call)
    callee.wait(lambda: callee.visible("#incoming"), "the second ring")
    callee.click("#accept")
    for page, other in ((caller, "bob"), (callee, "carol")):
        page.wait(partial(page.sees, other), f"{other}'s camera (subscribed)")
        page.wait(partial(page.visible, "#remote-media video"), "the remote video element")
        page.screenshot("video-call")
    callee.click("#hangup")
    for page in (caller, callee):
        page.wait(partial(page.status_is, "ended"), "the video call to end")
