# Vault/OpenBao policy for the broker's own identity (AppRole, or a static token).
# Exactly the hot paths of broker/vault/client.py, for the demo catalog's mounts.
# Adjust the mount names to your catalog (policies/catalog.yaml).

# KV v2 reads
path "secret/data/*" {
  capabilities = ["read"]
}

# Database dynamic credentials
path "database/creds/*" {
  capabilities = ["read"]
}

# PKI certificates, and their revocation
path "pki/issue/*" {
  capabilities = ["create", "update"]
}
path "pki/revoke" {
  capabilities = ["create", "update"]
}

# Lease lifecycle: shorten to the grant's TTL, revoke on demand and at expiry
path "sys/leases/renew" {
  capabilities = ["update"]
}
path "sys/leases/revoke" {
  capabilities = ["update"]
}

# Orphan-lease reconciliation lists leases per database role (listing needs sudo)
path "sys/leases/lookup/database/creds/*" {
  capabilities = ["list", "sudo"]
}

# An orphan lease whose database role is already gone can only be dropped (needs sudo)
path "sys/leases/revoke-force/database/creds/*" {
  capabilities = ["update", "sudo"]
}

# The broker's own token
path "auth/token/renew-self" {
  capabilities = ["update"]
}
