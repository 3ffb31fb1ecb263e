"""The event hook registry."""

from __future__ import annotations

import logging

import pytest

from bastion.events import Event, Hooks, StoreDown, StoreUp


def test_hooks_receive_their_type_and_subclasses() -> None:
    """A hook on Event sees everything; a hook on StoreDown only StoreDown."""
    hooks = Hooks()
    everything: list[Event] = []
    downs: list[StoreDown] = []
    hooks.subscribe(Event, everything.append)
    hooks.subscribe(StoreDown, downs.append)
    down = StoreDown(store="redis", error="refused", retry_in_s=0.5)
    up = StoreUp(store="redis", down_for_s=1.0)
    hooks.publish(down)
    hooks.publish(up)
    assert [down, up] == everything
    assert [down] == downs


def test_unsubscribe_stops_delivery() -> None:
    """The function subscribe returns removes the hook."""
    hooks = Hooks()
    seen: list[Event] = []
    unsubscribe = hooks.subscribe(StoreUp, seen.append)
    unsubscribe()
    hooks.publish(StoreUp(store="redis", down_for_s=0.0))
    assert [] == seen
    assert not hooks.wants(StoreUp)


def test_a_failing_hook_is_logged_and_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One broken hook never breaks publishing, nor the hooks after it."""
    hooks = Hooks()
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise ValueError("hook bug")

    hooks.subscribe(Event, broken)
    hooks.subscribe(Event, seen.append)
    with caplog.at_level(logging.ERROR, "bastion.events"):
        hooks.publish(StoreUp(store="redis", down_for_s=0.0))
    assert 1 == len(seen)
    assert "hook bug" in caplog.text


def test_events_are_frozen_and_slotted() -> None:
    """Events cannot be changed by a hook and carry no per-instance dict."""
    event = StoreUp(store="redis", down_for_s=0.0)
    with pytest.raises(AttributeError):
        event.store = "x"  # type: ignore[misc]
    assert not hasattr(event, "__dict__")
