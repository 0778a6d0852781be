-- tgdl PostgreSQL schema, version 1.
--
-- Job records are the codec-encoded `Job` (src/store/codec.rs), the same
-- bytes the sled backend keeps. Every other column and table is derived
-- from those records by src/store/postgres/apply.rs inside the transaction
-- that changes the job, and checked by src/store/postgres/check.rs.
-- Unsigned values (user ids, milliseconds) are stored as bigint.
-- States: 1 queued, 2 downloading, 3 uploading, 4 cleaning, 5 done, 6 failed.

CREATE TABLE jobs (
    id              uuid     PRIMARY KEY,
    -- The short id users see: the id's last 8 hex digits.
    short           text     NOT NULL,
    user_id         bigint   NOT NULL,
    chat_id         bigint   NOT NULL,
    request_msg_id  integer  NOT NULL,
    url             text     NOT NULL,
    state           smallint NOT NULL CHECK (state BETWEEN 1 AND 6),
    next_attempt_at bigint   NOT NULL,
    updated_at      bigint   NOT NULL,
    lease_owner     uuid,
    lease_until     bigint,
    record          bytea    NOT NULL
);

-- One link of one message is one job (dedupe). The url is hashed because a
-- btree entry is limited to about 2.7 kB and a link in a message may be
-- longer; lookups compare the url itself as well.
CREATE UNIQUE INDEX jobs_request ON jobs (chat_id, request_msg_id, md5(url));
CREATE INDEX jobs_state ON jobs (state, id);
CREATE INDEX jobs_user ON jobs (user_id, id);
-- The fair scheduler: a user's queued jobs in the order they may run.
CREATE INDEX jobs_ready ON jobs (user_id, next_attempt_at, id) WHERE state = 1;
-- Retention: finished jobs by age.
CREATE INDEX jobs_finished ON jobs (updated_at) WHERE state IN (5, 6);
-- `find` by a prefix of the short id (LIKE 'abcd%').
CREATE INDEX jobs_short ON jobs (short text_pattern_ops);

-- Jobs per state, in 16 shards per state: counts() sums these 96 rows,
-- never count(*). A job's changes always touch its own shard (from its id),
-- so transitions of different jobs rarely wait on one counter row, and no
-- shard goes below zero.
CREATE TABLE state_counts (
    state smallint NOT NULL CHECK (state BETWEEN 1 AND 6),
    shard smallint NOT NULL CHECK (shard BETWEEN 0 AND 15),
    n     bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (state, shard)
);
INSERT INTO state_counts (state, shard, n)
    SELECT s, g, 0 FROM generate_series(1, 6) AS s, generate_series(0, 15) AS g;

-- Per-user bookkeeping for the limits and the fair scheduler (sled's
-- UserRecord, as columns).
CREATE TABLE users (
    user_id     bigint   PRIMARY KEY,
    -- Jobs in queued, downloading, uploading or cleaning.
    active      integer  NOT NULL DEFAULT 0,
    -- Jobs in queued.
    queued      integer  NOT NULL DEFAULT 0,
    -- Enqueue times of the last hour, oldest first (bounded).
    recent      bigint[] NOT NULL DEFAULT '{}',
    -- When a job of this user was last claimed.
    last_served bigint   NOT NULL DEFAULT 0
);
-- The scheduler's turn list: users with queued jobs, least recently served first.
CREATE INDEX users_turns ON users (last_served, user_id) WHERE queued > 0;

-- Media cache: `kind|height|url` -> codec-encoded CachedMedia.
CREATE TABLE cache (
    key   text  PRIMARY KEY,
    entry bytea NOT NULL
);

-- A user's settings: codec-encoded UserSettings.
CREATE TABLE settings (
    user_id bigint PRIMARY KEY,
    entry   bytea  NOT NULL
);

-- Jobs that entered done (5) or failed (6) per minute, for the health report.
CREATE TABLE finished_minutes (
    state  smallint NOT NULL CHECK (state IN (5, 6)),
    minute bigint   NOT NULL,
    n      bigint   NOT NULL,
    PRIMARY KEY (state, minute)
);

-- Durable intake: raw updates until their effects are durable.
CREATE TABLE inbox (
    update_id bigint PRIMARY KEY,
    body      bytea  NOT NULL
);

-- Records that failed to decode, kept for an operator.
CREATE TABLE quarantine (
    seq    bigserial PRIMARY KEY,
    tree   text      NOT NULL,
    key    bytea     NOT NULL,
    bytes  bytea     NOT NULL,
    reason text      NOT NULL,
    at     bigint    NOT NULL
);

-- Small named values (the health probe's marker).
CREATE TABLE meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- Each node's latest heartbeat (`/health` shows the cluster).
CREATE TABLE nodes (
    name            text    PRIMARY KEY,
    owner           uuid    NOT NULL,
    at              bigint  NOT NULL,
    in_flight       integer NOT NULL,
    disk_free_bytes bigint  NOT NULL,
    polling         boolean NOT NULL
);

-- When each alert was last sent by any node: one per cooldown per cluster.
CREATE TABLE alerts (
    key     text   PRIMARY KEY,
    sent_at bigint NOT NULL
);
