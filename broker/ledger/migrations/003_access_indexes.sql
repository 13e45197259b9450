-- Access windows (GET /v1/audit/access): "who had <secret> / what did <subject> have during
-- [from, to)". Partial indexes over grant.issued rows only (a small fraction of the ledger),
-- in the (recorded_at, seq) keyset order the query pages in. The query's time range is
-- bounded below by from - the longest possible grant (the policy loader caps max_ttl), so
-- each lookup reads only the grants that can overlap the period.
CREATE INDEX events_issued_secret_idx ON ledger.events (secret, recorded_at, seq)
    WHERE event = 'grant.issued';
CREATE INDEX events_issued_subject_idx ON ledger.events (subject, recorded_at, seq)
    WHERE event = 'grant.issued';
CREATE INDEX events_issued_time_idx ON ledger.events (recorded_at, seq)
    WHERE event = 'grant.issued';

-- Raw events in time order (GET /v1/audit/events with only a time range, or none).
CREATE INDEX events_time_idx ON ledger.events (recorded_at, seq);
