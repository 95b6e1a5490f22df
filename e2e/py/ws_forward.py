"""A WebSocket client asking an HTTP proxy for a ws:// URL in absolute-URI form (no CONNECT),
against a WebSocket echo server of its own; both are wsproto, an independent implementation of
RFC 6455 that lets the client name the request target.

usage: ws_forward.py PROXY CREDENTIALS
PROXY is host:port of the proxy, CREDENTIALS user:pass. Prints "upgrade ok", "headers ok",
"echo ok" and "refusal ok" as each check passes; any failure raises and exits non-zero.
"""

import base64
import json
import socket
import sys
import threading

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

proxy, credentials = sys.argv[1:3]
TIMEOUT = 20


def serve(conn):
    """One connection of the echo server: /echo is accepted, sends the request headers it got as
    a first message and then echoes every message; anything else is refused with a 403 page."""
    ws = WSConnection(ConnectionType.SERVER)
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, Request):
                    if event.target == "/echo":
                        conn.sendall(ws.send(AcceptConnection()))
                        seen = {k.decode().lower(): v.decode() for k, v in event.extra_headers}
                        seen["host"] = event.host
                        conn.sendall(ws.send(TextMessage(data=json.dumps(seen))))
                    else:
                        page = b"no websocket here"
                        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(page)).encode())]
                        conn.sendall(ws.send(RejectConnection(status_code=403, headers=headers, has_body=True)))
                        conn.sendall(ws.send(RejectData(data=page, body_finished=True)))
                        return
                elif isinstance(event, TextMessage):
                    conn.sendall(ws.send(TextMessage(data=event.data)))
                elif isinstance(event, BytesMessage):
                    conn.sendall(ws.send(BytesMessage(data=event.data)))
                elif isinstance(event, CloseConnection):
                    conn.sendall(ws.send(event.response()))
                    return


server = socket.create_server(("127.0.0.1", 0))
origin = f"127.0.0.1:{server.getsockname()[1]}"


def accept_loop():
    while True:
        conn, _ = server.accept()
        conn.settimeout(TIMEOUT)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


threading.Thread(target=accept_loop, daemon=True).start()

host, port = proxy.rsplit(":", 1)
authorization = ("Proxy-Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())


def open_through_proxy(path):
    """Sends the opening handshake for ws://ORIGIN/path to the proxy in absolute-URI form."""
    sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    ws = WSConnection(ConnectionType.CLIENT)
    # Hop-by-hop headers the proxy must not pass on, besides its own credentials.
    extra = [authorization, ("Proxy-Connection", "keep-alive"), ("Keep-Alive", "timeout=5")]
    sock.sendall(ws.send(Request(host=origin, target=f"http://{origin}{path}", extra_headers=extra)))
    return sock, ws


def events(sock, ws, until):
    """Collects events until until(collected) holds."""
    collected = []
    while not until(collected):
        data = sock.recv(65536)
        assert data, f"proxy closed the connection after {collected}"
        ws.receive_data(data)
        collected.extend(ws.events())
    return collected


sock, ws = open_through_proxy("/echo")
got = events(sock, ws, lambda c: any(isinstance(e, TextMessage) for e in c))
assert isinstance(got[0], AcceptConnection), got
print("upgrade ok")

seen = json.loads(next(e for e in got if isinstance(e, TextMessage)).data)
assert seen["host"] == origin, seen
assert not any(k.startswith("proxy-") for k in seen), seen
assert "keep-alive" not in seen, seen
print("headers ok")

for message in [TextMessage(data="hello through the proxy"), BytesMessage(data=bytes(range(256)) * 64)]:
    sock.sendall(ws.send(message))
    reply = events(sock, ws, lambda c: any(isinstance(e, type(message)) for e in c))
    echoed = next(e for e in reply if isinstance(e, type(message)))
    assert echoed.data == message.data, (echoed.data[:64], message.data[:64])
sock.sendall(ws.send(CloseConnection(code=1000)))
events(sock, ws, lambda c: any(isinstance(e, CloseConnection) for e in c))
sock.close()
print("echo ok")

# An upgrade the origin refuses is an ordinary answer, relayed as such.
sock, ws = open_through_proxy("/not-a-socket")
got = events(sock, ws, lambda c: any(isinstance(e, RejectData) and e.body_finished for e in c))
rejected = next(e for e in got if isinstance(e, RejectConnection))
assert rejected.status_code == 403, rejected
body = b"".join(e.data for e in got if isinstance(e, RejectData))
assert body == b"no websocket here", body
sock.close()
print("refusal ok")
