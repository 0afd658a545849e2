"""BaseJob: what a job declares (name, output schema) and how it builds its result.

Importing a job module must not import PyFlink: storage and cache import job modules only
to read their schemas. PyFlink objects are passed into `build` by the JobCoordinator.

`build` returns a Flink SQL query over the coordinator's events view: the raw event's fields
(shared.events.EVENT, listed in docs/adding-a-job.md), device_category, and event_time (the
event-time attribute, TIMESTAMP_LTZ(3), watermarked). Heartbeats are already removed.
"""

from __future__ import annotations

from typing import Any, ClassVar

from shared.metric_schema import MetricSchema, register


def epoch_ms(window_bound: str) -> str:
    """SQL turning a window bound (TIMESTAMP(3) in the UTC session zone) into epoch ms (whole seconds)."""
    return f"UNIX_TIMESTAMP(CAST({window_bound} AS STRING)) * 1000"


def interval(seconds: float) -> str:
    """A SQL day-time interval of any length, millisecond precision (plain SECOND allows only two digits)."""
    total_ms = round(seconds * 1000)
    days, rest = divmod(total_ms, 86_400_000)
    hours, rest = divmod(rest, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"INTERVAL '{days} {hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}' DAY TO SECOND(3)"


class BaseJob:
    """Subclass, set `schema`, implement `build`. Subclasses register themselves on import."""

    schema: ClassVar[MetricSchema]
    registry: ClassVar[dict[str, type[BaseJob]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "schema" in cls.__dict__:
            register(cls.schema)
            BaseJob.registry[cls.schema.name] = cls

    @property
    def name(self) -> str:
        return self.schema.name

    def build(self, t_env: Any, events_view: str, settings: Any) -> Any:
        """Return a Flink SQL query (or Table) over `events_view` whose columns match `schema`, in order."""
        raise NotImplementedError
