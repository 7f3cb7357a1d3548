"""Search indexes: the embedded SQLite index (default) and Elasticsearch, behind one contract
(archive/index/base.py). :func:`open_index` picks one from settings. The index is derived from the store;
``check`` compares the two (``archive reindex --check``)."""

from __future__ import annotations


def open_index(settings):
    """The index the settings name: Elasticsearch when ARCHIVE_INDEX_URL is set, else SQLite in the home."""
    if settings.index_url:
        from archive.index.elastic import ElasticIndex

        return ElasticIndex(settings.index_url, alias=settings.es_index, media_type=settings.es_media_type,
                            api_key=settings.es_api_key)
    from archive.index.sqlite import SqliteIndex

    return SqliteIndex(settings.index_path)
