"""GOST's gRPC message, `message Chunk { bytes data = 1; }`, encoded by hand at run time (no
generated code), for the grpcio client and server scripts."""


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_chunk(data):
    # message Chunk { bytes data = 1; }: field 1, wire type 2; proto3 leaves out empty bytes.
    return b"\x0a" + varint(len(data)) + data if data else b""


def read_varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def decode_chunk(buf):
    data = b""
    i = 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 2:
            n, i = read_varint(buf, i)
            if field == 1:
                data = buf[i : i + n]
            i += n
        elif wire == 0:
            _, i = read_varint(buf, i)
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return data
