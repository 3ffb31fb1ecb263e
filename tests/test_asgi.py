"""The raw ASGI helpers every middleware shares."""

from __future__ import annotations

import pytest

from bastion._asgi import retry_after


@pytest.mark.parametrize(("seconds", "expected"), [(0.0, 1), (0.2, 1), (1.0, 1), (1.01, 2)])
def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one(
    seconds: float, expected: int
) -> None:
    """A client told to come back in 0 s would come back at once."""
    assert expected == retry_after(seconds)
