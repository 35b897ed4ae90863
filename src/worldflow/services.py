"""The composition root: every long-lived part of a running Worldflow, built once per process."""

from __future__ import annotations

from dataclasses import dataclass

from worldflow.collect.auth import Authenticator
from worldflow.collect.ingest import Ingestor
from worldflow.config import Settings
from worldflow.events.catalogue import Catalogue
from worldflow.events.cloudevents import CloudEventsTranslator
from worldflow.events.segment import SegmentTranslator
from worldflow.log.sql import SqlEventLog
from worldflow.metrics import Metrics
from worldflow.store.sql import Bootstrap, SqlStore


@dataclass(slots=True)
class Services:
    settings: Settings
    store: SqlStore
    log: SqlEventLog
    metrics: Metrics
    auth: Authenticator
    ingestor: Ingestor
    segment: SegmentTranslator
    cloudevents: CloudEventsTranslator
    bootstrap: Bootstrap
    ready: bool = False

    @classmethod
    def open(cls, settings: Settings, metrics: Metrics | None = None) -> Services:
        """Migrate the store, create the default workspace if needed; ``start`` does the rest."""
        store = SqlStore(settings.store_url)
        store.migrate()
        bootstrap = store.bootstrap(settings.write_key, settings.admin_token)
        metrics = metrics or Metrics()
        log = SqlEventLog(
            store.engine,
            settings.store_url,
            max_pending_events=settings.max_pending_events,
            max_commit_events=settings.max_commit_events,
            dedupe_window_s=settings.dedupe_window_s,
            dedupe_max_keys=settings.dedupe_max_keys,
            on_commit=metrics.observe_commit,
        )
        catalogue = Catalogue.default()
        return cls(
            settings=settings,
            store=store,
            log=log,
            metrics=metrics,
            auth=Authenticator(store),
            ingestor=Ingestor(log, metrics),
            segment=SegmentTranslator(
                catalogue, settings.max_message_bytes, settings.max_future_skew_s
            ),
            cloudevents=CloudEventsTranslator(catalogue),
            bootstrap=bootstrap,
        )

    async def start(self) -> None:
        await self.log.start()
        self.ready = True

    async def close(self) -> None:
        """Let the log writer commit what it holds, then release the store."""
        self.ready = False
        await self.log.close()
        self.store.close()
