"""``python -m dashboards.push`` against a stand-in for Grafana's HTTP API.

Grafana cannot be installed here, so a small local HTTP server implements the
endpoints the push uses — datasources by uid, folders by uid, dashboards by uid
and ``POST /api/dashboards/db`` — with Grafana's status codes (404 for a missing
uid, 409/412 when creating what exists without overwrite), keeps what it is sent,
records every call and insists on the bearer token. The real grafana-client
library talks to it over HTTP.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaUnauthorizedError

from dashboards import push
from dashboards.builders import DATASOURCE_UID
from devstack.servers import free_port

TOKEN = "glsa_test_token"


@dataclass
class FakeGrafana:
    """Grafana's state as far as the push can see it, and every call made."""

    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    next_id: int = 1

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        self.calls.append((method, path))
        parts = path.strip("/").split("/")
        if parts[:3] == ["api", "datasources", "uid"] and len(parts) == 4:
            uid = parts[3]
            if method == "GET":
                found = self.datasources.get(uid)
                return (200, found) if found else (404, {"message": "Data source not found"})
            if method == "PUT" and uid in self.datasources:
                self.datasources[uid] = {**body, "id": self.datasources[uid]["id"]}
                return 200, {"message": "Datasource updated"}
        if parts == ["api", "datasources"] and method == "POST":
            if any(d["name"] == body["name"] for d in self.datasources.values()):
                return 409, {"message": "data source with the same name already exists"}
            self.datasources[body["uid"]] = {**body, "id": self._id()}
            return 200, {"message": "Datasource added"}
        if parts[:2] == ["api", "folders"]:
            return self._folders(method, parts[2:], body)
        if parts[:3] == ["api", "dashboards", "uid"] and method == "GET":
            found = self.dashboards.get(parts[3])
            return (200, {"dashboard": found["dashboard"]}) if found else (
                404, {"message": "Dashboard not found"})
        if parts == ["api", "dashboards", "db"] and method == "POST":
            uid = body["dashboard"]["uid"]
            if uid in self.dashboards and not body.get("overwrite"):
                return 412, {"status": "name-exists"}
            version = self.dashboards[uid]["version"] + 1 if uid in self.dashboards else 1
            self.dashboards[uid] = {**body, "version": version}
            return 200, {"status": "success", "uid": uid, "version": version}
        return 404, {"message": f"not implemented in the stand-in: {method} {path}"}

    def _folders(self, method: str, rest: list[str], body: Any) -> tuple[int, Any]:
        if not rest and method == "POST":
            if body["uid"] in self.folders:
                return 409, {"message": "a folder with the same uid already exists"}
            self.folders[body["uid"]] = {"uid": body["uid"], "title": body["title"],
                                         "version": 1}
            return 200, self.folders[body["uid"]]
        if len(rest) == 1 and method == "GET":
            found = self.folders.get(rest[0])
            return (200, found) if found else (404, {"message": "folder not found"})
        if len(rest) == 1 and method == "PUT" and rest[0] in self.folders:
            self.folders[rest[0]]["title"] = body["title"]
            return 200, self.folders[rest[0]]
        return 404, {"message": "not implemented in the stand-in"}

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id


@pytest.fixture
def grafana() -> Iterator[tuple[FakeGrafana, str]]:
    state = FakeGrafana()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._reply(401, {"message": "Unauthorized"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            self._reply(*state.handle(self.command, self.path, body))

        def _reply(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_push_creates_then_updates_without_duplicates(grafana: tuple[FakeGrafana, str]) -> None:
    state, url = grafana
    boards = push.load_dashboards()
    assert len(boards) == 6, "every dashboard of dashboards/json, the drill-down included"
    api = GrafanaApi.from_url(url, credential=TOKEN)
    first = push.push(api, influx_url="http://influx:8086", influx_token="secret")
    assert first.created == [f"datasource {DATASOURCE_UID}", "folder farm",
                             *[f"dashboard {b['uid']}" for b in boards]]
    assert first.updated == []

    state.calls.clear()
    second = push.push(api, influx_url="http://influx:8086", influx_token="secret")
    assert second.created == []
    assert second.updated == [f"datasource {DATASOURCE_UID}",
                              *[f"dashboard {b['uid']}" for b in boards]]
    assert ("POST", "/api/datasources") not in state.calls
    assert ("POST", "/api/folders") not in state.calls
    assert state.calls.count(("POST", "/api/dashboards/db")) == len(boards)

    assert list(state.datasources) == [DATASOURCE_UID]
    source = state.datasources[DATASOURCE_UID]
    assert source["jsonData"]["version"] == "InfluxQL" and source["jsonData"]["dbName"] == "farm"
    assert source["secureJsonData"]["httpHeaderValue1"] == "Token secret"
    assert state.folders == {"farm": {"uid": "farm", "title": "Farm / 农业", "version": 1}}
    assert sorted(state.dashboards) == sorted(b["uid"] for b in boards)
    for board in boards:
        stored = state.dashboards[board["uid"]]
        assert stored["version"] == 2 and stored["overwrite"] is True
        assert stored["folderUid"] == "farm" and stored["dashboard"]["id"] is None
        assert stored["dashboard"]["title"] == board["title"]


def test_push_renames_the_folder_and_refuses_a_bad_token(grafana: tuple[FakeGrafana, str]) -> None:
    state, url = grafana
    state.folders["farm"] = {"uid": "farm", "title": "old", "version": 1}
    api = GrafanaApi.from_url(url, credential=TOKEN)
    result = push.push(api, influx_url="http://i:8086", influx_token="t", dashboards=[])
    assert "folder farm" in result.updated and state.folders["farm"]["title"] == "Farm / 农业"
    with pytest.raises(GrafanaUnauthorizedError):
        push.push(GrafanaApi.from_url(url, credential="wrong"), influx_url="http://i:8086",
                  influx_token="t", dashboards=[])


def test_command_line(grafana: tuple[FakeGrafana, str], monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    state, url = grafana
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    assert push.main(["--url", url, "--influx-url", "http://influx:8086",
                      "--folder", "Farm / 农业"]) == 0
    out = capsys.readouterr().out
    assert "created dashboard farm-city-overview" in out
    assert len(state.dashboards) == 6
    monkeypatch.delenv("GRAFANA_TOKEN")
    with pytest.raises(SystemExit):
        push.main(["--url", url])


def test_command_line_fails_in_one_line(grafana: tuple[FakeGrafana, str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """An unreachable Grafana or a refused token is one line on stderr and exit 1 (issue 14)."""
    _, url = grafana
    unreachable = f"http://127.0.0.1:{free_port()}"
    for target, token in ((unreachable, TOKEN), (url, "wrong")):
        assert push.main(["--url", target, "--token", token]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"dashboards.push: Grafana at {target} did not accept the push:")
