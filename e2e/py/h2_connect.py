"""An independent HTTP/2 CONNECT client (the `h2` package over the stdlib `ssl` module)
against gost's `http2` listener.

usage: h2_connect.py PROXY TARGET DEAD
PROXY is the http2 service (wants user:pass), TARGET a plain HTTP server, DEAD an address
where nothing listens. Prints one "... ok" line per check; any failure raises and exits
non-zero.
"""

import base64
import sys
import time

import h2.errors
import h2.events

import h2_tls

proxy, target, dead = sys.argv[1:4]
TIMEOUT = 20

tls, conn = h2_tls.connect(proxy, TIMEOUT)
print("alpn h2 ok")
tls.sendall(conn.data_to_send())

streams = {}


def pump(until):
    """Reads frames until until() holds, within TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    while not until():
        assert time.monotonic() < deadline, "timed out waiting for the proxy"
        data = tls.recv(65536)
        assert data, "proxy closed the connection"
        for event in conn.receive_data(data):
            s = streams.setdefault(getattr(event, "stream_id", 0), {"body": b"", "ended": False})
            if isinstance(event, h2.events.ResponseReceived):
                s["headers"] = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h2.events.DataReceived):
                s["body"] += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                s["ended"] = True
        tls.sendall(conn.data_to_send())


def connect(authority, credentials):
    stream_id = conn.get_next_available_stream_id()
    headers = [(":method", "CONNECT"), (":authority", authority)]
    if credentials:
        token = base64.b64encode(credentials.encode()).decode()
        headers.append(("proxy-authorization", f"Basic {token}"))
    conn.send_headers(stream_id, headers)
    tls.sendall(conn.data_to_send())
    pump(lambda: "headers" in streams.get(stream_id, {}))
    return stream_id


# A tunnel with the right credentials, carrying an HTTP/1.1 request to the target.
sid = connect(target, "user:pass")
assert streams[sid]["headers"][":status"] == "200", streams[sid]["headers"]
assert "proxy-agent" not in streams[sid]["headers"], streams[sid]["headers"]
request = f"GET /via-h2 HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
conn.send_data(sid, request.encode(), end_stream=True)
tls.sendall(conn.data_to_send())
pump(lambda: streams[sid]["ended"])
body = streams[sid]["body"].decode()
assert body.startswith("HTTP/1.1 200 OK"), body
assert "hello from target" in body, body
assert "X-Request-Line: GET /via-h2 HTTP/1.1" in body, body
print("connect tunnel ok")

# A tunnel the client cancels while it is open (RST_STREAM CANCEL), as GOST's HTTP/2 client
# ends every tunnel: the target keeps its connection alive, so the tunnel is still relaying.
sid = connect(target, "user:pass")
assert streams[sid]["headers"][":status"] == "200", streams[sid]["headers"]
request = f"GET /kept-alive HTTP/1.1\r\nHost: {target}\r\n\r\n"
conn.send_data(sid, request.encode())
tls.sendall(conn.data_to_send())
pump(lambda: b"hello from target" in streams[sid]["body"])
conn.reset_stream(sid, error_code=h2.errors.ErrorCodes.CANCEL)
tls.sendall(conn.data_to_send())
print("cancelled tunnel ok")

# Wrong credentials: 407 with GOST's Basic challenge, and the connection stays usable.
sid = connect(target, "user:wrong")
assert streams[sid]["headers"][":status"] == "407", streams[sid]["headers"]
assert streams[sid]["headers"].get("proxy-authenticate") == 'Basic realm="gost"', streams[sid]
print("407 ok")

# No credentials at all.
sid = connect(target, None)
assert streams[sid]["headers"][":status"] == "407", streams[sid]["headers"]
print("no credentials ok")

# An unreachable target: 503, as GOST.
sid = connect(dead, "user:pass")
assert streams[sid]["headers"][":status"] == "503", streams[sid]["headers"]
print("503 ok")

# A plain request is forwarded to the target, without the proxy credentials.
sid = conn.get_next_available_stream_id()
token = base64.b64encode(b"user:pass").decode()
conn.send_headers(
    sid,
    [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", target),
        (":path", "/forwarded?q=1"),
        ("proxy-authorization", f"Basic {token}"),
        ("x-test", "kept"),
    ],
    end_stream=True,
)
tls.sendall(conn.data_to_send())
pump(lambda: streams.get(sid, {}).get("ended"))
headers = streams[sid]["headers"]
assert headers[":status"] == "200", headers
assert headers.get("x-request-line") == "GET /forwarded?q=1 HTTP/1.1", headers
body = streams[sid]["body"].decode()
assert body.startswith("hello from target"), body
assert "x-test: kept" in body.lower(), body
assert "proxy-authorization" not in body.lower(), body
print("forward ok")

conn.close_connection()
tls.sendall(conn.data_to_send())
tls.close()
