"""Settings: defaults, then a TOML file, then WORLDFLOW_* environment variables, then CLI flags.

The TOML file is ``worldflow.toml`` in the working directory, or the path in
``WORLDFLOW_CONFIG`` / ``--config``. Keys match the field names below, for example::

    data_dir = "/var/lib/worldflow"
    host = "0.0.0.0"
    port = 8080
    store = "postgresql://worldflow@db/worldflow"
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting has a value Worldflow cannot use; the message names the setting."""


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = Path(".worldflow")
    host: str = "127.0.0.1"
    port: int = 8080
    # SQLAlchemy-style URL; empty means SQLite in data_dir.
    store: str = ""
    # Given secrets for the default workspace (tests, scripts); generated when empty.
    write_key: str = ""
    admin_token: str = ""
    # Segment's limit of 32 KB per call is enforced per message. Segment's SDKs keep batches
    # under 500 KB, but RudderStack's send up to 4 MB, so a request (decompressed) may be 4 MB.
    max_message_bytes: int = 32 * 1024
    max_request_bytes: int = 4 * 1024 * 1024
    # Events waiting for the log writer beyond this answer 429 with Retry-After.
    max_pending_events: int = 200_000
    # Group commit: the log writer commits at most this many events per transaction.
    max_commit_events: int = 20_000
    # Duplicates (same workspace and message id) are recognised within this window of receipt
    # time, holding at most dedupe_max_keys ids in memory (about 70 bytes each).
    dedupe_window_s: float = 24 * 3600.0
    dedupe_max_keys: int = 2_000_000
    # Accepted client clock skew is corrected from sentAt; beyond this future drift is clamped.
    max_future_skew_s: float = 24 * 3600.0
    log_level: str = "info"
    # Ingest worker processes (SO_REUSEPORT), all appending through one log writer process.
    workers: int = 1
    # Run the processor (log → profiles) inside `worldflow serve`; turn off when processors
    # run on their own (`worldflow process`).
    processor: bool = True
    # Run the webhook dispatcher (deliveries → destinations) inside `worldflow serve`; turn off
    # when it runs on its own (`worldflow deliver`).
    deliver: bool = True
    # The processor keeps this many profiles and identities in memory (about 8 KB per profile
    # with its identities); colder ones are read back from the store when needed.
    hot_profiles: int = 20_000
    hot_identities: int = 100_000
    # Webhooks go to public addresses only, except these host names, IP addresses and CIDR
    # ranges (comma-separated, or a list in TOML), e.g. "127.0.0.1, 10.20.0.0/16".
    webhook_allow: str = ""
    # Compress WebSocket frames (permessage-deflate) when a client offers it: less bandwidth,
    # but about 40 KiB more memory per connection (the push channel holds one per person).
    ws_deflate: bool = False
    # The browser showroom served at /showroom/ (empty: the checkout's examples/showroom).
    showroom_dir: str = ""
    # Set by `worldflow serve` for its workers: where the log writer listens. Not a user setting.
    log_writer_address: str = ""

    @property
    def store_url(self) -> str:
        if self.store:
            return normalise_store_url(self.store)
        return f"sqlite:///{(self.data_dir / 'worldflow.db').as_posix()}"


_ENV_PREFIX = "WORLDFLOW_"


def normalise_store_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and select the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if url.startswith(("postgresql+psycopg://", "sqlite:///")):
        return url
    raise ConfigError(
        f"store: unsupported URL {url!r}; use sqlite:///PATH or postgresql://USER@HOST/DB"
    )


def _coerce(name: str, value: Any, target: Any) -> Any:
    kind = type(target)
    if kind is str and isinstance(value, list):  # a list in TOML
        return ",".join(str(item) for item in value)
    try:
        if kind is Path:
            return Path(value)
        if kind is bool:
            return str(value).lower() in {"1", "true", "yes", "on"}
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}") from exc


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from the layers; ``overrides`` (CLI flags) that are None are ignored."""
    settings = Settings()
    known = {f.name: getattr(settings, f.name) for f in fields(Settings)}
    layers: list[dict[str, Any]] = []

    path = config_file or (
        Path(os.environ[f"{_ENV_PREFIX}CONFIG"]) if os.environ.get(f"{_ENV_PREFIX}CONFIG") else None
    )
    if path is None and Path("worldflow.toml").is_file():
        path = Path("worldflow.toml")
    if path is not None:
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"config: file {str(path)!r} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: {path}: {exc}") from exc
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"config: unknown setting(s) {', '.join(unknown)} in {path}")
        layers.append(data)

    env = {
        name: os.environ[_ENV_PREFIX + name.upper()]
        for name in known
        if os.environ.get(_ENV_PREFIX + name.upper())
    }
    layers.append(env)
    layers.append({k: v for k, v in overrides.items() if v is not None})

    for layer in layers:
        values = {k: _coerce(k, v, known[k]) for k, v in layer.items() if k in known}
        settings = replace(settings, **values)
    if not 0 < settings.port < 65536:
        raise ConfigError(f"port: {settings.port} is not a TCP port (1-65535)")
    if settings.store:
        normalise_store_url(settings.store)
    if settings.webhook_allow:
        from worldflow.actions.webhooks import AllowList

        try:
            AllowList.parse(settings.webhook_allow)
        except ValueError as exc:
            raise ConfigError(str(exc).replace("allow:", "webhook_allow:", 1)) from None
    return settings
