"""Product code shared by every service: settings, topics, the event schema, metric schemas, logging."""
