"""BaseJob: what a job declares (name, output schema) and how it builds its result.

Importing a job module must not import PyFlink: storage and cache import job modules only
to read their schemas. PyFlink objects are passed into `build` by the JobCoordinator.
"""

from __future__ import annotations

from typing import Any, ClassVar

from shared.metrics import MetricSchema, register


class BaseJob:
    """Subclass, set `schema`, implement `build`. Subclasses register themselves on import."""

    schema: ClassVar[MetricSchema]
    registry: ClassVar[dict[str, type["BaseJob"]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "schema" in cls.__dict__:
            register(cls.schema)
            BaseJob.registry[cls.schema.name] = cls

    @property
    def name(self) -> str:
        return self.schema.name

    def build(self, t_env: Any, events_view: str, settings: Any) -> Any:
        """Return a Flink Table (or SQL query string) over `events_view` whose columns match `schema`."""
        raise NotImplementedError
