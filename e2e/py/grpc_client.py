"""An independent gRPC client (grpcio) against gost's `grpc` listener with the `relay` handler.

usage: grpc_client.py MODE SERVER ECHO USER PASS PATH
MODE is `insecure` (cleartext HTTP/2) or `tls` (the server's certificate, fetched with the
stdlib, is the only root; the name checked is gost.run, the generated certificate's). ECHO is
an echo target, PATH the method path the server serves (e.g. /GostTunel/Tunnel). The Chunk
message is encoded by hand here: no generated code. Prints one "... ok" line per check; any
failure raises and exits non-zero.
"""

import os
import socket
import ssl
import struct
import sys

import grpc

from grpc_chunk import decode_chunk, encode_chunk

mode, server, echo, user, password, path = sys.argv[1:7]
TIMEOUT = 20


def relay_connect(target, user, password):
    host, port = target.rsplit(":", 1)
    auth = bytes([len(user)]) + user.encode() + bytes([len(password)]) + password.encode()
    addr = b"\x01" + socket.inet_aton(host) + struct.pack(">H", int(port))
    features = (
        b"\x01" + struct.pack(">H", len(auth)) + auth + b"\x02" + struct.pack(">H", len(addr)) + addr
    )
    return b"\x01\x01" + struct.pack(">H", len(features)) + features


def channel():
    if mode == "insecure":
        return grpc.insecure_channel(server)
    host, port = server.rsplit(":", 1)
    pem = ssl.get_server_certificate((host, int(port)), timeout=TIMEOUT)
    creds = grpc.ssl_channel_credentials(root_certificates=pem.encode())
    return grpc.secure_channel(
        server, creds, options=[("grpc.ssl_target_name_override", "gost.run")]
    )


def tunnel(ch, method, messages):
    call = ch.stream_stream(
        method, request_serializer=encode_chunk, response_deserializer=decode_chunk
    )
    # The iterator ending half-closes the call; the echo target then ends its side too.
    return b"".join(call(iter(messages), timeout=TIMEOUT))


ch = channel()

payload = os.urandom(3 * 1024 * 1024 + 17)
pieces = [relay_connect(echo, user, password), b""]
pieces += [payload[i : i + 100_000] for i in range(0, len(payload), 100_000)]
got = tunnel(ch, path, pieces)
assert got[:4] == b"\x01\x00\x00\x00", f"relay answered {got[:4].hex()}"
assert got[4:] == payload, f"echo differs: {len(got) - 4} of {len(payload)} bytes back"
print(f"{mode} round trip ok")

got = tunnel(ch, path, [relay_connect(echo, user, "wrong")])
assert got[:2] == b"\x01\x02", f"wrong password: relay answered {got[:4].hex()}"
print(f"{mode} wrong password ok")

try:
    tunnel(ch, "/Nope/Tunnel", [relay_connect(echo, user, password)])
    raise AssertionError("a wrong path was accepted")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.UNIMPLEMENTED, e
print(f"{mode} unimplemented ok")

# Every check has passed. The interpreter's own exit can wait on grpcio's threads (about one
# run in ten on a 2-core machine, after the last line above, even with the channel closed),
# so the script ends without it.
ch.close()
sys.stdout.flush()
os._exit(0)
