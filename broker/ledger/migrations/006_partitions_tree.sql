-- The ledger at audit scale: monthly partitions, a Merkle tree over the events, and the
-- last verified head. Existing rows are copied into the partitioned table unchanged (same
-- canonical bytes, same hashes), so every existing checkpoint keeps verifying.

-- 1. Events partitioned by month of recorded_at. A partitioned table's unique indexes must
--    include the partition key, so the guarantees the old table got from UNIQUE(seq) and
--    UNIQUE(dedupe_key) now come from check_chain, which serialises every insert on the
--    ledger lock and refuses a row that does not extend the head, that reuses a dedupe key,
--    or whose recorded_at runs backwards (each month is then one contiguous run of seq,
--    which is what lets a month be archived as a segment).
ALTER TABLE ledger.events RENAME TO events_v1;
ALTER INDEX ledger.events_pkey RENAME TO events_v1_pkey;

CREATE TABLE ledger.events (
    seq             bigint      NOT NULL CHECK (seq > 0),
    recorded_at     timestamptz NOT NULL,
    event           text        NOT NULL,
    replica         text        NOT NULL,
    subject         text,
    subject_kind    text,
    secret          text,
    role            text,
    policy_version  text,
    grant_id        uuid,
    lease_id        text,
    expires_at      timestamptz,
    outcome         text        NOT NULL,
    request_id      text,
    body            jsonb       NOT NULL,
    dedupe_key      text,
    prev_hash       bytea       NOT NULL CHECK (length(prev_hash) = 32),
    hash            bytea       NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (recorded_at, seq)
) PARTITION BY RANGE (recorded_at);

-- Creates each missing monthly partition from the month of `since` through the month of
-- `through`, with the append-only triggers ENABLE ALWAYS. The broker calls it ahead of
-- time as the writer role, which may not create tables itself: hence SECURITY DEFINER
-- with a fixed search_path, EXECUTE granted to the writer only. (A month before the
-- newest row could never receive a row: check_chain refuses time running backwards.)
CREATE FUNCTION ledger.create_partitions(since timestamptz, through timestamptz)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, ledger AS $$
DECLARE
    month   date := date_trunc('month', since AT TIME ZONE 'UTC')::date;
    name    text;
    created integer := 0;
BEGIN
    WHILE month <= date_trunc('month', through AT TIME ZONE 'UTC')::date LOOP
        name := 'events_' || to_char(month, 'YYYY_MM');
        IF to_regclass('ledger.' || name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE ledger.%I PARTITION OF ledger.events FOR VALUES FROM (%L) TO (%L)',
                name, month::timestamp AT TIME ZONE 'UTC',
                (month + interval '1 month')::timestamp AT TIME ZONE 'UTC');
            EXECUTE format('CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON ledger.%I'
                ' FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change()', name);
            EXECUTE format('ALTER TABLE ledger.%I ENABLE ALWAYS TRIGGER events_chain', name);
            EXECUTE format('ALTER TABLE ledger.%I ENABLE ALWAYS TRIGGER events_no_update_delete', name);
            EXECUTE format('ALTER TABLE ledger.%I ENABLE ALWAYS TRIGGER events_no_truncate', name);
            created := created + 1;
        END IF;
        month := (month + interval '1 month')::date;
    END LOOP;
    RETURN created;
END;
$$;
REVOKE ALL ON FUNCTION ledger.create_partitions(timestamptz, timestamptz) FROM PUBLIC;

-- The triggers exist on the parent before any partition: partitions clone the row triggers.
DROP TRIGGER events_chain ON ledger.events_v1;
DROP TRIGGER events_no_update_delete ON ledger.events_v1;
DROP TRIGGER events_no_truncate ON ledger.events_v1;

CREATE OR REPLACE FUNCTION ledger.check_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    head_seq  bigint;
    head_hash bytea;
    head_at   timestamptz;
BEGIN
    -- Concurrent inserters queue here (the writer's own lock key), so two transactions can
    -- never both extend the same head: seq stays unique without a global unique index.
    PERFORM pg_advisory_xact_lock(119182731994482);
    SELECT seq, hash, recorded_at INTO head_seq, head_hash, head_at
    FROM ledger.events ORDER BY recorded_at DESC, seq DESC LIMIT 1;
    IF head_seq IS NULL THEN
        IF NEW.seq <> 1 OR NEW.prev_hash <> '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea THEN
            RAISE EXCEPTION 'ledger chain: first row must be seq 1 with the zero prev_hash';
        END IF;
    ELSIF NEW.seq <> head_seq + 1 OR NEW.prev_hash <> head_hash THEN
        RAISE EXCEPTION 'ledger chain: row % does not extend head %', NEW.seq, head_seq;
    ELSIF NEW.recorded_at < head_at THEN
        RAISE EXCEPTION 'ledger chain: row % is recorded before its predecessor', NEW.seq;
    END IF;
    IF NEW.dedupe_key IS NOT NULL
       AND EXISTS (SELECT 1 FROM ledger.events WHERE dedupe_key = NEW.dedupe_key) THEN
        RAISE EXCEPTION 'ledger dedupe key % is taken', NEW.dedupe_key
            USING ERRCODE = 'unique_violation';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER events_chain BEFORE INSERT ON ledger.events
    FOR EACH ROW EXECUTE FUNCTION ledger.check_chain();
CREATE TRIGGER events_no_update_delete BEFORE UPDATE OR DELETE ON ledger.events
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON ledger.events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
ALTER TABLE ledger.events ENABLE ALWAYS TRIGGER events_chain;
ALTER TABLE ledger.events ENABLE ALWAYS TRIGGER events_no_update_delete;
ALTER TABLE ledger.events ENABLE ALWAYS TRIGGER events_no_truncate;

-- Only the newest row's place matters for the head lookup; a ledger whose last row is not
-- also its latest cannot be migrated safely (cross-host clock skew at the very end).
DO $$
DECLARE
    last_at timestamptz;
    max_at  timestamptz;
BEGIN
    SELECT recorded_at INTO last_at FROM ledger.events_v1 ORDER BY seq DESC LIMIT 1;
    SELECT max(recorded_at) INTO max_at FROM ledger.events_v1;
    IF last_at IS DISTINCT FROM max_at THEN
        RAISE EXCEPTION 'ledger migration: the last row is not the latest (clock skew);'
            ' append one event from a replica with a correct clock, then migrate again';
    END IF;
    PERFORM ledger.create_partitions(
        COALESCE((SELECT min(recorded_at) FROM ledger.events_v1), now()),
        now() + interval '3 months');
END;
$$;

-- Copy the rows unchanged (the chain trigger is off for the copy only: the rows are the
-- already-chained history, checked by the next `broker verify`).
ALTER TABLE ledger.events DISABLE TRIGGER events_chain;
INSERT INTO ledger.events SELECT * FROM ledger.events_v1 ORDER BY seq;
ALTER TABLE ledger.events ENABLE ALWAYS TRIGGER events_chain;
DROP TABLE ledger.events_v1;

-- The query indexes of migrations 001-004, now on every partition (the primary key
-- (recorded_at, seq) replaces events_time_idx).
CREATE INDEX events_seq_idx ON ledger.events (seq);
CREATE INDEX events_dedupe_idx ON ledger.events (dedupe_key) WHERE dedupe_key IS NOT NULL;
-- A grant's rows in time order: the end of a grant is found in the issued row's month or
-- the next, reading partitions in order (events_grant_idx of 001, with time).
CREATE INDEX events_grant_idx ON ledger.events (grant_id, recorded_at, seq)
    WHERE grant_id IS NOT NULL;
CREATE INDEX events_subject_idx ON ledger.events (subject, recorded_at);
CREATE INDEX events_secret_idx ON ledger.events (secret, recorded_at);
CREATE INDEX events_event_idx ON ledger.events (event, recorded_at);
CREATE INDEX events_lease_idx ON ledger.events (lease_id) WHERE lease_id IS NOT NULL;
CREATE INDEX events_open_grants_idx ON ledger.events (expires_at) WHERE event = 'grant.issued';
CREATE INDEX events_elevation_idx ON ledger.events ((body->>'elevation_id'))
    WHERE body ? 'elevation_id';
CREATE INDEX events_issued_secret_idx ON ledger.events (secret, recorded_at, seq)
    WHERE event = 'grant.issued';
CREATE INDEX events_issued_subject_idx ON ledger.events (subject, recorded_at, seq)
    WHERE event = 'grant.issued';
CREATE INDEX events_issued_time_idx ON ledger.events (recorded_at, seq)
    WHERE event = 'grant.issued';
CREATE INDEX events_session_idx ON ledger.events ((body->>'accessor'), seq)
    WHERE event IN ('session.created', 'session.renewed', 'session.revoked');

-- 2. The Merkle tree's perfect subtrees of 256 leaves and up (level >= 8), so a proof reads
--    O(log n) stored nodes plus at most one 256-row block. Derived data: a wrong node can
--    only make a proof or a signed root fail to verify, never hide a changed row.
CREATE TABLE ledger.tree_nodes (
    level   smallint NOT NULL CHECK (level >= 8 AND level < 64),
    idx     bigint   NOT NULL CHECK (idx >= 0),
    hash    bytea    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
);
CREATE TRIGGER tree_nodes_no_update_delete BEFORE UPDATE OR DELETE ON ledger.tree_nodes
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER tree_nodes_no_truncate BEFORE TRUNCATE ON ledger.tree_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
ALTER TABLE ledger.tree_nodes ENABLE ALWAYS TRIGGER tree_nodes_no_update_delete;
ALTER TABLE ledger.tree_nodes ENABLE ALWAYS TRIGGER tree_nodes_no_truncate;

-- 3. Checkpoints now sign the Merkle root too (NULL on the chain-only checkpoints signed
--    before this migration, which keep verifying against the chain).
ALTER TABLE ledger.checkpoints ADD COLUMN root_hash bytea CHECK (length(root_hash) = 32);

-- 4. Verified heads: a signed note per completed verification (size, root, chain head and
--    the compact range at that size), so the next verification starts there.
CREATE TABLE ledger.verified_heads (
    size         bigint      PRIMARY KEY CHECK (size > 0),
    verified_at  timestamptz NOT NULL,
    full_scan    boolean     NOT NULL,
    note         text        NOT NULL
);
CREATE TRIGGER verified_heads_no_update_delete BEFORE UPDATE OR DELETE ON ledger.verified_heads
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER verified_heads_no_truncate BEFORE TRUNCATE ON ledger.verified_heads
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
ALTER TABLE ledger.verified_heads ENABLE ALWAYS TRIGGER verified_heads_no_update_delete;
ALTER TABLE ledger.verified_heads ENABLE ALWAYS TRIGGER verified_heads_no_truncate;
