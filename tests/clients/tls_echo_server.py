"""An independent TLS WebSocket echo server for floodgate's tests (Python `websockets` and `ssl`).

usage: tls_echo_server.py CERT KEY
Listens on 127.0.0.1 (a free port), prints `port N`, and echoes every message of every
connection until killed.
"""
import asyncio
import ssl
import sys

import websockets


async def echo(ws):
    async for msg in ws:
        await ws.send(msg)


async def main(cert: str, key: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    async with websockets.serve(echo, "127.0.0.1", 0, ssl=ctx, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"port {port}", flush=True)
        await asyncio.Future()


asyncio.run(main(sys.argv[1], sys.argv[2]))
