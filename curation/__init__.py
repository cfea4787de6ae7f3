"""Pure algorithms: decoding, metadata, source readers, ingest, the decisions ledger, schemas. No Dagster, no Ray."""
