"""A call between two real browsers: Debian's Chromium (driven by Selenium) with fake
camera and microphone, each page the demo web app (web/demo) on its own origin, both
different from the API's, talking to the real stack through Envoy (CORS), Socket.IO and
LiveKit (tests/browser/chromium.py: the browsers, and where screenshots are kept).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest

from tests.browser.chromium import MARKS, Page, room_button
from tests.stack import Stack

pytestmark = MARKS


@pytest.fixture
def pages(browser: Callable[[str], Page]) -> dict[str, Page]:
    return {name: browser(name) for name in ("caller", "callee")}


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
    assert "alice is calling (audio)" in callee.text("#incoming")
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
        assert "completed" in page.text(history)
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
    assert "declined" in caller.text("#call-status")
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
