-- Elevations live in the ledger like grants: their events carry body.elevation_id.
-- This index makes "all events of elevation X" and "grants under elevation X" one lookup.
CREATE INDEX events_elevation_idx ON ledger.events ((body->>'elevation_id'))
    WHERE body ? 'elevation_id';
