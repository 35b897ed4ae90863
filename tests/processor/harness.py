"""Drive the processor in-process: Segment messages → the real translator → event_log rows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import sqlalchemy as sa

from worldflow.decide.definition import validate_offer, validate_placement
from worldflow.engine import TICK_WORKSPACE, Processor, tick_record_body
from worldflow.events.catalogue import Catalogue
from worldflow.events.model import Event, encode_event
from worldflow.events.segment import SegmentTranslator
from worldflow.journeys.definition import validate as journey
from worldflow.journeys.definition import validate_messaging
from worldflow.log.sql import read_entries
from worldflow.profiles.model import Profile
from worldflow.segments.definition import validate
from worldflow.store.definitions import SqlDefinitionStore, definition_record
from worldflow.store.profiles import SqlProfileStore
from worldflow.store.schema import event_log
from worldflow.store.sql import SqlStore

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


class Harness:
    def __init__(self, url: str, **processor_options: Any) -> None:
        self.sql = SqlStore(url)
        self.sql.migrate()
        self.workspace = self.sql.bootstrap("wk_h", "wat_h").workspace_id
        self.store = SqlProfileStore(self.sql.engine)
        self.definitions = SqlDefinitionStore(self.sql.engine)
        self.translator = SegmentTranslator(Catalogue.default(), 32_000, 10**9)
        self.now = T0  # receipt time of the next message
        self.options = processor_options
        self.processor = self.new_processor()

    def new_processor(self) -> Processor:
        engine = self.sql.engine
        processor = Processor(self.store, lambda after, limit: read_entries(engine, after, limit),
                              **self.options)  # fmt: skip
        processor.start()
        return processor

    def send(self, *messages: dict[str, Any], advance: timedelta = timedelta(seconds=1)) -> None:
        """Translate and append messages, each received ``advance`` after the previous one."""
        rows = []
        for given in messages:
            message = {"messageId": str(uuid.uuid4()), "timestamp": iso(self.now), **given}
            (item,) = self.translator.translate(
                [msgspec.json.encode(message)], workspace_id=self.workspace, source_id="src",
                received_at=self.now,
            )  # fmt: skip
            assert isinstance(item, Event), item
            rows.append({"workspace_id": self.workspace, "message_id": item.message_id,
                         "partition": 0, "received_at_ms": int(self.now.timestamp() * 1000),
                         "body": encode_event(item)})  # fmt: skip
            self.now += advance
        with self.sql.engine.begin() as conn:
            conn.execute(sa.insert(event_log), rows)

    def tick(self, at: datetime) -> None:
        self.now = at
        ms = int(at.timestamp() * 1000)
        with self.sql.engine.begin() as conn:
            conn.execute(sa.insert(event_log), [{
                "workspace_id": TICK_WORKSPACE, "message_id": f"tick-{ms}", "partition": 0,
                "received_at_ms": ms, "body": tick_record_body(ms)}])  # fmt: skip

    def apply(self, document: dict[str, Any]) -> int:
        """Store a definition and put its activation in the log, as the API does."""
        check = {"journey": journey, "messaging": validate_messaging, "offer": validate_offer,
                 "placement": validate_placement}.get(document.get("kind"),
                                                      validate)  # fmt: skip
        checked = check(document)
        version, changed = self.definitions.put(self.workspace, checked)
        if changed:
            ms = int(self.now.timestamp() * 1000)
            record = definition_record(self.workspace, checked["kind"], checked["key"],
                                       version, 0, ms)  # fmt: skip
            with self.sql.engine.begin() as conn:
                conn.execute(sa.insert(event_log), [record._asdict()])
        return version

    def process(self) -> int:
        total = 0
        while n := self.processor.step():
            total += n
        return total

    def by(self, type_name: str, value: str) -> Profile:
        profile = self.store.profile_by_identity(self.workspace, type_name, value)
        assert profile is not None, f"no profile for {type_name} {value}"
        return profile

    def close(self) -> None:
        self.sql.close()


def track(event: str, properties: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    return {"type": "track", "event": event, "properties": properties or {}, **fields}
