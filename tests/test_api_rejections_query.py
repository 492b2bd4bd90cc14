"""The InfluxQL of ``GET /api/v1/rejections``, checked as text (no server needed)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from ingest_service.api.rejections import rejections_query

COLUMNS = '"reason", "topic", "detail", "payload"'
COUNTS = 'SELECT count("detail") FROM "rejection"'


def test_no_filter_lists_the_newest_and_counts_every_reason() -> None:
    statements = rejections_query(None, None, 100)
    assert statements.recent == (
        f'SELECT {COLUMNS} FROM "rejection" ORDER BY time DESC LIMIT 100')
    assert statements.counts == f'{COUNTS} GROUP BY "reason"'


def test_since_bounds_both_in_utc_and_reason_only_the_list() -> None:
    beijing = timezone(timedelta(hours=8))
    statements = rejections_query("unknown_device", datetime(2026, 5, 1, 8, tzinfo=beijing), 7)
    since = "time >= '2026-05-01T00:00:00.000000Z'"
    assert statements.recent == (
        f'SELECT {COLUMNS} FROM "rejection" WHERE {since} AND "reason" = \'unknown_device\' '
        "ORDER BY time DESC LIMIT 7")
    assert statements.counts == f'{COUNTS} WHERE {since} GROUP BY "reason"'


def test_a_reason_alone_filters_only_the_list() -> None:
    statements = rejections_query("out_of_range", None, 1)
    assert statements.recent == (
        f'SELECT {COLUMNS} FROM "rejection" WHERE "reason" = \'out_of_range\' '
        "ORDER BY time DESC LIMIT 1")
    assert statements.counts == f'{COUNTS} GROUP BY "reason"'


def test_a_hostile_reason_stays_one_string_literal() -> None:
    statements = rejections_query("x' OR '1'='1\n; DROP DATABASE farm", None, 5)
    assert "WHERE \"reason\" = 'x\\' OR \\'1\\'=\\'1 ; DROP DATABASE farm' ORDER BY" in (
        statements.recent)
    assert "\n" not in statements.recent
