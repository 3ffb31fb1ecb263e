"""Fixtures for the authentication tests: API key managers on each store, on a manual clock."""

from __future__ import annotations

import pytest

from bastion._clock import ManualClock
from bastion.auth import ApiKeys
from bastion.stores import Store


@pytest.fixture
def keys(store: Store, manual_clock: ManualClock) -> ApiKeys:
    """An API key manager on each store in turn (memory, then Redis), driven by the clock."""
    return ApiKeys(store, clock=manual_clock)
