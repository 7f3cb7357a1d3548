"""Tamper-evident audit trail: events in signed batches (``log``), RFC 6962 Merkle proofs (``merkle``),
signed checkpoints written automatically and kept by a witness outside the archive (``witness``),
verification (``verify``) and the store reconciled with the trail (``reconcile``). See docs/audit.md."""
