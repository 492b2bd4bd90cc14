"""The ingest fast paths give exactly what the general paths give (issue #6).

Each shortcut taken for speed — orjson before ``json``, the enricher's one step
from bytes to line for plain telemetry before parse (pydantic) and enrich, the
cached series key before escaping
tags per point, the per-site-type metric table before the catalog — must be
invisible: same values, same rejections, same bytes.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from farm_contract.catalog import CATALOG, Metric, SiteType
from farm_contract.payloads import (
    SEQ_MAX,
    PayloadError,
    decode_json,
    decode_json_stdlib,
    format_ts,
    parse_ts,
)
from farm_contract.registry import Registry
from ingest_service.model import Inbound, Point
from ingest_service.outputs.lineprotocol import encode_point, series_key
from ingest_service.pipeline import enrich
from ingest_service.pipeline.enrich import Enricher
from ingest_service.pipeline.parse import Rejected, parse_device_message
from ingest_service.settings import Settings

SITES = """site_id,name,county,site_type,lat,lon,large_scale,area_mu,water_quota_m3_per_mu
drip-1,"滴灌 一,号",平城 区,drip,40.1,113.3,,120,300
farm-1,养殖场,"云州=区,x",manure,40.2,113.5,true,,
"""
DEVICES = """device_id,site_id,dev_eui,model
dev-1,drip-1,,probe
dev-2,farm-1,0011223344556677,lora
"""
NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EARLIEST_MS = (parse_ts(Settings().earliest_ts) - EPOCH) // timedelta(milliseconds=1)
SKEW_MS = int(Settings().max_future_skew_s * 1000)


def epoch_ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


EPOCH_SPAN_MS = epoch_ms(NOW) - EARLIEST_MS
"""How far back an epoch-ms ``ts`` is drawn: a fixed range (draws must not follow the clock)."""


def outcome(payload: bytes) -> tuple[str, Any]:
    try:
        return "ok", decode_json_stdlib(payload)
    except PayloadError as exc:
        return exc.reason, exc.detail


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (1 is not 1.0 nor True)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


EDGE_PAYLOADS = [
    b"NaN", b"[NaN]", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b'{"a":1e400}',
    b"\xef\xbb\xbf{}", b'{"a":1,"a":2}', b'"\\ud800"', b'{"k":"\\udfff x"}',
    b"123456789012345678901234567890", b"-9223372036854775809", b"18446744073709551615",
    b"18446744073709551616", b"9223372036854775807", b'{"seq":99999999999999999999}',
    b" {} ", b"{}\x00", b"[1,]", b"01", b"1.", b'"\xed\xa0\x80"', b"\xff", b"",
    b"[" * 2000 + b"]" * 2000, b'{"a":"\x01"}', b"-0", b"-0.0", b"1e-400",
    b'{"v":1,"seq":1,"ts":"2026-05-01T08:00:00Z","readings":{"flow_lpm":1.0}}',
    b'{"x":0.12345678901234567890123}',
]


def test_decode_matches_the_standard_library_on_edge_cases() -> None:
    for payload in EDGE_PAYLOADS:
        try:
            got: tuple[str, Any] = ("ok", decode_json(payload))
        except PayloadError as exc:
            got = (exc.reason, exc.detail)
        want = outcome(payload)
        assert got[0] == want[0], payload
        assert same(got[1], want[1]), payload


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_decode_matches_the_standard_library(value: Any) -> None:
    payload = json.dumps(value, allow_nan=True).encode("utf-8", errors="surrogatepass")
    want = outcome(payload)
    try:
        got: tuple[str, Any] = ("ok", decode_json(payload))
    except PayloadError as exc:
        got = (exc.reason, exc.detail)
    assert got[0] == want[0]
    assert same(got[1], want[1])


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=8),
    st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=5),
)
def test_cached_series_key_encodes_like_the_tags(measurement: str, tags: dict[str, str]) -> None:
    plain = Point(measurement or "m", tags, {"x": 1.5, "seq": 3}, 10)
    cached = Point(plain.measurement, tags, plain.fields, 10, series_key(plain.measurement, tags))
    assert encode_point(cached) == encode_point(plain)


def test_enricher_points_encode_as_without_the_cache() -> None:
    current = [Registry.from_csv(SITES, DEVICES)]
    enricher = Enricher(lambda: current[0], Settings())
    payload = {"v": 1, "seq": 5, "ts": "2026-05-01T08:00:00Z",
               "readings": {"flow_lpm": 12.5, "volume_m3": 3, "valve_open": False,
                            "soil_temp_c": -41.0, "nh3_ppm": 1.0, "nope": 1.0}}
    body = json.dumps(payload).encode()
    topic = "farm/v1/drip-1/dev-1/telemetry"
    message = Inbound(topic, body, 1_000)
    points, rejections = enricher.points(parse_device_message(topic, body, "farm"), message, NOW)
    assert [r.reason for r in rejections] == ["out_of_range", "metric_not_for_site",
                                             "unknown_metric"]
    (point,) = points
    assert point.series is not None
    assert point.fields == {"flow_lpm": 12.5, "volume_m3": 3.0, "valve_open": False, "seq": 5}
    assert type(point.fields["volume_m3"]) is float
    uncached = Point(point.measurement, point.tags, point.fields, point.time_ns)
    assert encode_point(point) == encode_point(uncached)
    # a registry replaced with other facts gives other tags (the cache follows it)
    current[0] = Registry.from_csv(SITES.replace("平城 区", "新区"), DEVICES)
    again, _ = enricher.points(parse_device_message(topic, body, "farm"), message, NOW)
    assert again[0].tags["county"] == "新区" and "新区" in encode_point(again[0])


def _general_line(enricher: Enricher, topic: str, payload: bytes) -> tuple[str | None, list[str]]:
    """The general path's line for a message (None unless exactly one point), and rejections."""
    message = Inbound(topic, payload, 1_000)
    try:
        parsed = parse_device_message(topic, payload, "farm")
        points, rejections = enricher.points(parsed, message)
    except Rejected as exc:
        return None, [exc.reason]
    line = encode_point(points[0]) if len(points) == 1 else None
    return line, [r.reason for r in rejections]


TOPICS = [
    "farm/v1/drip-1/dev-1/telemetry",
    "farm/v1/farm-1/dev-2/telemetry",
    "farm/v1/farm-1/dev-1/telemetry",  # wrong site
    "farm/v1/drip-1/dev-9/telemetry",  # unknown device
    "other/v1/drip-1/dev-1/telemetry",  # another prefix
    "farm/v1/drip-1/dev-1/event",
    "farm/v1/drip-1/dev-1\n/telemetry",  # a trailing newline in an id
    "farm/v1/drip-1\n/dev-1/telemetry",
]


def _reading(metric: Metric) -> st.SearchStrategy[Any]:
    """A reading ``metric`` takes: a boolean, or a float within its range."""
    if metric.is_bool:
        return st.booleans()
    return st.floats(float(metric.minimum or 0), float(metric.maximum or 0))


def _ts(moment: datetime, separator: str, extra_digits: str, offset: str) -> str:
    """``moment`` (whole milliseconds) as RFC 3339 in one of the forms the contract allows."""
    local = moment.astimezone(timezone(timedelta(hours=8))) if offset == "+08:00" else moment
    whole = local.strftime(f"%Y-%m-%d{separator}%H:%M:%S")
    return f"{whole}.{local.microsecond // 1000:03d}{extra_digits}{offset}"


@st.composite
def valid_telemetry(draw: st.DrawFn, site_type: SiteType) -> dict[str, Any]:
    """Plain, valid telemetry of a ``site_type`` device, built from the catalog."""
    own = [name for name, metric in CATALOG.items() if metric.allowed_at(site_type)]
    names = draw(st.lists(st.sampled_from(own), min_size=1, max_size=len(own), unique=True))
    ago_ms = draw(st.integers(0, 400 * 86_400_000))
    moment = datetime.now(UTC).replace(microsecond=0) - timedelta(milliseconds=ago_ms)
    ts: str | int
    if draw(st.integers(0, 2)) == 0:  # integer epoch milliseconds, as many devices send
        back = draw(st.sampled_from([0, EPOCH_SPAN_MS]) | st.integers(0, EPOCH_SPAN_MS))
        ts = max(EARLIEST_MS, epoch_ms(moment) - back)  # as far back as the earliest allowed
    else:
        separator = draw(st.sampled_from("Tt "))
        digits = draw(st.text("0123456789", max_size=6))
        offset = draw(st.sampled_from(["Z", "z", "+08:00", "+00:00"]))
        ts = _ts(moment, separator, digits, offset)
    event("ts: epoch ms" if type(ts) is int else "ts: RFC 3339")
    body = {
        "v": 1,
        "seq": draw(st.integers(0, SEQ_MAX)),
        "ts": ts,
        "readings": {name: draw(_reading(CATALOG[name])) for name in names},
    }
    if draw(st.integers(0, 4)) == 0:
        body["note"] = draw(st.text(max_size=5))  # extra fields are ignored by both paths
    order = draw(st.permutations(list(body)))
    return {key: body[key] for key in order}


def epoch_edges() -> list[tuple[Any, str]]:
    """Epoch-ms ``ts`` values just out of bounds or of the wrong type, and the general
    path's reason. "Ahead" is 1 s past the allowed skew, so no test races the clock."""
    now_ms = epoch_ms(datetime.now(UTC))
    return [(0, "ts_too_old"), (-1, "ts_too_old"), (EARLIEST_MS - 1, "ts_too_old"),
            (now_ms + SKEW_MS + 1000, "ts_in_future"), (2**53, "invalid_payload"),
            (10**30, "invalid_payload"), (True, "invalid_payload"),
            (float(now_ms), "invalid_payload"), (str(now_ms), "invalid_payload")]


@dataclass
class Mutant:
    """A message the fast path must decline, and what the general path makes of it."""

    topic: str
    payload: bytes
    reasons: list[str]
    same_as: dict[str, Any] | None
    """A valid message whose fast-path line the general path must store, or None (nothing)."""


def _without(message: dict[str, Any], name: str) -> dict[str, Any] | None:
    readings = {k: v for k, v in message["readings"].items() if k != name}
    return {**message, "readings": readings} if readings else None


@st.composite
def mutant(draw: st.DrawFn, message: dict[str, Any], topic: str, site_type: SiteType) -> Mutant:
    """``message`` spoiled in one way the fast path leaves to the general path."""
    readings: dict[str, Any] = message["readings"]
    numeric = [name for name in readings if not CATALOG[name].is_bool]
    flags = [name for name in readings if CATALOG[name].is_bool]
    other_site = next(name for name, metric in CATALOG.items()
                      if metric.site_types == {SiteType.STRAW})
    kinds = ["unknown metric", "not for site", "future", "too old", "other ts form",
             "epoch edge", "batch",
             "envelope", "nan", "unknown device", "wrong site", "other prefix"]
    kinds += ["int", "out of range", "bool for number"] if numeric else []
    kinds += ["number for bool"] if flags else []
    kind = draw(st.sampled_from(kinds))
    event(f"mutation: {kind}")

    def changed(**fields: Any) -> bytes:
        return json.dumps({**message, **fields}, allow_nan=True).encode()

    def reading(name: str, value: Any) -> bytes:
        return changed(readings={**readings, name: value})

    plain = json.dumps(message).encode()
    if kind in ("int", "out of range", "bool for number"):
        name = draw(st.sampled_from(numeric))
        if kind == "int":
            whole = int(readings[name])
            return Mutant(topic, reading(name, whole), [],
                          {**message, "readings": {**readings, name: float(whole)}})
        bad = float(CATALOG[name].maximum or 0) + 1.0 if kind == "out of range" else True
        return Mutant(topic, reading(name, bad), ["out_of_range"], _without(message, name))
    if kind == "number for bool":
        name = draw(st.sampled_from(flags))
        return Mutant(topic, reading(name, 1.0), ["out_of_range"], _without(message, name))
    if kind == "unknown metric":
        return Mutant(topic, reading("x_unknown", 1.0), ["unknown_metric"], message)
    if kind == "not for site":
        return Mutant(topic, reading(other_site, 1.0), ["metric_not_for_site"], message)
    if kind == "future":
        ahead = format_ts(datetime.now(UTC) + timedelta(days=1))
        return Mutant(topic, changed(ts=ahead), ["ts_in_future"], None)
    if kind == "too old":
        return Mutant(topic, changed(ts="1999-12-31T23:59:59Z"), ["ts_too_old"], None)
    if kind == "other ts form":  # the same moment, as epoch ms or as RFC 3339 text
        moment = parse_ts(message["ts"])
        other = format_ts(moment) if type(message["ts"]) is int else epoch_ms(moment)
        return Mutant(topic, changed(ts=other), [], message)
    if kind == "epoch edge":
        ts, reason = draw(st.sampled_from(epoch_edges()))
        return Mutant(topic, changed(ts=ts), [reason], None)
    if kind == "batch":
        record = {key: message[key] for key in ("seq", "ts", "readings")}
        return Mutant(topic, json.dumps({"v": 1, "batch": [record]}).encode(), [], message)
    if kind == "envelope":
        ts = message["ts"] if type(message["ts"]) is str else format_ts(parse_ts(message["ts"]))
        spoil = draw(st.sampled_from([{"v": True}, {"v": 1.0}, {"v": 2}, {"seq": -1},
                                      {"seq": SEQ_MAX + 1}, {"seq": 1.0}, {"readings": {}},
                                      {"ts": ts[:19]}, {"ts": "2026-W18-5T08:00:00Z"}]))
        return Mutant(topic, changed(**spoil), ["invalid_payload"], None)
    if kind == "nan":
        name = draw(st.sampled_from(list(readings)))
        return Mutant(topic, reading(name, math.nan), ["bad_json"], None)
    wrong = {"unknown device": ("farm/v1/drip-1/dev-9/telemetry", "unknown_device"),
             "wrong site": ("farm/v1/farm-1/dev-1/telemetry", "wrong_site"),
             "other prefix": (topic.replace("farm/", "other/", 1), "bad_topic")}
    where, reason = wrong[kind]
    return Mutant(where, plain, [reason], None)


FAST_TOPICS = {SiteType.DRIP: "farm/v1/drip-1/dev-1/telemetry",
               SiteType.MANURE: "farm/v1/farm-1/dev-2/telemetry"}


def test_telemetry_line_is_the_general_paths_line() -> None:
    """The fast path's line is the general path's line, on messages it mostly takes.

    Every example asserts: either the fast path made a line and the general path
    stores exactly that line and nothing else, or the fast path declined a message
    spoiled on purpose and the general path's rejections and stored line are the
    ones expected. A plain valid message must never be declined.
    """
    registry = Registry.from_csv(SITES, DEVICES)
    reached = Counter[str]()

    def enricher() -> Enricher:
        return Enricher(lambda: registry, Settings())  # fresh counters each time

    @settings(max_examples=800, deadline=None)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        site_type = data.draw(st.sampled_from(sorted(FAST_TOPICS)))
        topic = FAST_TOPICS[site_type]
        message = data.draw(valid_telemetry(site_type))
        spoiled = data.draw(st.sampled_from([False] * 9 + [True]))
        if spoiled:
            case = data.draw(mutant(message, topic, site_type))
        else:
            case = Mutant(topic, json.dumps(message).encode(), [], message)
        line = enricher().telemetry_line(case.topic, case.payload)
        stored, reasons = _general_line(enricher(), case.topic, case.payload)
        if line is not None:
            assert reasons == [] and line == stored
            reached["equal"] += 1
            if type(json.loads(case.payload)["ts"]) is int:
                reached["equal, epoch ms"] += 1
            event("fast line == general line")
            return
        assert spoiled, f"plain valid telemetry declined by the fast path: {case.payload!r}"
        assert sorted(reasons) == sorted(case.reasons)
        want = None
        if case.same_as is not None:
            want = enricher().telemetry_line(topic, json.dumps(case.same_as).encode())
            assert want is not None
        assert stored == want
        reached["declined"] += 1
        event("declined; general path as expected")

    check()
    total = reached["equal"] + reached["declined"]
    assert total == 800, reached
    assert reached["equal"] >= 0.8 * total, reached
    assert reached["equal, epoch ms"] >= 0.15 * total, reached


def test_epoch_ms_ts_is_declined_out_of_bounds_and_taken_up_to_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Epoch-ms edges: the general path's reason for each, and the fast path exactly at the
    bounds (its clock pinned to the general path's ``now``)."""
    registry = Registry.from_csv(SITES, DEVICES)
    topic = FAST_TOPICS[SiteType.DRIP]

    def body(ts: Any) -> bytes:
        return json.dumps({"v": 1, "seq": 3, "ts": ts, "readings": {"flow_lpm": 1.5}}).encode()

    for ts, reason in epoch_edges():
        fast = Enricher(lambda: registry, Settings()).telemetry_line(topic, body(ts))
        assert fast is None, ts
        assert _general_line(Enricher(lambda: registry, Settings()), topic, body(ts)) == (
            None, [reason]), ts

    now = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    monkeypatch.setattr(enrich, "wall_clock_ns", lambda: epoch_ms(now) * 1_000_000 + 456_789)
    latest = epoch_ms(now) + SKEW_MS  # the general path's bound, in whole milliseconds
    for ts, stored in ((EARLIEST_MS, True), (latest, True), (latest + 1, False)):
        line = Enricher(lambda: registry, Settings()).telemetry_line(topic, body(ts))
        general = Enricher(lambda: registry, Settings())
        inbound = Inbound(topic, body(ts), 1_000)
        points, rejections = general.points(
            parse_device_message(topic, body(ts), "farm"), inbound, now)
        assert [r.reason for r in rejections] == ([] if stored else ["ts_in_future"]), ts
        assert line == (encode_point(points[0]) if stored else None), ts
        if stored:
            assert line is not None and line.endswith(f" {ts * 1_000_000 + 3}")


def test_common_telemetry_becomes_a_line_and_anything_doubtful_does_not() -> None:
    registry = Registry.from_csv(SITES, DEVICES)
    fast = Enricher(lambda: registry, Settings())
    general = Enricher(lambda: registry, Settings())
    topic = "farm/v1/drip-1/dev-1/telemetry"

    def body(seq: int, **readings: Any) -> bytes:
        return json.dumps({"v": 1, "seq": seq, "ts": "2026-05-01T08:00:00.250Z",
                           "readings": readings}).encode()

    common = body(1, flow_lpm=12.5, volume_m3=100.0, valve_open=True, soil_temp_c=-3.25)
    line = fast.telemetry_line(topic, common)
    assert line is not None and line == _general_line(general, topic, common)[0]
    assert line.endswith(",seq=1i 1777622400250000001")
    # each of these is left to the general path, which rejects or converts it
    doubtful = {
        "counter falls": body(2, volume_m3=99.0),
        "int reading": body(3, flow_lpm=12),
        "out of range": body(4, soil_temp_c=-99.0),
        "not for this site": body(5, nh3_ppm=1.0),
        "unknown metric": body(6, nope=1.0),
        "bool for a number": body(7, flow_lpm=True),
        "batch": json.dumps({"v": 1, "batch": [{"seq": 8, "ts": "2026-05-01T08:00:00Z",
                                                "readings": {"flow_lpm": 1.0}}]}).encode(),
        "in the future": body(9, flow_lpm=1.0).replace(b"2026-05-01", b"2099-05-01"),
        "bad json": b"{",
    }
    for name, payload in doubtful.items():
        assert fast.telemetry_line(topic, payload) is None, name
    for other in TOPICS[2:]:
        assert fast.telemetry_line(other, common) is None, other
    # the counter the fast path saw is the general path's too: a fall is caught either way
    _, reasons = _general_line(fast, topic, body(2, volume_m3=99.0))
    assert reasons == ["counter_decreased"]


def test_telemetry_routes_follow_a_replaced_registry() -> None:
    current = [Registry.from_csv(SITES, DEVICES)]
    enricher = Enricher(lambda: current[0], Settings())
    topic = "farm/v1/drip-1/dev-1/telemetry"
    payload = b'{"v":1,"seq":1,"ts":"2026-05-01T08:00:00Z","readings":{"flow_lpm":1.5}}'
    assert "county=平城\\ 区" in (enricher.telemetry_line(topic, payload) or "")
    current[0] = Registry.from_csv(SITES.replace("平城 区", "新区"), DEVICES)
    assert "county=新区" in (enricher.telemetry_line(topic, payload) or "")
    current[0] = Registry.from_csv(SITES, DEVICES.replace("dev-1,drip-1", "dev-1,farm-1"))
    assert enricher.telemetry_line(topic, payload) is None  # the device moved: wrong site now
