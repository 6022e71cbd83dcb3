"""A minimal, fast HTTP/1.1 keep-alive sink for high-volume delivery tests (run as a subprocess).

    python tests/fastsink.py   -> prints "PORT <n>", then serves on 127.0.0.1:<n>

Every POST is answered 200 ``{}`` and its JSON body recorded as ``(identifier, properties.seq)``;
``GET /stats`` answers ``{"requests": n, "events": {"<identifier>:<seq>": count, ...}}``.
The stdlib collector (cdp_batcher.testing) is the one to use for behaviour; this one only counts.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter

counts: Counter[str] = Counter()
requests_seen = 0


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    global requests_seen
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length) if length else b""
            if head.startswith(b"GET /stats"):
                out = json.dumps({"requests": requests_seen, "events": counts}).encode()
            else:
                requests_seen += 1
                try:
                    data = json.loads(body)
                    counts[f"{data['identifier']}:{data['properties']['seq']}"] += 1
                except (ValueError, KeyError, TypeError):
                    pass
                out = b"{}"
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(out), out)
            )
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=256)
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
