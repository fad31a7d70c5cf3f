"""Cluster identity: a CA, per-node and per-client certificates, SPIFFE identities and roles."""
