"""An independent WebSocket feed for floodgate's load tests (Python `websockets`; nobody here
wrote its protocol handling).

usage: feed_server.py KEY_PREFIX
Listens on 127.0.0.1 (a free port) and prints `port N`. A client must send
`X-Api-Key: <KEY_PREFIX><c>`, where c is the `c` query parameter (401 otherwise), and
offer the subprotocol `feed.v1` (which the server then chooses; it chooses none of the
others). Each connection then gets `n` (query parameter) frames `{"seq": i, "ts": <ns>}`,
i = 1..n, and stays open until the client closes it, answering each `{"ping": x}` it sends
with `{"pong": x}`. With `sub=1` in the query it first
says `{"welcome": true}` and streams only after the client sent `{"subscribe": "<name>"}`,
which it answers `{"subscribed": "<name>"}`; anything else is answered with an error.
"""
import asyncio
import json
import sys
import time
from http import HTTPStatus
from urllib.parse import parse_qs, urlparse

import websockets

PREFIX = sys.argv[1]


def query(path):
    return {k: v[0] for k, v in parse_qs(urlparse(path).query).items()}


def check_key(connection, request):
    q = query(request.path)
    if request.headers.get("X-Api-Key") != PREFIX + q.get("c", "?"):
        return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong X-Api-Key\n")
    return None


async def feed(ws):
    q = query(ws.request.path)
    n = int(q.get("n", "10"))
    if q.get("sub") == "1":
        await ws.send(json.dumps({"welcome": True}))
        while True:
            msg = json.loads(await ws.recv())
            if isinstance(msg, dict) and isinstance(msg.get("subscribe"), str):
                await ws.send(json.dumps({"subscribed": msg["subscribe"]}))
                break
            await ws.send(json.dumps({"error": "subscribe first"}))
    for i in range(1, n + 1):
        await ws.send(json.dumps({"seq": i, "ts": time.time_ns()}))
    async for msg in ws:
        try:
            m = json.loads(msg)
        except ValueError:
            continue
        if isinstance(m, dict) and "ping" in m:
            await ws.send(json.dumps({"pong": m["ping"]}))


async def main():
    async with websockets.serve(
        feed, "127.0.0.1", 0, process_request=check_key, subprotocols=["feed.v1"], compression=None
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"port {port}", flush=True)
        await asyncio.Future()


asyncio.run(main())
