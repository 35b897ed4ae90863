"""The one relational schema, shared by SQLite (embedded) and PostgreSQL (scale-out).

Times are integer milliseconds since the Unix epoch (``*_ms``): portable, compact and cheap to
compare on both engines. Every row belongs to a workspace.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
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
    # A world's key: what it sends is of that world, and its push channel serves that world.
    Column("world", String(64), nullable=True),
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

# Journey counters per version (docs/JOURNEYS.md, "Stats"): entered, at:<step> (now there:
# +1 on arrival, −1 on leaving), reached:<step>, branch:<step>:<arm>, converted, … Derived:
# replay rebuilds them.
journey_stats = Table(
    "journey_stats",
    metadata,
    Column("workspace_id", String(64), primary_key=True),
    Column("journey", String(64), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("metric", String(200), primary_key=True),
    Column("count", BigInteger, nullable=False),
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

# --- Actions: deliveries and where they go (worldflow.actions) ---------------------------------
# Not derived: what was delivered cannot be rebuilt from the log, so replay leaves these alone.

# A webhook destination, by a key its workspace chooses (``crm``). The circuit columns are the
# dispatcher's: it stops sending to a destination that keeps failing and probes it later.
webhook_destinations = Table(
    "webhook_destinations",
    metadata,
    Column("workspace_id", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("url", Text, nullable=False),
    # The Standard Webhooks secret (whsec_<base64>). Unlike write keys and tokens it is stored
    # in clear: the dispatcher needs it to sign every request.
    Column("secret", Text, nullable=False),
    Column("headers", Text, nullable=False, server_default="{}"),  # JSON {name: value}
    Column("timeout_ms", Integer, nullable=False, server_default="5000"),
    Column("rate_per_s", Float, nullable=True),  # at most this many requests per second
    Column("max_in_flight", Integer, nullable=False, server_default="32"),  # requests at once
    Column("disabled", Boolean, nullable=False, server_default="0"),
    # closed | open (nothing is sent until reopen_at_ms) | half_open (one probe is in flight)
    Column("circuit_state", String(16), nullable=False, server_default="closed"),
    Column("consecutive_failures", Integer, nullable=False, server_default="0"),
    Column("opened_at_ms", BigInteger, nullable=True),
    Column("reopen_at_ms", BigInteger, nullable=True),  # when an open circuit lets a probe by
    Column("created_at_ms", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
)

# One action to deliver, written in the same transaction as the state change that decided it.
# The id is the webhook-id receivers deduplicate on: producers derive it from what caused the
# action, so writing the same action twice (a crash, a retry) inserts nothing.
deliveries = Table(
    "deliveries",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("workspace_id", String(64), nullable=False),
    Column("channel", String(16), nullable=False),  # webhook, email, inworld
    Column("destination_id", String(64), nullable=False),
    Column("event_type", String(200), nullable=False),  # journey.action
    Column("payload", Text, nullable=False),  # JSON
    Column("created_ms", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),  # pending | delivered | dead
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_ms", BigInteger, nullable=False),
    Column("last_status", Integer, nullable=True),  # HTTP status of the last attempt; e-mail: 250
    Column("last_error", Text, nullable=True),
    Column("delivered_ms", BigInteger, nullable=True),
    Column("replayed_ms", BigInteger, nullable=True),  # a replay starts the retry window again
    Column("profile_id", String(40), nullable=True),  # in-world: whom it is for
    Index(None, "channel", "state", "next_attempt_ms"),  # what is due
    # A destination's due rows, so that a destination with a backlog (slow, or down) does not
    # stand in front of the others; also which destinations have pending rows at all.
    Index(
        "ix_deliveries_pending_by_destination",
        "channel",
        "state",
        "workspace_id",
        "destination_id",
        "next_attempt_ms",
    ),
    Index(None, "workspace_id", "state", "created_ms"),  # the dead letters, newest first
    # In-world actions waiting for a person to be in a world.
    Index("ix_deliveries_by_profile", "channel", "workspace_id", "profile_id", "state"),
)

# What the decisions of a placement served, and how people took them (decide/learn.py): the
# bandit's evidence, per arm (a segment, or "" for the placement's own) and offer.
decision_stats = Table(
    "decision_stats",
    metadata,
    Column("workspace_id", String(64), primary_key=True),
    Column("placement", String(64), primary_key=True),
    Column("arm", String(64), primary_key=True),
    Column("offer", String(64), primary_key=True),
    Column("served", BigInteger, nullable=False),
    Column("impressions", BigInteger, nullable=False),
    Column("interactions", BigInteger, nullable=False),
)

# Who is connected to a world's push channel now (collect/push.py): one row per connection,
# kept by the worker holding it (seen_ms refreshed; rows of a worker gone stale are ignored).
presence = Table(
    "presence",
    metadata,
    Column("connection_id", String(64), primary_key=True),
    Column("workspace_id", String(64), nullable=False),
    Column("world", String(64), nullable=False),
    Column("worker", String(64), nullable=False),
    Column("profile_id", String(40), nullable=True),
    Column("anonymous_id", String(200), nullable=True),
    Column("user_id", String(200), nullable=True),
    Column("zone", String(200), nullable=True),
    Column("connected_ms", BigInteger, nullable=False),
    Column("seen_ms", BigInteger, nullable=False),
    Index(None, "workspace_id", "world"),
    Index(None, "workspace_id", "profile_id"),
)

# --- The scene registry (worldflow.scenes; docs/SCENES.md) --------------------------------------
# Not derived: what a scene file registered. Each PUT of a scene replaces its entries.

scenes = Table(
    "scenes",
    metadata,
    Column("workspace_id", String(64), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("world", String(64), nullable=True),
    Column("format", String(16), nullable=False),  # gltf | glb | x3d
    Column("updated_ms", BigInteger, nullable=False),
)

# A tagged object, product, zone or placement; object ids are unique in their workspace.
scene_objects = Table(
    "scene_objects",
    metadata,
    Column("workspace_id", String(64), primary_key=True),
    Column("object_id", String(128), primary_key=True),
    Column("scene", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # object | product | zone | placement
    Column("node_path", Text, nullable=False),
    Column("name", String(200), nullable=True),
    Column("sku", String(200), nullable=True),
    Column("category", String(200), nullable=True),
    Column("properties", Text, nullable=False, server_default="{}"),  # JSON
    Index(None, "workspace_id", "scene"),
)
