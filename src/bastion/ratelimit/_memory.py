"""The in-process backend: exact within one process, bounded, and free of ``await``.

A decision reads and writes plain Python objects with no ``await`` in between, so it is atomic on
the event loop without a lock: a thousand concurrent tasks on a limit of 100 admit exactly 100.
The arithmetic mirrors ``lua/ratelimit.lua`` line by line, so both backends decide alike (the
contract tests run the same scenarios on each).

State is one small list per quota and client, in an LRU table of at most ``max_keys`` entries.
Nothing expires on a timer: a stale window or a bucket that refilled reads as empty, and stale
entries are the least recently used, so they are the first evicted.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from bastion._clock import SYSTEM_CLOCK, Clock
from bastion.exceptions import ConfigurationError
from bastion.ratelimit._rates import CompiledQuota

__all__ = ["MemoryBackend"]

_EPSILON = 1e-9


class MemoryBackend:
    """Rate-limit state in this process's memory.

    Args:
        clock: its ``monotonic()`` is the time source.
        max_keys: the most (client, quota) states held; the least recently used go first.

    Raises:
        ConfigurationError: if ``max_keys`` is not positive.
    """

    __slots__ = ("_max_keys", "_monotonic", "_states")

    name = "memory"

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ConfigurationError(f"max_keys must be at least 1, not {max_keys}")
        self._monotonic = clock.monotonic  # bound once: read on every decision
        self._max_keys = max_keys
        self._states: OrderedDict[str, list[int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    async def decide(
        self, keys: Sequence[str], quotas: Sequence[CompiledQuota], costs: Sequence[int]
    ) -> list[float]:
        """Decide and, if every quota admits, charge them all. See ``decide_now``."""
        return self.decide_now(keys, quotas, costs)

    def decide_now(
        self, keys: Sequence[str], quotas: Sequence[CompiledQuota], costs: Sequence[int]
    ) -> list[float]:
        """The decision, synchronously: ``[allowed, r1, t1, retry1, ...]`` as the Lua script.

        ``t`` and ``retry`` are in microseconds.
        """
        if len(keys) == 1:
            return self.decide_one(keys[0], quotas[0], costs[0])
        now = int(self._monotonic() * 1_000_000)
        states = self._states
        allowed = 1
        # Per quota: (window, window_end, elapsed, previous, interval, before, after, retry).
        decided: list[tuple[int, int, int, int, int, int, int, int]] = []

        # First pass: read every state and decide. Nothing is written yet.
        for key, quota, cost in zip(keys, quotas, costs, strict=True):
            limit = quota.limit
            period = quota.period_us
            state = states.get(key)
            window = window_end = elapsed = previous = interval = 0
            retry: int
            code = quota.code
            if code == 1:
                window = now // period
                count = state[1] if state is not None and state[0] == window else 0
                window_end = (window + 1) * period - now
                before, after = count, count + cost
                retry = 0 if count + cost <= limit else window_end
            elif code == 2:
                window = now // period
                current = 0
                if state is not None:
                    if state[0] == window:
                        previous, current = state[1], state[2]
                    elif state[0] == window - 1:
                        previous = state[2]
                elapsed = now - window * period
                window_end = period - elapsed
                before, after = current, current + cost
                estimate = previous * window_end / period + current
                if estimate + cost <= limit + _EPSILON:
                    retry = 0
                elif previous > 0 and current + cost <= limit:
                    # Admissible later in this window, once the previous window has decayed.
                    retry = math.ceil(period * (1 - (limit - current - cost) / previous) - elapsed)
                elif cost <= limit:
                    # Only in the next window, where this window's count becomes the decaying one.
                    retry = window_end + math.ceil(period * (1 - (limit - cost) / current))
                else:
                    retry = window_end + period
            else:
                interval = -(-period // limit)
                tat = state[0] if state is not None else now
                tat = max(tat, now)
                before, after = tat, tat + cost * interval
                allow_at = after - quota.burst * interval
                retry = 0 if allow_at <= now else allow_at - now
            if retry > 0:
                allowed = 0
            decided.append((window, window_end, elapsed, previous, interval, before, after, retry))

        # Second pass: charge every quota if all admit, and report each one's state as it now
        # stands (a refused request reports the state it left untouched).
        result: list[float] = [allowed]
        for key, quota, (
            window,
            window_end,
            elapsed,
            previous,
            interval,
            before,
            after,
            retry,
        ) in zip(keys, quotas, decided, strict=True):
            limit = quota.limit
            period = quota.period_us
            value = after if allowed else before
            remaining: int
            reset: int
            code = quota.code
            if code == 1:
                if allowed:
                    self._write(key, [window, value])
                remaining = max(0, limit - value)
                reset = window_end
            elif code == 2:
                if allowed:
                    self._write(key, [window, previous, value])
                estimate = previous * window_end / period + value
                remaining = max(0, math.floor(limit - estimate + _EPSILON))
                target = limit - remaining - 1 - value
                if remaining >= limit:
                    reset = 0
                elif previous > 0 and target >= 0:
                    # When the previous window's weight has decayed enough to free one more unit.
                    reset = min(window_end, math.ceil(period * (1 - target / previous) - elapsed))
                else:
                    reset = window_end
            else:
                if allowed:
                    self._write(key, [value])
                debt = value - now
                used = (debt + interval - 1) // interval
                remaining = max(0, quota.burst - used)
                # When the oldest unit in use drains out of the bucket.
                reset = 0 if debt <= 0 else debt - (used - 1) * interval
            result.append(remaining)
            result.append(reset)
            result.append(retry)
        if not allowed:
            # Refused requests write nothing, but reading a key still counts as using it.
            for key in keys:
                if key in states:
                    states.move_to_end(key)
        return result

    def decide_one(self, key: str, quota: CompiledQuota, cost: int) -> list[float]:
        """``decide_now`` for a single quota, the common case, in one pass.

        The same arithmetic as the general path (and the Lua script), without its bookkeeping:
        with one quota, its own verdict is the decision, so it can write as it decides.
        """
        now = int(self._monotonic() * 1_000_000)
        states = self._states
        state = states.get(key)
        limit = quota.limit
        period = quota.period_us
        code = quota.code
        if code == 2:
            window = now // period
            window_end = (window + 1) * period - now
            if state is not None and state[0] == window:  # a client seen in this window
                same = True
                previous, current = state[1], state[2]
            else:
                same = False
                previous = state[2] if state is not None and state[0] == window - 1 else 0
                current = 0
            decay = previous * window_end / period  # the previous window's weight now
            estimate = decay + current
            retry: int
            if estimate + cost <= limit + _EPSILON:
                retry = 0
                current += cost
                if same:
                    state[2] = current  # type: ignore[index]
                    states.move_to_end(key)
                else:
                    self._write(key, [window, previous, current])
                estimate = decay + current
            elif previous > 0 and current + cost <= limit:
                elapsed = period - window_end
                retry = math.ceil(period * (1 - (limit - current - cost) / previous) - elapsed)
            elif cost <= limit:
                retry = window_end + math.ceil(period * (1 - (limit - cost) / current))
            else:
                retry = window_end + period
            if not previous:
                # No previous window to decay: integers only (a client's first window).
                remaining = limit - current if current < limit else 0
                reset = 0 if remaining >= limit else window_end
                return [0 if retry else 1, remaining, reset, retry]
            left = limit - estimate + _EPSILON
            remaining = int(left) if left > 0 else 0  # floor, for a positive number
            target = limit - remaining - 1 - current
            if remaining >= limit:
                reset = 0
            elif target >= 0:
                reset = math.ceil(period * (1 - target / previous) - (period - window_end))
                if reset > window_end:
                    reset = window_end
            else:
                reset = window_end
            return [0 if retry else 1, remaining, reset, retry]
        if code == 1:
            window = now // period
            count = state[1] if state is not None and state[0] == window else 0
            window_end = (window + 1) * period - now
            if count + cost <= limit:
                count += cost
                if state is not None and state[0] == window:
                    state[1] = count
                    states.move_to_end(key)
                else:
                    self._write(key, [window, count])
                return [1, max(0, limit - count), window_end, 0]
            if state is not None:
                states.move_to_end(key)
            return [0, max(0, limit - count), window_end, window_end]
        interval = -(-period // limit)
        tat = state[0] if state is not None and state[0] > now else now
        after = tat + cost * interval
        allow_at = after - quota.burst * interval
        if allow_at <= now:
            tat = after
            if state is not None:
                state[0] = tat
                states.move_to_end(key)
            else:
                self._write(key, [tat])
            retry = 0
        else:
            if state is not None:
                states.move_to_end(key)
            retry = allow_at - now
        debt = tat - now
        used = (debt + interval - 1) // interval
        reset = 0 if debt <= 0 else debt - (used - 1) * interval
        return [0 if retry else 1, max(0, quota.burst - used), reset, retry]

    def _write(self, key: str, state: list[int]) -> None:
        states = self._states
        states[key] = state
        states.move_to_end(key)
        if len(states) > self._max_keys:
            states.popitem(last=False)
