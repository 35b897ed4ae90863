"""Settings come from defaults, a TOML file, WORLDFLOW_* variables and flags, in that order."""

from __future__ import annotations

from pathlib import Path

import pytest

from worldflow.config import ConfigError, load_settings, normalise_store_url


def test_layers_override_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "worldflow.toml"
    config.write_text('port = 9000\nhost = "0.0.0.0"\ndata_dir = "/srv/wf"\n')
    monkeypatch.setenv("WORLDFLOW_PORT", "9100")
    settings = load_settings(config, host=None, data_dir=tmp_path / "flag")
    assert settings.port == 9100  # environment beats the file
    assert settings.host == "0.0.0.0"  # the file beats the default
    assert settings.data_dir == tmp_path / "flag"  # a flag beats everything
    assert settings.store_url == f"sqlite:///{(tmp_path / 'flag' / 'worldflow.db').as_posix()}"


def test_errors_name_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "w.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match=r"unknown setting.*prot"):
        load_settings(config)
    monkeypatch.setenv("WORLDFLOW_PORT", "eighty")
    with pytest.raises(ConfigError, match="port: expected int"):
        load_settings()
    monkeypatch.setenv("WORLDFLOW_PORT", "70000")
    with pytest.raises(ConfigError, match="port: 70000"):
        load_settings()
    with pytest.raises(ConfigError, match="store: unsupported URL"):
        normalise_store_url("mysql://x")
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")


def test_postgres_urls_select_psycopg() -> None:
    assert normalise_store_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_store_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
