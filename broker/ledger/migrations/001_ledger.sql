-- The ledger: an append-only, hash-chained event log that is the audit evidence.
-- Applied by `broker migrate` as the owner role (never the writer). The writer role gets
-- INSERT and SELECT only, and owns nothing; triggers refuse UPDATE/DELETE/TRUNCATE for
-- everyone, are ENABLE ALWAYS so `session_replication_role = replica` cannot silence them,
-- and a row trigger refuses any insert that does not extend the chain by exactly one.

CREATE SCHEMA IF NOT EXISTS ledger;

CREATE TABLE ledger.events (
    seq             bigint      PRIMARY KEY CHECK (seq > 0),
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
    dedupe_key      text        UNIQUE,
    prev_hash       bytea       NOT NULL CHECK (length(prev_hash) = 32),
    hash            bytea       NOT NULL UNIQUE CHECK (length(hash) = 32)
);

-- Indexes for the questions the ledger answers: a grant's history, what a subject had,
-- who had a secret (by time), events of a kind.
CREATE INDEX events_grant_idx ON ledger.events (grant_id) WHERE grant_id IS NOT NULL;
CREATE INDEX events_subject_idx ON ledger.events (subject, recorded_at);
CREATE INDEX events_secret_idx ON ledger.events (secret, recorded_at);
CREATE INDEX events_event_idx ON ledger.events (event, recorded_at);
CREATE INDEX events_lease_idx ON ledger.events (lease_id) WHERE lease_id IS NOT NULL;
CREATE INDEX events_open_grants_idx ON ledger.events (expires_at) WHERE event = 'grant.issued';

-- Signed checkpoints of the chain head (C2SP signed-note text in `note`). The signing key
-- lives outside the database, so a superuser rewriting rows cannot forge these.
CREATE TABLE ledger.checkpoints (
    size        bigint      PRIMARY KEY CHECK (size > 0),
    head_hash   bytea       NOT NULL CHECK (length(head_hash) = 32),
    signed_at   timestamptz NOT NULL,
    key_id      text        NOT NULL,
    note        text        NOT NULL
);

-- Every policy version ever loaded, verbatim, so each grant points at the exact rule text.
CREATE TABLE ledger.policy_versions (
    version     text        PRIMARY KEY,
    first_seen  timestamptz NOT NULL,
    documents   jsonb       NOT NULL
);

CREATE FUNCTION ledger.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger table %.% is append-only: % refused', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

-- The chain rule, enforced by the database itself: seq is gapless and prev_hash is the
-- hash of the row before. The writer computes hashes; this only checks linkage.
CREATE FUNCTION ledger.check_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    head_seq  bigint;
    head_hash bytea;
BEGIN
    SELECT seq, hash INTO head_seq, head_hash FROM ledger.events ORDER BY seq DESC LIMIT 1;
    IF head_seq IS NULL THEN
        IF NEW.seq <> 1 OR NEW.prev_hash <> '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea THEN
            RAISE EXCEPTION 'ledger chain: first row must be seq 1 with the zero prev_hash';
        END IF;
    ELSIF NEW.seq <> head_seq + 1 OR NEW.prev_hash <> head_hash THEN
        RAISE EXCEPTION 'ledger chain: row % does not extend head %', NEW.seq, head_seq;
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
CREATE TRIGGER checkpoints_no_update_delete BEFORE UPDATE OR DELETE ON ledger.checkpoints
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON ledger.checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER policy_versions_no_update_delete BEFORE UPDATE OR DELETE ON ledger.policy_versions
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER policy_versions_no_truncate BEFORE TRUNCATE ON ledger.policy_versions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

ALTER TABLE ledger.events ENABLE ALWAYS TRIGGER events_chain;
ALTER TABLE ledger.events ENABLE ALWAYS TRIGGER events_no_update_delete;
ALTER TABLE ledger.events ENABLE ALWAYS TRIGGER events_no_truncate;
ALTER TABLE ledger.checkpoints ENABLE ALWAYS TRIGGER checkpoints_no_update_delete;
ALTER TABLE ledger.checkpoints ENABLE ALWAYS TRIGGER checkpoints_no_truncate;
ALTER TABLE ledger.policy_versions ENABLE ALWAYS TRIGGER policy_versions_no_update_delete;
ALTER TABLE ledger.policy_versions ENABLE ALWAYS TRIGGER policy_versions_no_truncate;
