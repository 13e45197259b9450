-- The login role a client named when it started a sign-in (`bao login -method=oidc
-- role=...`): only recorded, in the session.created row, as for a JWT login. Nullable: the
-- broker CLI and the console name none.
ALTER TABLE signin.pending ADD COLUMN login_role text;
