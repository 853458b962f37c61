"""A guest in a real browser (shared/DESIGN.md, "Guests and the lobby"): the host's demo
page starts a call and invites a guest; the guest's page (web/demo/guest.html, in a
Chromium with a fresh profile, no demo user, no session) opens the link, knocks and waits;
the host's page shows the knock with Admit and Deny. Turned away, the guest's page says
so; let in, it joins the call's LiveKit room and sees and hears the host.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from urllib.parse import urlsplit

from tests.browser.chromium import MARKS, Page, room_button
from tests.stack import Stack

pytestmark = MARKS


def open_link(guest: Page, link: str, name: str) -> None:
    """The guest page of `link`: give a name, knock."""
    guest.driver.get("about:blank")  # the same link again is a fresh page, not a jump
    guest.driver.get(link)
    guest.wait(lambda: guest.visible("#name"), "the name form")
    guest.type("#name", name)
    guest.click("#knock")


def knock(guest: Page, link: str, name: str) -> None:
    open_link(guest, link, name)
    guest.wait(lambda: phase(guest) == "waiting", "the lobby")
    assert "Waiting for the host" in guest.text("#phase")


def phase(guest: Page) -> str:
    return str(guest.js("document.body.dataset.phase"))


def knock_shown(host: Page, name: str) -> str:
    """The knock of that guest on the host's page: its CSS selector, once shown."""
    knocks = "#lobby .knock"
    host.wait(lambda: name in (host.text(knocks) if host.visible(knocks) else ""), "the knock")
    assert f"{name} (guest) is waiting to join" in host.text(knocks)
    return knocks


def test_a_guest_is_turned_away_then_let_in_and_sees_and_hears_the_host(
    stack: Stack, demo_url: Callable[[str], str], browser: Callable[[str], Page]
) -> None:
    host, guest = browser("host"), browser("guest")
    host.sign_in(demo_url("localhost"), "alice")
    host.click(room_button(host, "Team (group)", "call-video"))
    host.wait(partial(host.status_is, "active"), "the group call")
    host.click("#invite")
    host.wait(partial(host.visible, "#guest-link"), "the guest link")
    link = host.js("document.getElementById('guest-link').value")
    url = urlsplit(link)
    # The link token only in the fragment, which browsers never send to a server.
    assert (url.path, url.query, url.fragment[:3]) == ("/demo/guest.html", "", "gl_")

    open_link(guest, link.replace("#gl_", "#gl_forged"), "Eve")
    guest.wait(partial(guest.visible, "#error"), "the refusal of a forged link")
    assert "this link does not work" in guest.text("#error")  # the API's own message
    assert phase(guest) == "name"  # the form again; nobody knocked

    knock(guest, link, "Mallory")
    assert guest.js("location.origin") != stack.rest
    lobby = knock_shown(host, "Mallory")
    host.click(f"{lobby} .deny")
    guest.wait(lambda: phase(guest) == "denied", "the deny")
    assert "did not let you in" in guest.text("#phase")
    assert not guest.visible("#call")
    host.wait(lambda: not host.visible(lobby), "the knock to go")
    guest.screenshot("denied")

    knock(guest, link, "Ann Example")  # the same link, a new knock
    guest.screenshot("waiting")
    lobby = knock_shown(host, "Ann Example")
    host.screenshot("knock")
    host.click(f"{lobby} .admit")
    guest.wait(partial(guest.heard_from, "alice"), "alice's audio track (subscribed)")
    guest.wait(partial(guest.sees, "alice"), "alice's camera (subscribed)")
    assert phase(guest) == "in-call"
    me = guest.js("window.demo.state.me")
    host.wait(partial(host.heard_from, me), "the guest's audio track (subscribed)")
    host.wait(partial(host.sees, me), "the guest's camera (subscribed)")
    assert "Ann Example (guest): joined" in host.text("#participants")
    assert not host.visible(lobby)
    for page in (host, guest):
        page.screenshot("in-call")

    guest.click("#leave")
    guest.wait(lambda: phase(guest) == "left", "leaving")
    guest.wait(guest.media_left, "leaving the media")
    host.wait(lambda: "Ann Example (guest): left" in host.text("#participants"), "the leave")
    host.click("#hangup")  # the last one out: the call ends
    host.wait(partial(host.status_is, "ended"), "the call to end")
