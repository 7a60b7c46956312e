"""Independent WebSocket client for floodgate's tests (Python `websockets` library).

usage: ws_client.py URL TOKEN N
Connects with `Authorization: Bearer TOKEN`, reads N events, checks that they are JSON objects
after the `hello` frame, with gapless `seq` from 1 and `data.i` equal to seq - 1, closes normally, and prints a summary.
"""
import asyncio
import json
import sys

import websockets


async def main(url: str, token: str, n: int) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    try:
        connect = websockets.connect(url, additional_headers=headers, open_timeout=10)
    except TypeError:  # websockets < 14 names the argument differently
        connect = websockets.connect(url, extra_headers=headers, open_timeout=10)
    async with connect as ws:
        print("connected", flush=True)
        hello = json.loads(await asyncio.wait_for(ws.recv(), timeout=15))
        if hello.get("type") != "hello" or not isinstance(hello.get("epoch"), str):
            print(f"BAD hello: {hello}", flush=True)
            return 1
        for expected in range(1, n + 1):
            msg = await asyncio.wait_for(ws.recv(), timeout=15)
            ev = json.loads(msg)
            if ev.get("seq") != expected or ev.get("data", {}).get("i") != expected - 1:
                print(f"BAD event {expected}: {msg}", flush=True)
                return 1
            if ev.get("type") != "py.test" or not isinstance(ev.get("ts"), int):
                print(f"BAD members: {msg}", flush=True)
                return 1
    print(f"OK {n} events, seq 1..{n} in order", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
