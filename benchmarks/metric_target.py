"""A lightweight metrics target for benchmarks: answers /metrics like a model server would."""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b"""# TYPE in_flight_requests gauge
in_flight_requests{served_entity="m",replica="0"} 1
# TYPE cpu_usage_percentage gauge
cpu_usage_percentage{served_entity="m",replica="0"} 12.5
# TYPE mem_usage_percentage gauge
mem_usage_percentage{served_entity="m",replica="0"} 3.25
"""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        return


class Server(ThreadingHTTPServer):
    # A model server's listen backlog (uvicorn's 2048), not http.server's 5: a sweep's polls
    # connect to these four targets for 10,000 replicas, a real replica sees one connection.
    request_queue_size = 2048


if __name__ == "__main__":
    server = Server(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()
