-- Vault-API sessions are ledger events (session.created/renewed/revoked) keyed by their
-- accessor; a replica that has not seen a session yet finds it with one indexed lookup.
CREATE INDEX events_session_idx ON ledger.events ((body->>'accessor'), seq)
    WHERE event IN ('session.created', 'session.renewed', 'session.revoked');
