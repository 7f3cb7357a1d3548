"""Search indexes: the embedded SQLite index (default) and a search engine — Elasticsearch 8/9 or
OpenSearch, each through its own client — behind one contract (archive/index/base.py).
:func:`open_index` picks one from settings. The index is derived from the store; ``check`` compares the
two (``archive reindex --check``)."""

from __future__ import annotations


def open_index(settings):
    """The index the settings name: the search engine at ARCHIVE_INDEX_URL when it is set (which one, and
    whether this archive can talk to it, is found at start: archive/index/engines.py), else SQLite in the
    home."""
    if settings.index_url:
        from archive.index.elastic import ElasticIndex

        return ElasticIndex(settings.index_url, alias=settings.es_index, engine=settings.index_engine,
                            api_key=settings.es_api_key, username=settings.es_username,
                            password=settings.es_password)
    from archive.index.sqlite import SqliteIndex

    return SqliteIndex(settings.index_path)
