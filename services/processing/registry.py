"""The job registry: which metric schemas exist. The one place that discovers jobs.

Storage, cache, load generation and topic creation read schemas here. Nothing on this module's import
path loads PyFlink or processing's Flink side: it imports the job modules, and a job module imports
only `services.processing.job` and `shared` at import time (tests/foundation/test_layers.py checks).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable

from services.processing import jobs
from services.processing.job import BaseJob
from shared.metric_schema import MetricSchema, registered_schemas
from shared.settings import get_settings


def job_module_names(extra_modules: Iterable[str] = ()) -> list[str]:
    """The built-in job modules (every public module of services/processing/jobs/), then `extra_modules`."""
    builtin = [m.name for m in pkgutil.iter_modules(jobs.__path__) if not m.name.startswith("_")]
    return [*(f"{jobs.__name__}.{name}" for name in builtin), *extra_modules]


def load_schemas(extra_modules: Iterable[str] | None = None) -> dict[str, MetricSchema]:
    """Import every job module (registering its schema) and return all registered schemas by name.

    `extra_modules` defaults to RTAP_PROCESSING__JOB_MODULES.
    """
    if extra_modules is None:
        extra_modules = get_settings().processing.job_modules
    for name in job_module_names(extra_modules):
        importlib.import_module(name)
    return registered_schemas()


def builtin_schemas() -> dict[str, MetricSchema]:
    """The schemas of the built-in jobs only (not of jobs other modules of this process registered)."""
    modules = set(job_module_names())
    for name in modules:
        importlib.import_module(name)
    return {name: job.schema for name, job in sorted(BaseJob.registry.items()) if job.__module__ in modules}
