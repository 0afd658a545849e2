"""The pipeline's services: ingestion, processing, storage, cache."""
