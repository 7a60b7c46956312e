"""The fan-out workload on Python's `websockets` (asyncio), written the way its users would:
once every client is connected, each connection is sent its share of the events with
`await websocket.send()`, all connections concurrently. Frames:
{"seq":S,"type":"agent_thinking","ts":T,"data":{"pad":"xx.."}} with ts in unix ns."""

import argparse
import asyncio
import time

import websockets


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--events", type=int, default=2_000_000)
    p.add_argument("--payload-bytes", type=int, default=150)
    a = p.parse_args()
    pad = "x" * max(1, a.payload_bytes - 80)
    clients = []
    everyone = asyncio.Event()

    async def handler(ws):
        clients.append(ws)
        if len(clients) == a.connections:
            everyone.set()
        await everyone.wait()
        c = clients.index(ws)
        n = a.events // a.connections + (1 if c < a.events % a.connections else 0)
        for seq in range(1, n + 1):
            await ws.send(
                f'{{"seq":{seq},"type":"agent_thinking","ts":{time.time_ns()},"data":{{"pad":"{pad}"}}}}'
            )
        await ws.wait_closed()

    async with websockets.serve(handler, "127.0.0.1", a.port, compression=None, max_queue=None):
        print(f"python-websockets listening on 127.0.0.1:{a.port}", flush=True)
        await asyncio.Future()


asyncio.run(main())
