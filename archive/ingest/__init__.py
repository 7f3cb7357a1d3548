"""Ingest: the record model, importers (chat platforms, email, SIPREC), media probing and the pipeline."""
