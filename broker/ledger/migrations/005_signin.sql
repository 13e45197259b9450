-- Sign-in state shared by every replica: NOT evidence (the ledger's session.* rows are).
-- A login started on one replica may finish on another, so pending logins live here, and
-- so do the identity provider's refresh tokens of signed-in sessions. Secrets are sealed
-- (AES-GCM) under keys derived from what only the client holds (state + client nonce, a
-- device handle, the session token): this database alone cannot use them.
CREATE SCHEMA IF NOT EXISTS signin;

CREATE TABLE signin.pending (
    handle_sha256 text PRIMARY KEY,        -- SHA-256 of the state (code flow) or handle (device)
    kind text NOT NULL CHECK (kind IN ('code', 'device')),
    provider text NOT NULL,
    client_id text NOT NULL,
    api text NOT NULL,                     -- cli, vault, console
    login_role text,                       -- `bao login -method=oidc role=...`: recorded only
    redirect_uri text,
    nonce text,
    client_nonce_sha256 text,
    sealed bytea NOT NULL,                 -- the PKCE verifier or the device code
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX pending_expiry_idx ON signin.pending (expires_at);

CREATE TABLE signin.refresh_tokens (
    accessor text PRIMARY KEY,             -- the session's accessor
    provider text NOT NULL,
    client_id text NOT NULL,
    sealed bytea NOT NULL,
    expires_at timestamptz NOT NULL,       -- the session's max expiry: deleted after it
    updated_at timestamptz NOT NULL DEFAULT now()
);
