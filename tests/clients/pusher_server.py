"""A Pusher-protocol WebSocket server (version 7, public channels) for floodgate's load tests,
built on Python `websockets`: the handshake and framing are not floodgate's.

usage: pusher_server.py APP_KEY
Listens on 127.0.0.1 (a free port) and prints `port N`. A connection to /app/APP_KEY gets
pusher:connection_established; a pusher:subscribe to a channel gets
pusher_internal:subscription_succeeded, and then events `tick` on that channel, their data a
JSON string `{"n": i}`, 2000 a second, until the client goes. pusher:ping gets pusher:pong.
Another key gets pusher:error 4001 and a close, as Pusher does.
"""
import asyncio
import json
import sys

import websockets

KEY = sys.argv[1]


async def stream(ws, channel):
    n = 0
    while True:
        for _ in range(20):
            n += 1
            await ws.send(json.dumps({"event": "tick", "channel": channel, "data": json.dumps({"n": n})}))
        await asyncio.sleep(0.01)


async def serve(ws):
    if ws.request.path.split("?")[0] != f"/app/{KEY}":
        await ws.send(json.dumps({"event": "pusher:error", "data": {"message": "App key not in this cluster", "code": 4001}}))
        await ws.close(4001, "unknown app key")
        return
    await ws.send(json.dumps({"event": "pusher:connection_established",
                              "data": json.dumps({"socket_id": "1.1", "activity_timeout": 120})}))
    streaming = None
    try:
        async for raw in ws:
            msg = json.loads(raw)
            if msg.get("event") == "pusher:subscribe" and streaming is None:
                channel = msg["data"]["channel"]
                await ws.send(json.dumps({"event": "pusher_internal:subscription_succeeded",
                                          "channel": channel, "data": "{}"}))
                streaming = asyncio.create_task(stream(ws, channel))
            elif msg.get("event") == "pusher:ping":
                await ws.send(json.dumps({"event": "pusher:pong", "data": {}}))
    finally:
        if streaming:
            streaming.cancel()


async def main():
    async with websockets.serve(serve, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"port {port}", flush=True)
        await asyncio.Future()


asyncio.run(main())
