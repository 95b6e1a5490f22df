"""CPU seconds that gost processes spend per GiB pushed through one tunnel.

usage: cpu_per_gib.py PROXY_HOST:PORT GIB PID [PID...]

Opens an HTTP CONNECT tunnel through the proxy to a sink of its own on 127.0.0.1, pushes GIB
gibibytes through it in 1 MiB writes, and prints the throughput and, for each PID, the CPU time
(user + system, from /proc/PID/stat) it spent per GiB. CPU per GiB stays comparable when other
work shares the machine, unlike MiB/s.
"""
import os
import socket
import sys
import threading
import time


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    gib = float(sys.argv[2])
    pids = [int(p) for p in sys.argv[3:]]
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(1)
    sink.settimeout(30)
    received = [0]

    def drain():
        conn, _ = sink.accept()
        conn.settimeout(60)
        buf = bytearray(1 << 20)
        while True:
            n = conn.recv_into(buf)
            if not n:
                break
            received[0] += n

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    tunnel = socket.create_connection((host, int(port)), timeout=30)
    target = f"127.0.0.1:{sink.getsockname()[1]}"
    tunnel.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 65536:
        more = tunnel.recv(1)
        if not more:
            sys.exit(f"proxy closed the connection; got {head!r}")
        head += more
    status = head.split(b"\r\n")[0]
    if b" 200" not in status:
        sys.exit(f"CONNECT refused: {status!r}")
    total = int(gib * (1 << 30))
    block = b"x" * (1 << 20)
    before = [cpu_seconds(p) for p in pids]
    start = time.time()
    sent = 0
    while sent < total:
        tunnel.sendall(block)
        sent += len(block)
    tunnel.shutdown(socket.SHUT_WR)
    drainer.join(120)
    elapsed = time.time() - start
    after = [cpu_seconds(p) for p in pids]
    if received[0] != sent:
        sys.exit(f"sent {sent} bytes, {received[0]} arrived")
    per_gib = [(b - a) / gib for a, b in zip(before, after)]
    print(
        f"MiB/s {sent / elapsed / 2**20:.0f}  cpu s/GiB per process: "
        + " ".join(f"{c:.2f}" for c in per_gib)
        + f"  total {sum(per_gib):.2f}"
    )


if __name__ == "__main__":
    main()
