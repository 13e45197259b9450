-- Two lookups of the "why" page (GET /v1/audit/access) at audit scale, where what costs is
-- reading scattered pages of a large ledger and probing every month's index.

-- How a grant ended: the end rows only, with their type, so an expired grant (most of
-- them) is answered from the index alone and only a revoked one is read (by whom, why).
-- Visibility comes from the visibility map, which vacuum keeps current on an append-only
-- table.
CREATE INDEX events_grant_end_idx ON ledger.events (grant_id, recorded_at, seq)
    INCLUDE (event) WHERE event IN ('grant.revoked', 'grant.expired');

-- An elevation's rows by id and time: the page looks for them first in the days around
-- its grants, which prunes the other months' partitions and bounds the range inside the
-- index (with 002's index on the id alone, PostgreSQL ANDs in a primary-key scan of the
-- whole month instead). The id alone still serves every other lookup; 002's index goes.
CREATE INDEX events_elevation_time_idx ON ledger.events ((body->>'elevation_id'), recorded_at)
    WHERE body ? 'elevation_id';
DROP INDEX ledger.events_elevation_idx;
