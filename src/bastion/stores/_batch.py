"""Automatic pipelining: the Redis commands of one event-loop turn travel as one pipeline.

Under load, many requests reach a store operation in the same turn of the event loop (a rate-limit
decision, a cache lookup). Sent one by one, each command checks a connection out of the pool,
writes its own packet, waits for its own reply and hands the connection back: with redis-py that
bookkeeping costs more than the round trip itself. ``CommandBatcher`` queues the commands issued in
one turn and sends them at the start of the next as a single non-transactional pipeline: one
connection, one write, the replies read back in order and handed to their callers. A lone command
(no concurrency) goes out alone, one turn later, sent by its own caller.

Each command keeps its own outcome: a command that fails (``NOSCRIPT``, ``WRONGTYPE``, a script
error) raises in its own caller only; a failure of the connection raises in every caller of the
batch, since none of them got a reply. Nothing is retried here (the stores' health gate is the
retry policy), except a script the server did not know: it is loaded and the command sent again,
as redis-py's own ``Script`` does.

Commands of one batch are not atomic together (``MULTI`` is not used): each is atomic on its own,
exactly as when sent alone, and that is all the stores promise.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["CommandBatcher"]

_Pending = tuple[tuple[Any, ...], "asyncio.Future[Any]", "AsyncScript | None"]


class CommandBatcher:
    """Sends the commands issued in one event-loop turn as one pipeline (see the module doc).

    Args:
        client: the redis-py client whose pool provides the connections.
        max_batch: most commands in one pipeline; a larger turn is split into several.
    """

    __slots__ = ("_client", "_max_batch", "_pending", "_tasks")

    def __init__(self, client: Redis, *, max_batch: int = 256) -> None:
        self._client = client
        self._max_batch = max_batch
        # The batch forming in this turn (the commands that joined its leader), else None.
        self._pending: list[_Pending] | None = None
        # Sending tasks are referenced until done: the loop keeps only weak references.
        self._tasks: set[asyncio.Task[None]] = set()

    async def execute(self, *command: Any) -> Any:
        """Send ``command`` (``"GET", key``…) with the others of this turn; return its reply."""
        return await self._submit(command, None)

    async def script(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run a registered script (``EVALSHA``, loaded again after ``NOSCRIPT``)."""
        return await self._submit(("EVALSHA", script.sha, len(keys), *keys, *args), script)

    async def _submit(self, command: tuple[Any, ...], script: AsyncScript | None) -> Any:
        """Join the batch forming in this turn, or lead one.

        The leader waits one turn (``sleep(0)`` resumes it after every callback already
        scheduled, so the tasks woken with it have joined), then sends. Alone, it sends its
        command itself: no future, no task, the cost of a plain call plus one turn.
        """
        pending = self._pending
        if pending is not None:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            pending.append((command, future, script))
            return await future
        joined: list[_Pending] = []
        self._pending = joined
        try:
            await asyncio.sleep(0)
        except BaseException:  # cancelled before sending: the others still go
            self._pending = None
            self._dispatch(joined)
            raise
        self._pending = None
        if not joined:
            reply = await self._one(command, script)
            if isinstance(reply, Exception):
                raise reply
            return reply
        own: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # Sent by a task: if this caller is cancelled now, the others still get their replies.
        self._dispatch([(command, own, script), *joined])
        return await own

    def _dispatch(self, batch: list[_Pending]) -> None:
        size = self._max_batch
        loop = asyncio.get_running_loop()
        for start in range(0, len(batch), size):
            task = loop.create_task(self._send(batch[start : start + size]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            if len(batch) == 1:
                command, future, script = batch[0]
                replies: list[Any] = [await self._one(command, script)]
            else:
                async with self._client.pipeline(transaction=False) as pipe:
                    for command, _, _ in batch:
                        pipe.execute_command(*command)
                    replies = await pipe.execute(raise_on_error=False)
                replies = [
                    await self._one(command, script)
                    if isinstance(reply, NoScriptError) and script is not None
                    else reply
                    for (command, _, script), reply in zip(batch, replies, strict=True)
                ]
        except Exception as exc:  # the connection failed: no command of the batch got a reply
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled (the loop is closing): so are the callers
            for _, future, _ in batch:
                future.cancel()
            raise
        for (_, future, _), reply in zip(batch, replies, strict=True):
            if future.done():  # its caller was cancelled while the batch was out
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _one(self, command: tuple[Any, ...], script: AsyncScript | None) -> Any:
        """One command alone; its error is returned, for its own caller to raise.

        A script unknown to the server (``NOSCRIPT``) is loaded and the command sent again: the
        SHA1 depends only on the script's text, so the command itself stays valid.
        """
        client = self._client
        try:
            try:
                return await client.execute_command(*command)  # type: ignore[no-untyped-call]
            except NoScriptError:
                if script is None:
                    raise
                await client.script_load(script.script)
                return await client.execute_command(*command)  # type: ignore[no-untyped-call]
        except Exception as exc:  # delivered to the command's own caller
            return exc
