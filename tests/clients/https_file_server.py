"""An HTTPS server of one directory's files for floodgate's tests (Python `http.server` and `ssl`).

usage: https_file_server.py DIR CERT KEY
Listens on 127.0.0.1 (a free port), prints `port N`, and serves DIR until killed.
"""
import functools
import http.server
import ssl
import sys

directory, cert, key = sys.argv[1:4]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(f"port {server.server_address[1]}", flush=True)
server.serve_forever()
