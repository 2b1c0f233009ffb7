"""``driftswitch flags kill|restore``: the admin API's address, as a user may give it, and what a
refusal says (streams/tools/flags.py). A small HTTP server stands in for the worker's API."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import orjson
import pytest
from click.testing import CliRunner

from driftswitch.streams.tools.cli import main


class _Api(BaseHTTPRequestHandler):
    paths: ClassVar[list[str]] = []
    #: Per request: its Authorization header and its JSON body.
    sent: ClassVar[list[tuple[str | None, object]]] = []

    def do_POST(self) -> None:
        self.paths.append(self.path)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.sent.append((self.headers["Authorization"], orjson.loads(body)))
        if self.path != "/api/v1/flags/ranker/kill":
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b"404: Not Found")
            return
        body = orjson.dumps({"change": {"version": 4, "cause": {"reason": "bad rankings"}}})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api() -> Iterator[str]:
    _Api.paths = []
    _Api.sent = []
    server = HTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def _flags(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["flags", *args], env={"DRIFTSWITCH_ADMIN_TOKEN": "t0k"})
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("suffix", ["", "/", "/api/v1", "/api/v1/"])
def test_the_api_address_may_be_the_workers_or_the_apis_own(api: str, suffix: str) -> None:
    code, out, err = _flags("kill", "ranker", "--variant", "candidate", "--api", api + suffix)
    assert (code, err) == (0, "")
    assert out == "ranker: version 4: bad rankings\n"
    assert _Api.paths == ["/api/v1/flags/ranker/kill"]


def test_a_refusal_names_the_address_it_was_sent_to(api: str) -> None:
    code, _, err = _flags("restore", "ranker", "--variant", "candidate", "--api", api)
    assert code == 1
    assert err == (
        f"driftswitch flags restore: {api}/api/v1/flags/ranker/restore: HTTP 404: 404: Not Found\n"
    )


def test_the_command_carries_the_token_variant_segment_and_reason(api: str) -> None:
    code, out, err = _flags(
        "kill", "ranker", "--variant", "candidate", "--api", api,
        "--segment", "attributes.region=jp", "--segment", "plan=free", "--reason", "bad rankings",
    )  # fmt: skip
    assert (code, out, err) == (0, "ranker: version 4: bad rankings\n", "")
    assert _Api.sent == [
        (
            "Bearer t0k",
            {
                "variant": "candidate",
                "segment": {"region": "jp", "plan": "free"},
                "reason": "bad rankings",
            },
        )
    ]
