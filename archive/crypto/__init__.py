"""Cryptography lives here and only here: the sealed object format (``stream``)."""
