-- The elevations on the "why" page (GET /v1/audit/access), read from an index alone.
-- A first question about a month of elevated grants read ~4 scattered heap rows per
-- elevation (requested, approved, activated, closed): ~400 pages for a page of 100
-- windows, most of them not in memory. Here an elevation's rows lie side by side in the
-- index with every column the page folds them from, so they cost a leaf page or two,
-- and no heap. Visibility comes from the visibility map, which vacuum keeps current.
--
-- A B-tree entry must fit in a third of a page (2704 bytes), and a reason or comment may
-- be long (max_reason_chars is a setting): rows whose columns add up to more than 1600
-- bytes of text go to a second, plain index instead, normally empty. The broker writes
-- elevation bodies of strings and a few small numbers, which jsonb stores in about as
-- many bytes as their text (at most 55 more on the 11.8 M-row bench ledger), so an entry
-- stays far below the limit. The page reads both (broker.ledger.store.elevation_steps),
-- with this predicate spelled exactly as here so that the planner can prove it.
CREATE INDEX events_elevation_steps_idx ON ledger.events ((body->>'elevation_id'), recorded_at)
    INCLUDE (seq, event, subject, subject_kind, secret, role, policy_version, body)
    WHERE left(event, 10) = 'elevation.' AND body ? 'elevation_id'
        AND octet_length(body::text) + octet_length(coalesce(subject, ''))
            + octet_length(coalesce(subject_kind, '')) + octet_length(coalesce(secret, ''))
            + octet_length(coalesce(role, '')) + octet_length(coalesce(policy_version, ''))
            <= 1600;
CREATE INDEX events_elevation_steps_wide_idx ON ledger.events ((body->>'elevation_id'), recorded_at)
    WHERE left(event, 10) = 'elevation.' AND body ? 'elevation_id'
        AND octet_length(body::text) + octet_length(coalesce(subject, ''))
            + octet_length(coalesce(subject_kind, '')) + octet_length(coalesce(secret, ''))
            + octet_length(coalesce(role, '')) + octet_length(coalesce(policy_version, ''))
            > 1600;
