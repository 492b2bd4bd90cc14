"""The ingest fast paths give exactly what the general paths give (issue #6).

Each shortcut taken for speed — orjson before ``json``, the hand check of the
common telemetry shape before pydantic, the cached series key before escaping
tags per point, the per-site-type metric table before the catalog — must be
invisible: same values, same rejections, same bytes.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from farm_contract.catalog import CATALOG
from farm_contract.payloads import (
    PayloadError,
    TelemetryMessage,
    decode_json,
    decode_json_stdlib,
    telemetry_fast,
)
from farm_contract.registry import Registry
from ingest_service.model import Inbound, Point
from ingest_service.outputs.lineprotocol import encode_point, series_key
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


reading = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.none(),
)
telemetry_like = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, True, 1.0, 2, "1", None]),
        "seq": st.one_of(st.integers(min_value=-2, max_value=2**64), st.floats(), st.booleans()),
        "ts": st.sampled_from(
            ["2026-05-01T08:00:00Z", "2026-05-01T08:00:00.123+08:00", "2026-05-01T08:00:00",
             "yesterday", 1_777_000_000_000, True, None, "2026-W18-5T08:00:00Z",
             "2026-121T08:00:00Z", " 2026-05-01T08:00:00Z", "2026-05-01T08:00:00.123456789Z",
             1_777_000_000_000.0]
        ),
        "readings": st.one_of(
            st.dictionaries(st.sampled_from([*CATALOG, "x"]), reading, max_size=4),
            st.lists(reading, max_size=2), st.none(),
        ),
        "batch": st.none(),
        "extra": st.integers(),
    },
)


@settings(max_examples=600, deadline=None)
@given(telemetry_like)
def test_telemetry_fast_path_agrees_with_pydantic(data: dict[str, Any]) -> None:
    fast = telemetry_fast(data)
    try:
        slow = TelemetryMessage.model_validate(data).records()
    except ValueError:
        assert fast is None
        return
    if fast is not None:
        assert [r.model_dump() for r in fast] == [r.model_dump() for r in slow]
        for a, b in zip(fast, slow, strict=True):
            assert same(dict(a.readings), dict(b.readings))
            assert a.ts == b.ts and a.ts.tzinfo is not None and type(a.seq) is int


def test_common_telemetry_takes_the_fast_path() -> None:
    data = {"v": 1, "seq": 7, "ts": "2026-05-01T08:00:00Z",
            "readings": {"flow_lpm": 1.5, "valve_open": True, "volume_m3": 3}}
    assert telemetry_fast(data) is not None


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


def _reading_of(name: str) -> st.SearchStrategy[Any]:
    """Mostly what ``name`` takes (a float in range, or a boolean), sometimes not."""
    metric = CATALOG.get(name)
    if metric is None:
        return st.floats(0, 1)
    if metric.is_bool:
        right: st.SearchStrategy[Any] = st.booleans()
    else:
        low = -1e6 if metric.minimum is None else float(metric.minimum)
        high = 1e6 if metric.maximum is None else float(metric.maximum)
        right = st.floats(low, high)
    wrong = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), st.booleans(),
        st.text(max_size=2), st.none(), st.just({"a": 1.0}), st.just(1e30),
    )
    return st.one_of(*[right] * 7, wrong)


@st.composite
def near_valid_telemetry(draw: st.DrawFn, site_type: str) -> dict[str, Any]:
    """A telemetry message of a ``site_type`` device that is valid more often than not."""
    own = [name for name, metric in CATALOG.items() if metric.allowed_at(site_type)]
    name = st.one_of(*[st.sampled_from(own)] * 9, st.sampled_from([*CATALOG, "x"]))
    names = draw(st.lists(name, min_size=1, max_size=5, unique=True))
    good_ts = ["2026-05-01T08:00:00Z", "2026-05-01T08:00:00.123+08:00", "2026-05-01T08:00:00.5Z"]
    bad_ts = ["2099-01-01T00:00:00Z", "1999-01-01T00:00:00Z", "2026-05-01T08:00:00", 17770000,
              "2026-W18-5T08:00:00Z", "2026-121T08:00:00Z", "2026-05-01T08:00:00Z\n"]
    return {
        "v": draw(st.sampled_from([1] * 8 + [True, 2, 1.0])),
        "seq": draw(st.one_of(*[st.integers(0, 10**6)] * 4, st.sampled_from([-1, 2**63]))),
        "ts": draw(st.one_of(*[st.sampled_from(good_ts)] * 4, st.sampled_from(bad_ts))),
        "readings": {name: draw(_reading_of(name)) for name in names},
    }


@settings(max_examples=800, deadline=None)
@given(st.data())
def test_telemetry_line_is_the_general_paths_line(data: st.DataObject) -> None:
    """Whatever the fast path turns into a line, the general path stores as that very line."""
    topic = data.draw(st.sampled_from(TOPICS[:2] * 2 + TOPICS))
    site_type = "manure" if "/farm-1/" in topic else "drip"
    message = data.draw(near_valid_telemetry(site_type) | telemetry_like)
    registry = Registry.from_csv(SITES, DEVICES)
    payload = json.dumps(message, allow_nan=True).encode()
    line = Enricher(lambda: registry, Settings()).telemetry_line(topic, payload)
    if line is None:
        return
    want, rejections = _general_line(Enricher(lambda: registry, Settings()), topic, payload)
    assert rejections == []
    assert line == want


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
