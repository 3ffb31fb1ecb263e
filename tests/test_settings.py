"""Settings: environment variables, nested sections, readable errors, masked secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.exceptions import ConfigurationError
from bastion.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def clean_environment(isolated_env: None) -> None:
    """Every test here runs without the developer's BASTION_* settings, in a temp directory."""


def test_defaults_are_the_embedded_setup() -> None:
    """With nothing configured, state is in memory and ops live under /_bastion."""
    settings = load_settings()
    assert settings.redis_url is None
    assert "/_bastion" == settings.ops.prefix
    assert [] == settings.context.trusted_proxies


def test_reads_top_level_and_nested_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """BASTION_X sets a field; BASTION_SECTION__FIELD sets a nested one."""
    monkeypatch.setenv("BASTION_REDIS_URL", "redis://cache:6380/2")
    monkeypatch.setenv("BASTION_STORES__MEMORY_MAX_ENTRIES", "123")
    monkeypatch.setenv("BASTION_CONTEXT__TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")
    settings = load_settings()
    assert "redis://cache:6380/2" == settings.redis_url
    assert 123 == settings.stores.memory_max_entries
    assert ["10.0.0.0/8", "127.0.0.1"] == settings.context.trusted_proxies


def test_reads_a_dotenv_file(tmp_path: Path) -> None:
    """A .env file in the working directory is read."""
    (tmp_path / ".env").write_text("BASTION_SERVICE_NAME=catalog\n")
    assert "catalog" == load_settings().service_name


@pytest.mark.parametrize(
    ("variable", "value", "expected_fragment"),
    [
        ("BASTION_REDIS_URL", "nonsense", "redis://host:port/db"),
        ("BASTION_REDIS_URL", "http://cache:6379", "redis://host:port/db"),
        ("BASTION_REDIS_URL", "redis://:6379", "has no host"),
        ("BASTION_DATABASE_URL", "mysql://db/app", "is not one of"),
        ("BASTION_STORES__MEMORY_MAX_BYTES", "-1", "greater than 0"),
        ("BASTION_STORES__GATE_BASE_DELAY_S", "soon", "valid number"),
        ("BASTION_OPS__PREFIX", "ops/", "must start with '/'"),
        ("BASTION_ENVIRONMENT", "staging", "'development', 'test' or 'production'"),
        ("BASTION_CONTEXT__TRUSTED_PROXIES", "10.0.0.0/8,proxy.local", "not an IP address"),
    ],
)
def test_invalid_values_name_the_variable_and_what_is_accepted(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected_fragment: str
) -> None:
    """The error says which variable, what it held and what would be accepted."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    message = str(caught.value)
    assert variable in message
    assert expected_fragment in message


def test_every_problem_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two bad variables give two lines, so a deploy is fixed in one round."""
    monkeypatch.setenv("BASTION_REDIS_URL", "nonsense")
    monkeypatch.setenv("BASTION_STORES__MEMORY_MAX_ENTRIES", "0")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert "BASTION_REDIS_URL" in str(caught.value)
    assert "BASTION_STORES__MEMORY_MAX_ENTRIES" in str(caught.value)


def test_unknown_variables_are_rejected_with_a_suggestion(monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo fails loudly instead of silently keeping the default."""
    monkeypatch.setenv("BASTION_REDIS_ULR", "redis://cache:6379/0")
    with pytest.raises(ConfigurationError, match=r"did you mean BASTION_REDIS_URL\?"):
        load_settings()


def test_unknown_variables_in_dotenv_are_rejected_too(tmp_path: Path) -> None:
    """A typo in .env is as loud as one in the environment."""
    (tmp_path / ".env").write_text("BASTION_REDSI_URL=redis://cache:6379/0\n")
    with pytest.raises(ConfigurationError, match="BASTION_REDSI_URL: not a bastion setting"):
        load_settings()


def test_test_switches_are_not_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """BASTION_TEST_* and BASTION_REQUIRE_SERVICES belong to the test suite, not to settings."""
    monkeypatch.setenv("BASTION_REQUIRE_SERVICES", "1")
    monkeypatch.setenv("BASTION_TEST_REDIS_URL", "redis://127.0.0.1:1/0")
    load_settings()


def test_secrets_are_masked_when_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither repr nor masked() shows a password or the admin key."""
    monkeypatch.setenv("BASTION_REDIS_URL", "redis://:hunter2@cache:6379/0")
    monkeypatch.setenv("BASTION_OPS__ADMIN_KEY", "adm1n-s3cret")
    settings = load_settings()
    for text in (repr(settings), str(settings), str(settings.masked())):
        assert "hunter2" not in text
        assert "adm1n-s3cret" not in text
    assert "redis://:****@cache:6379/0" == settings.masked()["redis_url"]
    assert "adm1n-s3cret" == settings.ops.admin_key.get_secret_value()  # type: ignore[union-attr]


def test_a_bad_url_is_not_echoed_with_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even a rejected URL has its password masked in the error."""
    monkeypatch.setenv("BASTION_DATABASE_URL", "mysql://app:hunter2@db/app")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)


def test_overrides_take_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keyword overrides win over the environment (how tests and apps pin a value)."""
    monkeypatch.setenv("BASTION_SERVICE_NAME", "from-env")
    assert "pinned" == load_settings(service_name="pinned").service_name


def test_settings_are_immutable() -> None:
    """Settings are read once at startup; changing them later would desynchronize features."""
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.service_name = "x"  # type: ignore[misc]


def test_a_stats_interval_longer_than_its_window_is_refused(isolated_env: None) -> None:
    """The stats window must hold at least one sampling interval; both variables are named."""
    with pytest.raises(ConfigurationError) as caught:
        load_settings({"BASTION_STATS__INTERVAL_S": "500"}, stats={"interval_s": 500})

    assert "BASTION_STATS__INTERVAL_S (500) must not exceed BASTION_STATS__WINDOW_S" in str(
        caught.value
    )
