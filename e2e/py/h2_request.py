"""Sends one request over HTTP/2 (the `h2` package over the stdlib `ssl` module) to gost's
`http2` listener and prints the answer as JSON: {"status": ..., "headers": {...}, "body": ...}.

usage: h2_request.py PROXY METHOD AUTHORITY PATH CREDENTIALS [NAME:VALUE ...]
PATH is `-` for a CONNECT (which has no :scheme or :path), CREDENTIALS `user:pass` or `-` for
none; each NAME:VALUE is one more request header. Any failure raises and exits non-zero.
"""

import base64
import json
import sys
import time

import h2.events

import h2_tls

proxy, method, authority, path, credentials = sys.argv[1:6]
TIMEOUT = 20

tls, conn = h2_tls.connect(proxy, TIMEOUT)
headers = [(":method", method), (":authority", authority)]
if path != "-":
    headers += [(":scheme", "http"), (":path", path)]
if credentials != "-":
    headers.append(("proxy-authorization", "Basic " + base64.b64encode(credentials.encode()).decode()))
for extra in sys.argv[6:]:
    name, value = extra.split(":", 1)
    headers.append((name.lower(), value))
stream_id = conn.get_next_available_stream_id()
conn.send_headers(stream_id, headers, end_stream=method != "CONNECT")
tls.sendall(conn.data_to_send())

answer = {"body": ""}
ended = False
deadline = time.monotonic() + TIMEOUT
# A CONNECT answered 200 stays open as a tunnel: the headers are the whole answer then.
while not ended and not (method == "CONNECT" and answer.get("status") == "200"):
    assert time.monotonic() < deadline, "timed out waiting for the proxy"
    data = tls.recv(65536)
    assert data, "proxy closed the connection"
    for event in conn.receive_data(data):
        if isinstance(event, h2.events.ResponseReceived):
            fields = {k.decode(): v.decode() for k, v in event.headers}
            answer["status"] = fields.pop(":status")
            answer["headers"] = fields
        elif isinstance(event, h2.events.DataReceived):
            answer["body"] += event.data.decode(errors="replace")
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
            ended = True
    tls.sendall(conn.data_to_send())

print(json.dumps(answer))
conn.close_connection()
tls.sendall(conn.data_to_send())
tls.close()
