"""Secrets broker: just-in-time credentials from OpenBao/Vault, every decision in a
hash-chained, signed Postgres ledger."""

__version__ = "0.1.0"
