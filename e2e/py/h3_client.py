"""An independent HTTP/3 client (aioquic) speaking PHT's endpoints (gost-wire.md §8.6, §8.7)
to gost's `h3` listener, whose handler is `auto`.

usage: h3_client.py SERVER TARGET AUTHORIZE_PATH PUSH_PATH PULL_PATH
SERVER is the h3 service (UDP), TARGET an echo server. Prints one "... ok" line per check;
any failure raises and exits non-zero.
"""

import asyncio
import base64
import ssl
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent

server, target, authorize_path, push_path, pull_path = sys.argv[1:6]
host, port = server.rsplit(":", 1)
TIMEOUT = 20


class Response:
    """One request's answer as it arrives."""

    def __init__(self):
        self.headers = asyncio.get_running_loop().create_future()
        self.chunks = asyncio.Queue()  # bytes, then None at the end of the body


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.responses = {}

    def quic_event_received(self, event: QuicEvent):
        for ev in self.h3.handle_event(event):
            response = self.responses.get(getattr(ev, "stream_id", None))
            if response is None:
                continue
            if isinstance(ev, HeadersReceived):
                response.headers.set_result(dict(ev.headers))
                if ev.stream_ended:
                    response.chunks.put_nowait(None)
            elif isinstance(ev, DataReceived):
                if ev.data:
                    response.chunks.put_nowait(ev.data)
                if ev.stream_ended:
                    response.chunks.put_nowait(None)

    def request(self, method, path, body=b""):
        stream_id = self._quic.get_next_available_stream_id()
        response = Response()
        self.responses[stream_id] = response
        headers = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", server.encode()),
            (b":path", path.encode()),
        ]
        if method == "POST":
            headers.append((b"content-length", str(len(body)).encode()))
        self.h3.send_headers(stream_id, headers, end_stream=not body)
        if body:
            self.h3.send_data(stream_id, body, end_stream=True)
        self.transmit()
        return response


async def read_all(response):
    data = b""
    while True:
        chunk = await response.chunks.get()
        if chunk is None:
            return data
        data += chunk


class Lines:
    """The pull response's lines, base64-decoded; heartbeats (empty lines) skipped."""

    def __init__(self, response):
        self.response = response
        self.buffer = b""
        self.ended = False

    async def read(self):
        """Decoded bytes of the next non-empty line, or None at the end of the response."""
        while True:
            if b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                if line:
                    return base64.b64decode(line, validate=True)
                continue
            if self.ended:
                return None
            chunk = await self.response.chunks.get()
            if chunk is None:
                self.ended = True
            else:
                self.buffer += chunk

    async def read_until(self, needle):
        data = b""
        while needle not in data:
            got = await self.read()
            assert got is not None, f"pull ended before {needle!r}; got {data!r}"
            data += got
        return data


async def main():
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    # gost's generated certificate is self-signed, as GOST's is.
    config.verify_mode = ssl.CERT_NONE
    async with connect(host, int(port), configuration=config, create_protocol=Client) as client:
        # authorize: a token in a text body.
        response = client.request("GET", authorize_path)
        headers = await response.headers
        assert headers[b":status"] == b"200", headers
        body = await read_all(response)
        assert body.startswith(b"token="), body
        token = body[len(b"token="):].decode()
        assert token, body
        print("authorize ok")

        # pull: a long streaming response.
        pull = client.request("GET", f"{pull_path}?token={token}")
        headers = await pull.headers
        assert headers[b":status"] == b"200", headers
        lines = Lines(pull)
        print("pull ok")

        async def push(data):
            line = base64.b64encode(data) + b"\n" if data else b""
            response = client.request("POST", f"{push_path}?token={token}", line)
            headers = await response.headers
            await read_all(response)
            return headers[b":status"]

        # Inside the tunnel: an HTTP CONNECT, which the server's auto handler serves.
        connect_request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
        assert await push(connect_request) == b"200"
        head = await lines.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        print("push connect ok")

        payload = bytes(range(256)) * 200  # 51,200 bytes: more than one pull line
        assert await push(payload[:30000]) == b"200"
        assert await push(payload[30000:]) == b"200"
        echoed = b""
        while len(echoed) < len(payload):
            got = await lines.read()
            assert got is not None, f"pull ended after {len(echoed)} bytes"
            echoed += got
        assert echoed == payload, "echo differs"
        print("round trip ok")

        # Close: an empty push; the session ends and so does the pull response.
        assert await push(b"") == b"200"
        rest = await lines.read()
        assert rest is None, rest
        print("close ok")


asyncio.run(asyncio.wait_for(main(), TIMEOUT))
