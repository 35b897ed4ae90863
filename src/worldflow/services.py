"""The composition root: every long-lived part of a running Worldflow, built once per process."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from worldflow.actions.inworld import Pusher, worker_id
from worldflow.collect.auth import Authenticator
from worldflow.collect.ingest import Ingestor
from worldflow.config import Settings
from worldflow.decide.engine import Decider, DecisionLog
from worldflow.decide.learner import Learner
from worldflow.events.catalogue import Catalogue
from worldflow.events.cloudevents import CloudEventsTranslator
from worldflow.events.model import Event
from worldflow.events.segment import SegmentTranslator
from worldflow.log.sql import SqlEventLog
from worldflow.log.writer import WriterProcess
from worldflow.metrics import Metrics
from worldflow.processing import ProcessorProcess
from worldflow.store.definitions import SqlDefinitionStore
from worldflow.store.presence import PresenceStore
from worldflow.store.profiles import SqlProfileStore
from worldflow.store.sql import Bootstrap, SqlStore

if TYPE_CHECKING:
    from worldflow.actions.deliver import DelivererProcess

log = logging.getLogger(__name__)


async def _append_decisions(ingestor: Ingestor, events: list[Event]) -> None:
    """``decision.served`` events into the log, per workspace and source."""
    groups: dict[tuple[str, str], list[Event]] = {}
    for event in events:
        groups.setdefault((event.workspace_id, event.source_id), []).append(event)
    for (workspace_id, source_id), group in groups.items():
        await ingestor.ingest(group, workspace_id=workspace_id, source_id=source_id,
                              channel="decide", received_at=group[-1].received_at)  # fmt: skip


def _stop_process(reason: str) -> None:
    """Without its log a worker can only refuse events: shut down cleanly (a supervisor such as
    systemd restarts the server) rather than linger holding the port."""
    log.error("%s; shutting down", reason)
    os.kill(os.getpid(), signal.SIGTERM)


def prepare(settings: Settings) -> Bootstrap:
    """Once per server, before any worker: migrate the store and create the default workspace."""
    store = SqlStore(settings.store_url)
    try:
        store.migrate()
        return store.bootstrap(settings.write_key, settings.admin_token)
    finally:
        store.close()


def writer_process(settings: Settings) -> WriterProcess:
    """The log writer process these settings describe (not yet started)."""
    return WriterProcess(
        settings.store_url,
        settings.max_commit_events,
        int(settings.dedupe_window_s * 1000),
        settings.dedupe_max_keys,
    )


def processor_process(settings: Settings, writer_address: str) -> ProcessorProcess | None:
    """The embedded processor (one partition), unless processors run on their own."""
    if not settings.processor:
        return None
    return ProcessorProcess(settings.store_url, (0,), writer_address, processor_options(settings))


def deliverer_process(settings: Settings, writer_address: str) -> DelivererProcess | None:
    """The embedded webhook dispatcher, unless it runs on its own; it appends circuit changes
    to the log through the writer at ``writer_address``."""
    if not settings.deliver:
        return None
    from worldflow.actions.deliver import DelivererProcess  # its HTTP client: not in workers

    return DelivererProcess(settings.store_url, {"allow": settings.webhook_allow,
                                                 "log_address": writer_address})  # fmt: skip


def processor_options(settings: Settings) -> dict[str, Any]:
    return {"max_profiles": settings.hot_profiles, "max_identities": settings.hot_identities}


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as WORLDFLOW_* variables, so worker processes load exactly these."""
    return {
        f"WORLDFLOW_{f.name.upper()}": str(getattr(settings, f.name))
        for f in fields(settings)
        if str(getattr(settings, f.name)) != ""
    }


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
    profiles: SqlProfileStore
    definitions: SqlDefinitionStore
    pusher: Pusher
    decider: Decider
    decision_log: DecisionLog
    learner: Learner
    writer: WriterProcess | None = None  # owned by this process when it is the only worker
    processor: ProcessorProcess | None = None  # likewise
    deliverer: DelivererProcess | None = None  # likewise
    ready: bool = False

    @classmethod
    def open(cls, settings: Settings, metrics: Metrics | None = None) -> Services:
        """Build the parts of one worker; ``start`` connects them (see :func:`prepare`)."""
        store = SqlStore(settings.store_url)
        metrics = metrics or Metrics()
        # A server with several ingest workers starts the writer itself and tells the workers
        # where it listens; a single process starts its own.
        writer = None
        address = settings.log_writer_address
        if not address:
            writer = writer_process(settings)
            address = writer.address
        log = SqlEventLog(
            store.engine,
            address,
            max_pending_events=settings.max_pending_events,
            on_commit=metrics.observe_commit,
            on_lost=_stop_process,
        )
        catalogue = Catalogue.default()
        ingestor = Ingestor(log, metrics)
        learner = Learner(store.engine)
        return cls(
            settings=settings,
            store=store,
            log=log,
            metrics=metrics,
            auth=Authenticator(store),
            ingestor=ingestor,
            segment=SegmentTranslator(
                catalogue, settings.max_message_bytes, settings.max_future_skew_s
            ),
            cloudevents=CloudEventsTranslator(catalogue),
            profiles=SqlProfileStore(store.engine),
            definitions=SqlDefinitionStore(store.engine),
            pusher=Pusher(PresenceStore(store.engine, worker_id()), metrics),
            decider=Decider(store.engine, catalogue, recommend=learner.scores),
            decision_log=DecisionLog(functools.partial(_append_decisions, ingestor)),
            learner=learner,
            writer=writer,
            processor=processor_process(settings, address) if writer is not None else None,
            deliverer=deliverer_process(settings, address) if writer is not None else None,
        )

    async def start(self) -> None:
        if self.writer is not None:
            await run_in_threadpool(self.writer.start)
        await self.log.start()
        from worldflow.collect.push import decide_action  # (it imports these services)

        self.pusher.decide = functools.partial(decide_action, self)
        self.pusher.start()
        self.decision_log.start()
        self.learner.start()
        # The processor and the dispatcher start side by side: each waits for its own child.
        await asyncio.gather(
            *(
                run_in_threadpool(child.start)
                for child in (self.processor, self.deliverer)
                if child is not None
            )
        )
        self.ready = True

    async def close(self) -> None:
        """Let the log writer commit what it holds, then release the store."""
        self.ready = False
        await self.pusher.stop()
        await self.decision_log.stop()
        await self.learner.stop()
        await self.log.close()
        if self.deliverer is not None:
            await run_in_threadpool(self.deliverer.stop)
        if self.processor is not None:  # before the writer: it may be appending a clock tick
            await run_in_threadpool(self.processor.stop)
        if self.writer is not None:
            await run_in_threadpool(self.writer.stop)
        self.store.close()
