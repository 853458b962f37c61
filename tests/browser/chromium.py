"""One user's browser for the real-browser tests: Debian's Chromium (driven by Selenium)
with fake camera and microphone, its own process and profile, and what the tests read of
the demo pages (web/demo: `window.demo` and the DOM). Screenshots are kept in
.cache/test-artifacts/browser/."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devstack.procs import ROOT

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

# Every test module that opens a browser carries these.
MARKS = [
    pytest.mark.livekit,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER), reason=f"chromium/chromedriver not found: {INSTALL}"
    ),
]

if CHROMIUM and CHROMEDRIVER:
    from selenium import webdriver
    from selenium.webdriver.common.by import By


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

    def type(self, css: str, text: str) -> None:
        self.driver.find_element(By.CSS_SELECTOR, css).send_keys(text)

    def text(self, css: str) -> str:
        return str(self.driver.find_element(By.CSS_SELECTOR, css).text)

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
        return self._subscribed(user_id, "audio")

    def sees(self, user_id: str) -> bool:
        return self._subscribed(user_id, "video")

    def _subscribed(self, user_id: str, kind: str) -> bool:
        tracks = self.js("window.demo.remoteTracks()")
        return any(
            t["identity"] == user_id and t["kind"] == kind and t["subscribed"] for t in tracks
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


def room_button(page: Page, room_name: str, button: str) -> str:
    """The CSS selector of a demo room's button (`call-audio`, `call-video`, `history`)."""
    room_id = page.js(f"window.demo.state.rooms.find(r => r.name === {json.dumps(room_name)}).id")
    return f'li[data-room="{room_id}"] .{button}'
