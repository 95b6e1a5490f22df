"""Speak SOCKS5 over gost's `ws` listener with an independent WebSocket client library.

usage: ws_socks5_client.py WS_URL TARGET USER PASS
Opens WS_URL, runs a SOCKS5 handshake offering only username/password (no TLS method) in
binary messages, CONNECTs to TARGET (ip:port of an HTTP server) and sends a GET. Prints
"auth ok", "connect ok" and "response ok" as each step passes; with a wrong password prints
"auth refused" and exits 0. Any other outcome raises and exits non-zero.
"""

import ipaddress
import struct
import sys

import websocket

url, target, user, password = sys.argv[1:5]
TIMEOUT = 20


class Stream:
    """Message payloads joined into a byte stream, as gost treats them."""

    def __init__(self, ws):
        self.ws = ws
        self.buf = b""

    def send(self, data):
        self.ws.send_binary(data)

    def recv_exact(self, n):
        while len(self.buf) < n:
            opcode, data = self.ws.recv_data()
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise EOFError(f"closed after {len(self.buf)} of {n} bytes")
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_until(self, marker, limit=1 << 20):
        while marker not in self.buf:
            if len(self.buf) > limit:
                raise ValueError("marker not found")
            try:
                opcode, data = self.ws.recv_data()
            except websocket.WebSocketConnectionClosedException:
                break
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                break
            self.buf += data
        return self.buf


ws = websocket.create_connection(url, timeout=TIMEOUT)
s = Stream(ws)

s.send(b"\x05\x01\x02")
assert s.recv_exact(2) == b"\x05\x02", "server did not pick username/password"
u, p = user.encode(), password.encode()
s.send(bytes([1, len(u)]) + u + bytes([len(p)]) + p)
status = s.recv_exact(2)
if status != b"\x01\x00":
    print("auth refused")
    sys.exit(0)
print("auth ok")

host, port = target.rsplit(":", 1)
ip = ipaddress.IPv4Address(host)
s.send(b"\x05\x01\x00\x01" + ip.packed + struct.pack(">H", int(port)))
reply = s.recv_exact(4)
assert reply[:2] == b"\x05\x00", f"CONNECT refused: {reply!r}"
atyp = reply[3]
if atyp == 1:
    s.recv_exact(4 + 2)
elif atyp == 4:
    s.recv_exact(16 + 2)
else:
    s.recv_exact(s.recv_exact(1)[0] + 2)
print("connect ok")

s.send(f"GET /py-ws HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
body = s.recv_until(b"hello from target")
assert b"HTTP/1.1 200" in body and b"hello from target" in body, body[:200]
print("response ok")
ws.close()
