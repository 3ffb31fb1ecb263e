"""``bastion keys`` against a real Redis: create prints once, list hides secrets, revoke, rotate."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from bastion.auth import ApiKeys, Principal
from bastion.cli import main
from bastion.cli._keys import parse_duration
from bastion.exceptions import InvalidCredentials
from bastion.stores.redis import RedisStore

BASTION_SCRIPT = Path(sys.executable).with_name("bastion")


@pytest.fixture(autouse=True)
def isolated_env(isolated_env: None) -> None:
    """No BASTION_* settings from the developer's shell or .env; a temp working directory."""


@pytest.fixture
def prefix(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """BASTION_REDIS_URL and a unique key prefix set for the command; its keys deleted after."""
    prefix = f"bastion-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("BASTION_REDIS_URL", redis_url)
    monkeypatch.setenv("BASTION_STORES__KEY_PREFIX", prefix)
    yield prefix
    with Redis.from_url(redis_url) as admin:
        keys = list(admin.scan_iter(match=f"{prefix}:*"))
        if keys:
            admin.unlink(*keys)


def verify(redis_url: str, prefix: str, key: str) -> Principal | str:
    """The principal of ``key`` in the store the command used, or the refusal's reason."""

    async def check() -> Principal | str:
        store = RedisStore.from_url(redis_url, prefix=prefix)
        try:
            return await ApiKeys(store).verify(key)
        except InvalidCredentials as exc:
            return exc.reason
        finally:
            await store.aclose()

    return asyncio.run(check())


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``bastion keys ...`` in-process: exit code, stdout, stderr."""
    code = main(["keys", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_create_prints_the_key_once_on_stdout(
    capsys: pytest.CaptureFixture[str], redis_url: str, prefix: str
) -> None:
    """stdout is the key alone; stderr says what it is; the key works with its scopes."""
    code, out, err = run(capsys, "create", "--name", "ci", "--scopes", "a:read, a:write")
    key = out.strip()
    principal = verify(redis_url, prefix, key)
    assert (0, 1) == (code, len(out.splitlines()))
    assert isinstance(principal, Principal)
    assert frozenset({"a:read", "a:write"}) == principal.scopes
    assert "only time the key is shown" in err
    assert key not in err


def test_list_shows_keys_and_never_a_secret(
    capsys: pytest.CaptureFixture[str], prefix: str
) -> None:
    """The table and the JSON name every key by id, name and status, without the key text."""
    _, first, _ = run(capsys, "create", "--name", "alpha", "--expires-in", "30d")
    _, second, _ = run(capsys, "create", "--name", "beta")
    code, table, _ = run(capsys, "list")
    _, listing, _ = run(capsys, "list", "--json")
    rows = json.loads(listing)
    assert 0 == code
    assert [("alpha", "active"), ("beta", "active")] == [(r["name"], r["status"]) for r in rows]
    assert ["-", "-"] != [rows[0]["expires"], rows[1]["expires"]]
    assert "-" == rows[1]["expires"]
    for key in (first.strip(), second.strip()):
        secret = key.split("_", 2)[2]
        assert secret not in table + listing
        assert key.split("_")[1] in table


def test_revoke_makes_the_key_fail(
    capsys: pytest.CaptureFixture[str], redis_url: str, prefix: str
) -> None:
    """After 'revoke ID' the key is refused as revoked, and list says so."""
    _, out, _ = run(capsys, "create", "--name", "doomed")
    key = out.strip()
    key_id = key.split("_")[1]
    code, _, err = run(capsys, "revoke", key_id)
    _, listing, _ = run(capsys, "list", "--json")
    assert (0, "revoked") == (code, verify(redis_url, prefix, key))
    assert "revoked" == json.loads(listing)[0]["status"]
    assert f"revoked key {key_id}" in err


def test_rotate_prints_a_replacement_and_keeps_the_old_key_for_the_overlap(
    capsys: pytest.CaptureFixture[str], redis_url: str, prefix: str
) -> None:
    """Both keys work after rotate; the old one is 'rotating' with the overlap as its expiry."""
    _, out, _ = run(capsys, "create", "--name", "partner", "--scopes", "orders:read")
    old = out.strip()
    code, out, err = run(capsys, "rotate", old.split("_")[1], "--overlap", "2h")
    new = out.strip()
    old_principal, new_principal = verify(redis_url, prefix, old), verify(redis_url, prefix, new)
    _, listing, _ = run(capsys, "list", "--json")
    statuses = {row["id"]: row["status"] for row in json.loads(listing)}
    assert 0 == code
    assert isinstance(old_principal, Principal)
    assert isinstance(new_principal, Principal)
    assert old_principal.scopes == new_principal.scopes
    assert {old.split("_")[1]: "rotating", new.split("_")[1]: "active"} == statuses
    assert "keeps working until" in err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("revoke", "0123456789abcdef"), 1, "no key 0123456789abcdef"),
        (("rotate", "0123456789abcdef"), 1, "no key 0123456789abcdef"),
        (("revoke", "not-an-id"), 2, "is not a key id"),
        (("create", "--name", "x", "--expires-in", "soon"), 2, "is not a duration"),
        (("create", "--name", "  "), 2, "a key needs a name"),
    ],
)
def test_mistakes_exit_non_zero_with_a_reason(
    capsys: pytest.CaptureFixture[str], prefix: str, args: tuple[str, ...], code: int, message: str
) -> None:
    """Unknown ids exit 1; malformed ids, durations and names exit 2; each says why."""
    actual, _, err = run(capsys, *args)
    assert code == actual
    assert message in err


def test_without_redis_the_command_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    """No BASTION_REDIS_URL: exit 2, explaining that a memory store would lose the key."""
    code, out, err = run(capsys, "create", "--name", "lost")
    assert (2, "") == (code, out)
    assert "BASTION_REDIS_URL is not set" in err


def test_an_unreachable_redis_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis nobody listens on: exit 1 naming the (password-masked) store."""
    from tests.servers import free_port

    monkeypatch.setenv("BASTION_REDIS_URL", f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    code, _, err = run(capsys, "list")
    assert 1 == code
    assert "the store at redis://:****@127.0.0.1" in err
    assert "hunter2" not in err


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("12h", 43_200), ("30d", 2_592_000),
                          ("2w", 1_209_600), ("45", 45), ("1.5h", 5400)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    """Durations read s, m, h, d, w, or plain seconds."""
    assert seconds == parse_duration(text)


def test_the_console_script_creates_a_key(redis_url: str, prefix: str) -> None:
    """The installed 'bastion' script, as a real process, prints a key that works."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env.update(BASTION_REDIS_URL=redis_url, BASTION_STORES__KEY_PREFIX=prefix)
    result = subprocess.run(
        [str(BASTION_SCRIPT), "keys", "create", "--name", "script", "--scopes", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    principal = verify(redis_url, prefix, result.stdout.strip())
    assert isinstance(principal, Principal)
    assert "script" == principal.name
