"""The cache sink's processor is pure: one metric record (key, value) in, a validated record or a tombstone
out, or BadRecord naming what is wrong. No Kafka, no Redis."""

from __future__ import annotations

import orjson
import pytest

from services.cache.consumer import decode, processor
from services.cache.layout import layouts
from services.processing.registry import load_schemas
from shared.consumer_pipeline import BadRecord
from tests.cache.conftest import event_record, perf_record

LAYOUT = layouts("test", load_schemas().values())["event_metrics"]
PERF_LAYOUT = layouts("test", load_schemas().values())["performance_metrics"]


def test_a_record_decodes_to_the_same_record_every_time():
    record = event_record(1_767_225_600_000, "click", "mobile", 3, 2)
    value = orjson.dumps(record)
    first, again = processor(LAYOUT)(b"k", value, 7), processor(LAYOUT)(b"k", value, 8)
    assert first.record == again.record == record


def test_a_tombstone_names_the_window_to_delete():
    key = {"window_start": 1_767_225_600_000, "event_type": "click", "device_category": "mobile"}
    decoded = decode(LAYOUT, orjson.dumps(key), None)
    assert decoded.record is None and decoded.key == key


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (b"k", b"{not json", "not JSON"),
        (b"k", b"[1, 2]", "not a JSON object"),
        (b"k", orjson.dumps({"window_start": 0, "event_type": "x"}), "missing column 'window_end'"),
        (b"not json", None, "tombstone key is not JSON"),
        (orjson.dumps({"window_start": 0}), None, "tombstone key must be an object with"),
    ],
)
def test_a_bad_record_raises_with_its_reason(key, value, reason):
    with pytest.raises(BadRecord, match=reason):
        decode(LAYOUT, key, value)


@pytest.mark.parametrize("written", ["Infinity", "-Infinity", "NaN"])
def test_a_float_flink_wrote_as_not_finite_is_null_and_the_window_is_kept(written):
    """A sum that overflowed (Flink writes "Infinity") once sent the whole window to the dead letters."""
    record = {**perf_record(1_767_225_600_000, "desktop", 10.0, 20.0, 30.0), "load_time_avg": written}
    decoded = decode(PERF_LAYOUT, b"k", orjson.dumps(record))
    assert decoded.record == {**record, "load_time_avg": None}


def test_an_int_column_written_as_infinity_is_still_refused():
    record = {**perf_record(1_767_225_600_000, "desktop", 10.0, 20.0, 30.0), "events": "Infinity"}
    with pytest.raises(BadRecord, match="column 'events' expects int64, got 'Infinity'"):
        decode(PERF_LAYOUT, b"k", orjson.dumps(record))
