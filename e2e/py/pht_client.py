"""Drive gost's `pht` listener with Python's standard library only (http.client).

usage: pht_client.py HOST:PORT AUTHORIZE_PATH PUSH_PATH PULL_PATH ECHO_IP:PORT MODE
MODE "close": authorize, open the pull stream, push a relay CONNECT to the echo target plus
data, decode the pull stream until the relay reply and the echo came back, wait for a
heartbeat line, close with an empty POST, and check the pull stream ends and the closed
token now gets an empty pull. MODE "vanish": the same up to the echo, then the process exits
without closing (the server must reclaim the session by itself).
Prints one "... ok" line per step passed; any other outcome raises and exits non-zero.
"""

import base64
import http.client
import ipaddress
import os
import struct
import sys
import time

addr, authorize_path, push_path, pull_path, echo, mode = sys.argv[1:7]
host, port = addr.rsplit(":", 1)
echo_ip, echo_port = echo.rsplit(":", 1)
TIMEOUT = 20
# The server's heartbeat comes after 10 s of silence.
HEARTBEAT_WAIT = 15


def conn():
    return http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)


api = conn()
api.request("GET", authorize_path)
res = api.getresponse()
body = res.read().decode()
assert res.status == 200, f"authorize: {res.status} {body!r}"
assert body.startswith("token="), body
token = body[len("token="):]
assert len(token) == 20, token
print("authorize ok")

puller = conn()
puller.request("GET", f"{pull_path}?token={token}")
pull = puller.getresponse()
assert pull.status == 200, f"pull: {pull.status}"
assert pull.getheader("X-Accel-Buffering") == "no", pull.getheaders()
print("pull ok")


def push(data):
    line = base64.b64encode(data) + b"\n" if data else b""
    # No Content-Type: GOST's server would parse a form body and lose the line.
    api.request("POST", f"{push_path}?token={token}", body=line)
    res = api.getresponse()
    res.read()
    return res.status


relay = struct.pack(">BBH", 1, 1, 3 + 7) + struct.pack(">BH", 2, 7) + bytes([1])
relay += ipaddress.IPv4Address(echo_ip).packed + struct.pack(">H", int(echo_port))
payload = b"hello pht\n"
status = push(relay + payload)
assert status == 200, f"push: {status}"
print("push ok")

received = b""
while len(received) < 4 + len(payload):
    line = pull.readline(1 << 17)
    assert line, f"pull ended early after {received!r}"
    assert line.endswith(b"\n"), line
    if line == b"\n":
        continue
    received += base64.b64decode(line[:-1], validate=True)
ver, status, fealen = struct.unpack(">BBH", received[:4])
assert (ver, status) == (1, 0), f"relay reply {received[:4]!r}"
received = received[4 + fealen:]
while len(received) < len(payload):
    line = pull.readline(1 << 17)
    assert line, "pull ended before the echo"
    if line != b"\n":
        received += base64.b64decode(line[:-1], validate=True)
assert received == payload, received
print("relay ok")
print("echo ok")

if mode == "vanish":
    sys.stdout.flush()
    os._exit(0)

puller.sock.settimeout(HEARTBEAT_WAIT)
started = time.monotonic()
line = pull.readline(1 << 17)
assert line == b"\n", f"expected a heartbeat, got {line!r}"
waited = time.monotonic() - started
assert 5 <= waited <= HEARTBEAT_WAIT, waited
print("heartbeat ok")

status = push(b"")
assert status == 200, f"close: {status}"
print("close ok")
line = pull.readline(1 << 17)
while line == b"\n":
    line = pull.readline(1 << 17)
assert line == b"", f"pull still streaming: {line!r}"
print("pull ended ok")

again = conn()
again.request("GET", f"{pull_path}?token={token}")
res = again.getresponse()
assert res.status == 200 and res.read() == b"", res.status
print("closed token ok")
