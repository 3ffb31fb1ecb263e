"""``bastion cache purge --tag T``: against the configured Redis; refused without one."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from bastion.cache import backend_for_store
from bastion.cli import main
from bastion.stores.redis import RedisStore


@pytest.fixture(autouse=True)
def isolated(isolated_env: None) -> None:
    """No BASTION_* settings from the developer's shell; a temp directory (no .env)."""


def test_purge_without_redis_says_it_cannot_reach_the_apps(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Memory caches live in each app process: exit 2 and say why, purge nothing."""
    code = main(["cache", "purge", "--tag", "albums"])

    assert 2 == code
    assert "cannot reach" in capsys.readouterr().err


def test_purge_needs_a_tag(capsys: pytest.CaptureFixture[str]) -> None:
    """``--tag`` is required."""
    assert 2 == main(["cache", "purge"])


def test_purge_invalidates_the_tag_in_redis(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An entry tagged ``albums`` is gone after the command; one tagged ``tracks`` is not."""
    prefix = f"bastion-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("BASTION_REDIS_URL", redis_url)
    monkeypatch.setenv("BASTION_STORES__KEY_PREFIX", prefix)

    async def write() -> None:
        store = RedisStore.from_url(redis_url, prefix=prefix)
        backend = backend_for_store(store)
        await backend.set("a", b"album list", ttl_s=60, tags=["albums"])
        await backend.set("t", b"track list", ttl_s=60, tags=["tracks"])
        await store.aclose()

    async def read() -> tuple[bytes | None, bytes | None]:
        store = RedisStore.from_url(redis_url, prefix=prefix)
        backend = backend_for_store(store)
        try:
            return await backend.get("a"), await backend.get("t")
        finally:
            await store.client.delete(*[k async for k in store.client.scan_iter(f"{prefix}*")])
            await store.aclose()

    asyncio.run(write())
    code = main(["cache", "purge", "--tag", "albums", "--tag", "albums"])

    assert (0, (None, b"track list")) == (code, asyncio.run(read()))
    assert "purged albums in redis://" in capsys.readouterr().err


def test_purge_reports_a_redis_that_does_not_answer(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listening: exit 1 with the (credential-free) address."""
    from tests.servers import free_port

    monkeypatch.setenv("BASTION_REDIS_URL", f"redis://:secret@127.0.0.1:{free_port()}/0")

    code = main(["cache", "purge", "--tag", "albums"])

    err = capsys.readouterr().err
    assert (1, False) == (code, "secret" in err)
    assert "failed" in err
