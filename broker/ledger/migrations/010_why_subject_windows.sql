-- The windows of one subject's "why" page (GET /v1/audit/access?subject=...), read from an
-- index alone. A person's grants of a month are a hundred rows on a hundred heap pages
-- scattered over it; a first question about that month read each from disk (about 50 µs
-- a page even read ahead: the page's largest cost). Here they lie side by side under the
-- subject, in time order, with every column the page shows, so a page of windows is a
-- few leaf pages. Visibility comes from the visibility map, which vacuum keeps current on
-- an append-only table.
--
-- The cost is space and a write: about a third of the table again (2.0 GB beside the
-- 6.0 GB of the 11.8 M-row bench ledger, whose grant.issued rows are a third of it) and
-- one more index entry per issued grant. A secret's page has no such index: its rows
-- are read ahead in one bitmap heap scan instead (broker.ledger.audit_queries).
--
-- Rows too wide for a B-tree entry (over 1600 bytes of text: a long reason) go to the
-- second, plain index, normally empty; the predicate as in 008 and 009, and as
-- broker.ledger.store.COVERED_ROW_BYTES spells it.
CREATE INDEX events_issued_subject_cover_idx ON ledger.events (subject, recorded_at, seq)
    INCLUDE (subject_kind, secret, role, policy_version, grant_id, expires_at, body)
    WHERE event = 'grant.issued'
        AND octet_length(body::text) + octet_length(coalesce(subject, ''))
            + octet_length(coalesce(subject_kind, '')) + octet_length(coalesce(secret, ''))
            + octet_length(coalesce(role, '')) + octet_length(coalesce(policy_version, ''))
            <= 1600;
CREATE INDEX events_issued_subject_wide_idx ON ledger.events (subject, recorded_at, seq)
    WHERE event = 'grant.issued'
        AND octet_length(body::text) + octet_length(coalesce(subject, ''))
            + octet_length(coalesce(subject_kind, '')) + octet_length(coalesce(secret, ''))
            + octet_length(coalesce(role, '')) + octet_length(coalesce(policy_version, ''))
            > 1600;
