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
        """Migrate the store, create the default workspace if needed and start the log writer."""
        store = SqlStore(settings.store_url)
        store.migrate()
        bootstrap = store.bootstrap(settings.write_key, settings.admin_token)
        metrics = metrics or Metrics()
        log = SqlEventLog(
            store.engine,
            max_pending_events=settings.max_pending_events,
            max_commit_events=settings.max_commit_events,
            on_commit=metrics.observe_commit,
        )
        log.start()
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

    def close(self) -> None:
        """Flush what the log writer holds, then release the store."""
        self.ready = False
        self.log.close()
        self.store.close()
