"""An independent gRPC server (grpcio) that gost's `grpc` dialer talks to: the method at PATH
answers a relay request with OK and then echoes every byte back, which is what a GOST relay
server in front of an echo target looks like from the client.

usage: grpc_server.py MODE PATH [CERT KEY]
MODE is `insecure` or `tls` (with the PEM certificate and key files). Listens on an ephemeral
port of 127.0.0.1 and prints `port N`, then serves until its standard input closes (or for
LIFETIME seconds at most). The Chunk message is encoded by hand: no generated code. Each call
logs `call PATH user=... bytes=N` on standard error when it ends.
"""

import sys
import threading
from concurrent import futures

import grpc

from grpc_chunk import decode_chunk, encode_chunk

LIFETIME = 120

mode, path = sys.argv[1:3]


def user_of(header):
    """The username of a relay request's UserAuth feature, if any."""
    i = 4
    while i + 3 <= len(header):
        kind, n = header[i], int.from_bytes(header[i + 1 : i + 3], "big")
        data = header[i + 3 : i + 3 + n]
        if kind == 1 and data:
            return data[1 : 1 + data[0]].decode()
        i += 3 + n
    return None


def tunnel(requests, context):
    buf = b""
    for chunk in requests:
        buf += chunk
        if len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[2:4], "big"):
            break
    else:
        return
    assert buf[0] == 1, f"not a relay request: {buf[:4].hex()}"
    n = 4 + int.from_bytes(buf[2:4], "big")
    user = user_of(buf[:n])
    total = 0
    yield b"\x01\x00\x00\x00"
    if buf[n:]:
        total += len(buf) - n
        yield buf[n:]
    for chunk in requests:
        total += len(chunk)
        if chunk:
            yield chunk
    print(f"call {path} user={user} bytes={total}", file=sys.stderr, flush=True)


service, method = path.strip("/").split("/", 1)
handler = grpc.method_handlers_generic_handler(
    service,
    {
        method: grpc.stream_stream_rpc_method_handler(
            tunnel, request_deserializer=decode_chunk, response_serializer=encode_chunk
        )
    },
)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
server.add_generic_rpc_handlers((handler,))
if mode == "tls":
    cert, key = sys.argv[3:5]
    creds = grpc.ssl_server_credentials([(open(key, "rb").read(), open(cert, "rb").read())])
    port = server.add_secure_port("127.0.0.1:0", creds)
else:
    port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(f"port {port}", flush=True)
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
done.wait(LIFETIME)
server.stop(0)
