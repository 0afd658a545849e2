"""Schemathesis against the real ingestion process and broker: no 5xx, answers as documented, and the
events topic holds exactly the events the API answered as accepted, each a valid wire record."""

from __future__ import annotations

import pytest

from tests.fuzz.conftest import (
    WRITE_KEY,
    EventsWindow,
    accepted_ids,
    assert_topic_holds_exactly,
    har_body,
    run_schemathesis,
    server_errors,
)

pytestmark = pytest.mark.kafka


def test_every_operation_conforms_and_only_accepted_events_reach_kafka(ingestion, kafka, tmp_path):
    window = EventsWindow(kafka)
    done, entries = run_schemathesis("ingestion", ingestion.url, {"X-Write-Key": WRITE_KEY}, tmp_path)
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-3000:] + ingestion.log_tail()
    assert not server_errors(entries)
    accepted = [i for e in entries for i in accepted_ids(e["response"]["status"], har_body(e) or {})]
    assert len(accepted) > 100, (
        f"only {len(accepted)} generated events were accepted: the fuzz run barely passed validation"
    )
    assert_topic_holds_exactly(window, accepted)
    assert ingestion.healthy()
