"""The one relational schema, shared by SQLite (embedded) and PostgreSQL (scale-out).

Times are integer milliseconds since the Unix epoch (``*_ms``): portable, compact and cheap to
compare on both engines. Every row belongs to a workspace.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only aliases the rowid (dense, fast appends) for a column declared INTEGER PRIMARY KEY.
RowId = BigInteger().with_variant(Integer(), "sqlite")

workspaces = Table(
    "workspaces",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("settings", Text, nullable=False, server_default="{}"),  # JSON, see store.sql
)

sources = Table(
    "sources",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("workspace_id", String(64), ForeignKey("workspaces.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("kind", String(32), nullable=False, server_default="http"),
    # SHA-256 of the write key: keys are high-entropy random strings, so a fast hash is enough
    # and allows an indexed lookup per request.
    Column("write_key_hash", String(64), nullable=False, unique=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("disabled", Boolean, nullable=False, server_default="0"),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("workspace_id", String(64), ForeignKey("workspaces.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("scopes", String(200), nullable=False),  # space-separated: ingest read admin
    Column("created_at_ms", BigInteger, nullable=False),
    Column("revoked_at_ms", BigInteger, nullable=True),
)

# The embedded event log. The offset is the position in the log. There is deliberately no index
# on message ids: random keys dirty a B-tree page per appended event and halve the write rate.
# The writer deduplicates against an in-memory window rebuilt from the log's tail at start.
event_log = Table(
    "event_log",
    metadata,
    Column("offset", RowId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(64), nullable=False),
    Column("message_id", String(200), nullable=False),
    Column("partition", Integer, nullable=False, server_default="0"),
    Column("received_at_ms", BigInteger, nullable=False),
    Column("body", LargeBinary, nullable=False),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(64), nullable=False),
    Column("source_id", String(64), nullable=True),
    Column("received_at_ms", BigInteger, nullable=False),
    Column("channel", String(32), nullable=False),
    Column("message_id", String(200), nullable=True),
    Column("code", String(64), nullable=False),
    Column("errors", Text, nullable=False),  # JSON list of {"field", "message"}
    Column("payload", LargeBinary, nullable=False),
    Index(None, "workspace_id", "id"),
)

# --- Derived state: written only by the processor that owns the partition ---------------------
# Everything below can be rebuilt from event_log by `worldflow replay`.

# A profile's state is one JSON document (profiles/model.py); the columns beside it are what
# queries filter on. A merged profile stays as a tombstone pointing at its survivor, so its id
# still resolves.
profiles = Table(
    "profiles",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("workspace_id", String(64), nullable=False),
    Column("partition", Integer, nullable=False, server_default="0"),
    Column("merged_into", String(40), nullable=True),
    Column("first_seen_ms", BigInteger, nullable=False),
    Column("last_seen_ms", BigInteger, nullable=False),
    Column("next_timer_ms", BigInteger, nullable=True),  # the profile's earliest durable timer
    Column("body", Text, nullable=False),
    Index(None, "workspace_id", "last_seen_ms"),
    Index(None, "partition", "next_timer_ms"),
    Index(None, "partition", "id"),  # a partition's profiles in id order (backfills)
)

# Every identity ever seen, pointing at the profile it resolves to now.
identities = Table(
    "identities",
    metadata,
    Column("workspace_id", String(64), primary_key=True),
    Column("type", String(32), primary_key=True),
    Column("value", String(200), primary_key=True),
    Column("profile_id", String(40), nullable=False),
    Index(None, "profile_id"),
)

profile_merges = Table(
    "profile_merges",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(64), nullable=False),
    Column("survivor_id", String(40), nullable=False),
    Column("merged_id", String(40), nullable=False),
    Column("offset", BigInteger, nullable=False),  # the log entry that caused the merge
    Column("at_ms", BigInteger, nullable=False),  # that entry's receipt time
    Column("identity", String(260), nullable=False),  # type:value that linked the two
    Index(None, "workspace_id", "survivor_id"),
    Index(None, "merged_id"),
)

# Where each partition's processor is in the log, and its counters, committed with its state.
processor_state = Table(
    "processor_state",
    metadata,
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("offset", BigInteger, nullable=False),
    Column("stream_time_ms", BigInteger, nullable=False),
    Column("counters", Text, nullable=False),  # JSON {name: count}
)

# Segment and score definitions, every version as applied (docs/SEGMENTS.md). The processor
# activates a version where the log says so; definition_status is what it reports back.
definitions = Table(
    "definitions",
    metadata,
    Column("workspace_id", String(64), primary_key=True),
    Column("kind", String(16), primary_key=True),  # segment | score
    Column("key", String(64), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("document", Text, nullable=False),  # JSON
    Column("created_at_ms", BigInteger, nullable=False),
)

definition_status = Table(
    "definition_status",
    metadata,
    Column("workspace_id", String(64), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("version", Integer, nullable=False),  # the latest applied
    Column("state", String(16), nullable=False),  # pending | backfilling | active | archived
    Column("done", BigInteger, nullable=False, server_default="0"),  # backfill progress
    Column("total", BigInteger, nullable=False, server_default="0"),
    Column("updated_at_ms", BigInteger, nullable=False),
)

# Derived (replay rebuilds them): the versions the processor has activated, who is in each
# segment since when, how many entered and left each segment in each minute (the sum is its
# size; several processors add to the same rows), and
# membership events waiting to be appended to the log.
active_definitions = Table(
    "active_definitions",
    metadata,
    Column("workspace_id", String(64), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
)

segment_members = Table(
    "segment_members",
    metadata,
    Column("workspace_id", String(64), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("profile_id", String(40), primary_key=True),
    Column("since_ms", BigInteger, nullable=False),
)

segment_sizes = Table(
    "segment_sizes",
    metadata,
    Column("workspace_id", String(64), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("minute", BigInteger, primary_key=True, autoincrement=False),  # at_ms // 60000
    Column("entered", BigInteger, nullable=False),
    Column("exited", BigInteger, nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(64), nullable=False),
    Column("message_id", String(64), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("received_at_ms", BigInteger, nullable=False),
    Column("body", LargeBinary, nullable=False),
)
