"""`rtap dlq`: list, show and replay the dead-letter topic."""
