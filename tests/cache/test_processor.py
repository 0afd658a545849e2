"""The cache sink's processor is pure: one metric record (key, value) in, a validated record or a tombstone
out, or BadRecord naming what is wrong. No Kafka, no Redis."""

from __future__ import annotations

import orjson
import pytest

from services.cache.consumer import decode, processor
from services.cache.layout import layouts
from services.processing.registry import load_schemas
from shared.consumer_pipeline import BadRecord
from tests.cache.conftest import event_record

LAYOUT = layouts("test", load_schemas().values())["event_metrics"]


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
