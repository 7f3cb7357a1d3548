"""Search indexes: the embedded SQLite index (default); Elasticsearch comes with the search issue."""
