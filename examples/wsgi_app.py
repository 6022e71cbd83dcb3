"""A WSGI web app that tracks inside requests (stdlib wsgiref; any WSGI server works).

    CDP_API_KEY=... python examples/wsgi_app.py            # serves on http://127.0.0.1:8000
    CDP_API_KEY=... python examples/wsgi_app.py --selftest  # serves, sends itself 10 requests, exits

track() never waits on the network, so the request handler pays microseconds. The client is
created once per process; its exit hook flushes what is left.
"""

from __future__ import annotations

import http.client
import sys
import threading
from collections.abc import Iterable
from typing import Any, Callable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from cdp_batcher import CDPClient

from _common import client_settings

client = CDPClient(**client_settings())


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    user = environ.get("HTTP_X_USER_ID", "anonymous")
    path = environ.get("PATH_INFO", "/")
    client.track(user, "page_viewed", {"path": path, "method": environ.get("REQUEST_METHOD")})
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"hello {user}, you are on {path}\n".encode()]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> int:
    selftest = "--selftest" in sys.argv
    server = make_server("127.0.0.1", 0 if selftest else 8000, app, handler_class=_Quiet)
    if not selftest:
        print(f"serving on http://127.0.0.1:{server.server_port}")
        server.serve_forever()
        return 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for i in range(10):
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=5)
        conn.request("GET", f"/products/{i}", headers={"X-User-Id": f"web-user-{i % 3}"})
        conn.getresponse().read()
        conn.close()
    server.shutdown()
    server.server_close()
    report = client.shutdown(timeout=5.0)
    print(f"wsgi_app: 10 requests served, delivered={report.delivered} ok={bool(report)}")
    return 0 if report else 1


if __name__ == "__main__":
    sys.exit(main())
