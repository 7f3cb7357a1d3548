"""Per-platform chat-transcript converters used by :mod:`archive.ingest.chats` (one module per format)."""
