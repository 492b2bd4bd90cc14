"""Bad input, fuzzed with hypothesis: nothing crashes; all is stored or rejected with a reason.

Three layers:

- the threaded pipeline as production runs it (``start``, ``submit_many``), without
  servers: any topic and payload (malformed JSON, wrong
  types, NaN, out-of-range values, far-off timestamps, huge messages, unknown
  devices, a device under another site, names full of line-protocol specials)
  becomes points and/or rejections whose reasons are the ones in
  docs/contract.md §10, and every line of the body written parses back with
  InfluxDB's own escaping rules to exactly the values meant (or their documented
  normal form);
- a real InfluxDB: tag and string values with commas, spaces, ``=``, newlines,
  quotes and backslashes are written and read back;
- the HTTP API: query parameters carrying InfluxQL never cause a 500, and the
  database is intact afterwards.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.servers import Influxd
from farm_contract.catalog import CATALOG
from farm_contract.registry import Registry
from ingest_service.api.app import create_app
from ingest_service.indicators.engine import IndicatorEngine
from ingest_service.influxql import InfluxQL
from ingest_service.model import FieldValue, Inbound, Point
from ingest_service.outputs.influx import make_writer
from ingest_service.outputs.lineprotocol import encode, encode_point
from ingest_service.pipeline.batcher import Outcome, Pipeline, rejection_point
from ingest_service.pipeline.enrich import Enricher
from ingest_service.settings import Settings
from ingest_service.state import RegistryHolder, ServiceState, Stats
from tests.helpers import count, rows, through_pipeline

ROOT = Path(__file__).resolve().parents[1]

SITES_CSV = """site_id,name,county,site_type,lat,lon,large_scale,area_mu,water_quota_m3_per_mu
drip-1,滴灌一号,平城区,drip,40.1,113.3,,120,300
farm-1,养殖场,云州区,manure,40.2,113.5,true,,
straw-1,秸秆站,"a,b c=d""e\\f",straw,40.0,113.6,,300,
"""
DEVICES_CSV = """device_id,site_id,dev_eui,model
dev-1,drip-1,,probe
dev-2,farm-1,0011223344556677,lora
dev-3,straw-1,,scale
"""
REGISTRY = Registry.from_csv(SITES_CSV, DEVICES_CSV)


def contract_reasons() -> set[str]:
    """The reason codes of docs/contract.md §10, read from its table."""
    text = (ROOT / "docs" / "contract.md").read_text()
    section = text.split("### What is rejected, and how", 1)[1].split("###", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE))


REASONS = contract_reasons()


def test_the_contract_lists_the_reasons() -> None:
    assert {"bad_json", "too_large", "unknown_device", "wrong_site", "db_rejected"} <= REASONS


# --- a line-protocol reader with InfluxDB 1.x's unescaping rules -----------------------


def _split(text: str, separators: str, quotes: bool = False) -> list[str]:
    """Split at unescaped ``separators`` (outside double quotes when ``quotes``).

    As InfluxDB reads it: a backslash escapes only the character after it that
    needs escaping there (``,``, ``=``, space; inside a string ``"`` and ``\\``);
    any other backslash is a plain character. Escapes are kept in the parts.
    """
    parts, current, quoted, i = [], "", False, 0
    while i < len(text):
        char = text[i]
        following = text[i + 1] if i + 1 < len(text) else ""
        escapable = '"\\' if quoted else ", ="
        if char == "\\" and following and following in escapable:
            current += char + following
            i += 2
            continue
        if quotes and char == '"':
            quoted = not quoted
        if char in separators and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
        i += 1
    parts.append(current)
    return parts


def _unescape_key(text: str) -> str:
    return re.sub(r"\\([, =])", r"\1", text)


def _field_value(text: str) -> FieldValue:
    if text.startswith('"'):
        assert text.endswith('"') and len(text) >= 2, text
        return re.sub(r'\\([\\"])', r"\1", text[1:-1])
    if text in ("true", "false"):
        return text == "true"
    if text.endswith("i"):
        return int(text[:-1])
    return float(text)


def parse_line(line: str) -> Point:
    """One line of line protocol, as InfluxDB 1.x reads it (see tests of the probe rules)."""
    head = _split(line, " ")[0]
    rest = line[len(head) + 1 :]
    fields_text, time_text = _split(rest, " ", quotes=True)
    measurement, *tag_parts = _split(head, ",")
    tags = {}
    for part in tag_parts:
        key, value = _split(part, "=")
        tags[_unescape_key(key)] = _unescape_key(value)
    fields = {}
    for part in _split(fields_text, ",", quotes=True):
        key, value = _split(part, "=", quotes=True)
        fields[_unescape_key(key)] = _field_value(value)
    return Point(_unescape_key(measurement), tags, fields, int(time_text))


def stored_tag(value: str) -> str:
    """How a tag value comes back: newlines become spaces, a trailing backslash is dropped."""
    value = value.encode("utf-8", errors="replace").decode("utf-8")
    return value.rstrip("\\").replace("\n", " ").replace("\r", " ")


def stored_string(value: str) -> str:
    """How a string field comes back: CR and LF as the two characters ``\\r``/``\\n``."""
    value = value.encode("utf-8", errors="replace").decode("utf-8")
    return value.replace("\n", "\\n").replace("\r", "\\r")


def expected_point(point: Point) -> Point:
    return Point(
        point.measurement,
        {k: stored_tag(v) for k, v in point.tags.items() if v.rstrip("\\")},
        {
            key: stored_string(value) if isinstance(value, str) else value
            for key, value in point.fields.items()
        },
        point.time_ns,
    )


def test_line_reader_follows_influxdb_rules() -> None:
    point = parse_line('m,k=a\\,b\\ c\\=d\\e s="x\\"y\\\\z\\n",n=1.5,i=3i,b=true 7')
    assert point.tags == {"k": "a,b c=d\\e"}
    assert point.fields == {"s": 'x"y\\z\\n', "n": 1.5, "i": 3, "b": True}


# --- strategies ----------------------------------------------------------------------

SPECIAL = st.sampled_from(
    [",", " ", "=", "\n", "\r", '"', "'", "\\", "\\,", "\\ ", "\x00", "é", "\ud800"]
)
"""Line-protocol and InfluxQL specials, NUL, and a lone surrogate (JSON can carry one)."""
nasty_text = st.lists(st.one_of(SPECIAL, st.text(max_size=4)), max_size=8).map("".join)
metric_name = st.one_of(st.sampled_from(sorted(CATALOG)), nasty_text)
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    nasty_text,
)
now_ms = int(datetime.now(UTC).timestamp() * 1000)
timestamp = st.one_of(
    st.integers(min_value=now_ms - 10**12, max_value=now_ms + 10**12),
    st.integers(min_value=-(2**66), max_value=2**66),
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    ).map(lambda moment: moment.isoformat()),
    nasty_text,
    json_scalar,
)
seq = st.one_of(st.integers(min_value=0, max_value=10**7), st.integers(), json_scalar)
readings = st.dictionaries(metric_name, json_scalar, max_size=6)
record = st.fixed_dictionaries({"seq": seq, "ts": timestamp, "readings": readings})
event_record = st.fixed_dictionaries(
    {
        "seq": seq,
        "ts": timestamp,
        "type": st.one_of(
            st.sampled_from(["film_applied", "film_recovered", "harvest", "straw_utilized",
                             "manure_treated", "manure_utilized", "facility_fault"]),
            nasty_text,
        ),
    },
    optional={
        "mass_t": json_scalar,
        "grain_t": json_scalar,
        "area_mu": json_scalar,
        "thickness_mm": json_scalar,
        "crop": st.one_of(st.sampled_from(["corn", "oats"]), nasty_text),
        "use": st.one_of(st.sampled_from(["fertilizer", "feed", "energy"]), nasty_text),
        "facility": st.one_of(st.just("lagoon"), nasty_text),
    },
)
message_body = st.one_of(
    record.map(lambda r: {"v": 1, **r}),
    st.lists(record, min_size=1, max_size=4).map(lambda b: {"v": 1, "batch": b}),
    event_record.map(lambda r: {"v": 1, **r}),
    st.lists(event_record, min_size=1, max_size=3).map(lambda b: {"v": 1, "batch": b}),
    st.fixed_dictionaries({"v": st.just(1), "state": nasty_text | st.just("online"),
                           "ts": timestamp}),
    st.dictionaries(nasty_text, json_scalar, max_size=4),
    json_scalar,
)


def _dump(body: object) -> bytes:
    return json.dumps(body, allow_nan=True).encode("utf-8", errors="surrogatepass")


payloads = st.one_of(
    message_body.map(_dump),
    st.binary(max_size=200),
    message_body.map(_dump).map(lambda raw: raw[: len(raw) // 2]),  # cut short
    st.just(b'{"v":1,"seq":1,"ts":1,"readings":{"flow_lpm":1}}' + b" " * 300_000),  # too large
)
ids = st.sampled_from(["dev-1", "dev-2", "dev-3", "nobody", "Dev-1", "dev-1,x", ""])
sites = st.sampled_from(["drip-1", "farm-1", "straw-1", "elsewhere", "a b", ""])
kinds = st.sampled_from(["telemetry", "event", "status", "other"])
topics = st.one_of(
    st.builds(lambda s, d, k: f"farm/v1/{s}/{d}/{k}", sites, ids, kinds),
    st.builds(lambda eui: f"application/1/device/{eui}/event/up",
              st.sampled_from(["0011223344556677", "ffffffffffffffff", "zz"])),
    st.text(max_size=40),
)


class RecordingWriter:
    """Keeps every body written; checks each line reads back."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def write(self, body: bytes) -> None:
        self.bodies.append(body)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        return


def make_pipeline() -> tuple[Pipeline, RecordingWriter, Stats]:
    writer = RecordingWriter()
    stats = Stats()
    config = Settings(batch_interval_s=0.001)
    enricher = Enricher(lambda: REGISTRY, config)
    return Pipeline(config, enricher, writer, stats), writer, stats


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=topics, payload=payloads)
def test_any_message_is_stored_or_rejected_with_a_known_reason(topic: str, payload: bytes) -> None:
    """Through the threaded path production runs (``start``, ``submit_many``, writer thread)."""
    pipeline, writer, stats = make_pipeline()
    outcomes: list[Outcome] = []
    original = pipeline.outcome

    def recorded(item: Inbound) -> Outcome:
        outcomes.append(original(item))
        return outcomes[-1]

    pipeline.outcome = recorded  # type: ignore[method-assign]
    acks = through_pipeline(pipeline, [(topic, payload)])
    assert acks == {0: 1}, "every message is acknowledged exactly once, after the write"
    [outcome] = outcomes
    if outcome.line is not None:  # the fast path: the general path's one point, encoded
        general = make_pipeline()[0].general_outcome(Inbound(topic, payload, 1_000))
        assert not general.rejections and len(general.points) == 1
        assert outcome.line == encode_point(general.points[0])
        outcome = general
    assert outcome.points or outcome.rejections
    assert {r.reason for r in outcome.rejections} <= REASONS
    assert sum(stats.rejected.values()) == len(outcome.rejections)
    written = [rejection_point(r) for r in outcome.rejections]
    points = [p for p in outcome.points + written if p.fields]
    lines = b"\n".join(writer.bodies).decode("utf-8").split("\n") if writer.bodies else []
    assert len(lines) == len(points)
    for line, point in zip(lines, points, strict=True):
        assert parse_line(line) == expected_point(point), line


@settings(max_examples=200, deadline=None)
@given(county=nasty_text.filter(lambda c: c.strip() != ""), detail=nasty_text)
def test_nasty_tag_and_string_values_encode_to_one_parseable_line(
    county: str, detail: str
) -> None:
    point = Point("telemetry", {"county": county, "device_id": "d"}, {"detail": detail}, 5)
    body = encode([point]).decode("utf-8")
    assert "\n" not in body
    assert parse_line(body) == expected_point(point)


def test_counter_decreasing_and_far_timestamps_are_rejected_with_reasons() -> None:
    pipeline, _, _ = make_pipeline()
    now = datetime.now(UTC)

    def reasons(body: dict[str, object]) -> list[str]:
        payload = json.dumps(body).encode()
        outcome = pipeline.outcome(Inbound("farm/v1/drip-1/dev-1/telemetry", payload, 1))
        return [r.reason for r in outcome.rejections]

    ms = int(now.timestamp() * 1000)
    assert reasons({"v": 1, "seq": 1, "ts": ms, "readings": {"volume_m3": 10.0}}) == []
    assert reasons({"v": 1, "seq": 2, "ts": ms + 1000, "readings": {"volume_m3": 9.0}}) == [
        "counter_decreased"
    ]
    future = (now + timedelta(days=2)).isoformat()
    assert reasons({"v": 1, "seq": 3, "ts": future, "readings": {"flow_lpm": 1.0}}) == [
        "ts_in_future"
    ]
    assert reasons({"v": 1, "seq": 4, "ts": "1999-12-31T23:59:59Z",
                    "readings": {"flow_lpm": 1.0}}) == ["ts_too_old"]
    assert reasons({"v": 1, "seq": 5, "ts": ms, "readings": {"flow_lpm": 1e9}}) == [
        "out_of_range"
    ]


def test_a_flood_of_bad_readings_is_summed_up_not_amplified() -> None:
    pipeline, _, _ = make_pipeline()
    body = {"v": 1, "seq": 1, "ts": now_ms, "readings": {f"x{i}": 1 for i in range(5000)}}
    outcome = pipeline.outcome(Inbound("farm/v1/drip-1/dev-1/telemetry", _dump(body), 1))
    assert len(outcome.rejections) == 101
    assert outcome.rejections[-1].detail == "4900 more like this in the same message"
    assert {r.reason for r in outcome.rejections} == {"unknown_metric"}


# --- against a real InfluxDB ---------------------------------------------------------


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    server = Influxd(tmp_path_factory.mktemp("influxd-fuzz"))
    server.start()
    server.query("CREATE DATABASE farm")
    yield server
    server.stop()


@pytest.mark.integration
def test_nasty_values_round_trip_through_influxdb(influx: Influxd) -> None:
    writer = make_writer(Settings(influx_url=influx.url, influx_api="v1"))
    examples: list[Point] = []

    @settings(max_examples=80, deadline=None)
    @given(county=nasty_text.filter(lambda c: c.strip("\\ \n\r") != ""), detail=nasty_text)
    def write_one(county: str, detail: str) -> None:
        point = Point(
            "roundtrip",
            {"county": county, "device_id": "d"},
            {"detail": detail, "n": len(examples)},
            1_000_000 + len(examples),
        )
        examples.append(point)
        writer.write(encode([point]))

    write_one()
    writer.close()
    by_n = {
        int(str(row["n"])): row
        for row in rows(influx, "SELECT n, detail, county FROM roundtrip")
    }
    assert len(by_n) == len(examples)
    for point in examples:
        want = expected_point(point)
        row = by_n[int(point.fields["n"])]
        assert row["county"] == want.tags["county"], point
        assert row["detail"] == want.fields["detail"], point


# --- the API's query parameters ------------------------------------------------------

INJECTIONS = [
    "' OR 1=1",
    "'; DROP DATABASE farm",
    '"; DROP DATABASE farm',
    "\\'",
    "\\",
    "x' OR reason =~ /.*/ --",
    "a\nDROP DATABASE farm",
    "'); DELETE FROM rejection; --",
]


@pytest.mark.integration
def test_api_query_parameters_carrying_influxql_are_harmless(influx: Influxd) -> None:
    writer = make_writer(Settings(influx_url=influx.url, influx_api="v1"))
    writer.write(
        encode(
            [
                Point("rejection", {"reason": "bad_json"},
                      {"topic": "t", "payload": "p", "detail": "d"}, now_ms * 1_000_000),
                Point("telemetry", {"device_id": "d", "county": "平城区"},
                      {"flow_lpm": 1.0}, now_ms * 1_000_000),
            ]
        )
    )
    settings_ = Settings(influx_url=influx.url, influx_api="v1")
    query = InfluxQL(settings_)
    state = ServiceState(settings_, RegistryHolder(REGISTRY), influx_reachable=query.ping)
    client = TestClient(
        create_app(state, IndicatorEngine(query, state.registry.get, settings_)),
        base_url="http://127.0.0.1",
    )

    @settings(max_examples=150, deadline=None)
    @given(
        value=st.one_of(
            st.sampled_from(INJECTIONS),
            nasty_text.filter(lambda v: "\ud800" not in v),  # not sendable in a URL
            st.text(max_size=300),
        )
    )
    def probe(value: str) -> None:
        for path, params in (
            ("/api/v1/rejections", {"reason": value}),
            ("/api/v1/rejections", {"since": value}),
            ("/api/v1/indicators", {"county": value, "year": "2026"}),
            ("/api/v1/indicators", {"year": value}),
        ):
            response = client.get(path, params=params)
            assert response.status_code in (200, 404, 422), (path, params, response.text)
            if path == "/api/v1/rejections" and response.status_code == 200 and "reason" in params:
                got = {r["reason"] for r in response.json()["rejections"]}
                assert got <= {value}, "a reason filter returned other reasons"

    probe()
    client.close()
    assert count(influx, "SELECT count(detail) FROM rejection") == 1
    assert count(influx, "SELECT count(flow_lpm) FROM telemetry") == 1
