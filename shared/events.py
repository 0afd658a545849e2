"""The raw event as it sits in Kafka topic analytics_events (written by ingestion, read by the jobs).

Ingestion owns validation (see services/ingestion); this module fixes the wire format that
every reader relies on.

Key: context.session_id (UTF-8), so one session's events stay in one partition.
Value: JSON object
  event      {type: str, id: str}            id: client-supplied or server UUIDv7
  user       {id: str}
  device     {user_agent: str, screen_width: int, screen_height: int}
  context    {url: str, referrer: str|null, ip_address: str|null, session_id: str}
  properties {str: str|int|float|bool}
  metrics    {load_time: float|null, interaction_time: float|null}   milliseconds
  timestamp  int   event time, epoch ms (client value bounded by the clock-skew policy, else receive time)
  received_at int  receive time at ingestion, epoch ms

Heartbeat records keep event time moving when traffic pauses: ingestion writes one to every
partition each RTAP_INGESTION__HEARTBEAT_INTERVAL_MS with event.type == HEARTBEAT_TYPE and
timestamp == now. Jobs use them for watermarks only and filter them out before aggregating.
"""

HEARTBEAT_TYPE = "__heartbeat"
