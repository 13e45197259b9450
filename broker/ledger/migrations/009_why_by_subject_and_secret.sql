-- The "why" page (GET /v1/audit/access) of one subject or one secret, read as short
-- ranges. A first question about a month read one random page per window for how its
-- grant ended (007's index, by grant id) and one or two per elevation (008's, by
-- elevation id): two hundred scattered pages for a page of a hundred elevated windows.
-- Here the rows a page needs lie side by side, in time order, under the subject or the
-- secret the page is about. Visibility comes from the visibility map, which vacuum keeps
-- current on an append-only table. A row not found in the range a page reads is still
-- looked up by id (broker.ledger.audit_queries.access_windows, broker.audit.access).

-- How grants ended: the expiries of one subject's grants (an expiry's subject is the
-- holder; a revocation's is who revoked) and the ends of one secret's grants, with the
-- grant id and type. Plain columns only: with an expression key PostgreSQL would not
-- answer from the index alone.
CREATE INDEX events_grant_end_subject_idx ON ledger.events (subject, recorded_at)
    INCLUDE (grant_id, seq, event) WHERE event IN ('grant.revoked', 'grant.expired');
CREATE INDEX events_grant_end_secret_idx ON ledger.events (secret, recorded_at)
    INCLUDE (grant_id, seq, event) WHERE event IN ('grant.revoked', 'grant.expired');

-- The elevations to one secret (every row of an elevation carries its secret: the broker
-- copies it from the request), with every column the page folds them from, as 008's
-- index by elevation id; rows too wide for a B-tree entry go to the second, plain index
-- (the predicate as in 008, and as broker.ledger.store.COVERED_ROW_BYTES spells it).
CREATE INDEX events_elevation_secret_idx ON ledger.events (secret, recorded_at)
    INCLUDE (seq, event, subject, subject_kind, role, policy_version, body)
    WHERE left(event, 10) = 'elevation.' AND body ? 'elevation_id'
        AND octet_length(body::text) + octet_length(coalesce(subject, ''))
            + octet_length(coalesce(subject_kind, '')) + octet_length(coalesce(secret, ''))
            + octet_length(coalesce(role, '')) + octet_length(coalesce(policy_version, ''))
            <= 1600;
CREATE INDEX events_elevation_secret_wide_idx ON ledger.events (secret, recorded_at)
    WHERE left(event, 10) = 'elevation.' AND body ? 'elevation_id'
        AND octet_length(body::text) + octet_length(coalesce(subject, ''))
            + octet_length(coalesce(subject_kind, '')) + octet_length(coalesce(secret, ''))
            + octet_length(coalesce(role, '')) + octet_length(coalesce(policy_version, ''))
            > 1600;
