"""`rtap bench`: ingest, end-to-end throughput with reconciliation, freshness and memory of a private
local stack."""
