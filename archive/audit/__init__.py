"""Tamper-evident audit trail: events, RFC 6962 Merkle proofs, signed checkpoints."""
