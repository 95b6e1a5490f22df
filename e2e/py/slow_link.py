"""Time to open a tunnel and echo one byte over a pooled TCP transport (h2, h2c, http2, grpc)
whose uplink is slow and full: what a new tunnel waits behind on a connection that other
tunnels' uploads fill.

usage: slow_link.py GOST_BINARY SCHEME [RATE_BYTES_PER_S] [UPLOADS] [QUERY]

Starts a gost server `-L SCHEME://127.0.0.1:PORT[?QUERY]` and a gost client
`-L http://127.0.0.1:PORT -F SCHEME://FORWARDER[?QUERY]`, where the forwarder passes the
client's bytes on to the server at RATE bytes a second (200000 by default) and the server's back
at full speed. UPLOADS tunnels (2 by default) upload without pause through the client; after
5 s, five new tunnels are opened one at a time, each to an echo target, and the seconds from
the CONNECT to the echoed byte are printed. Relay schemes get `nodelay=true` on the client, as
the targets here answer only what they are sent. Everything stays on 127.0.0.1.
"""
import socket
import subprocess
import sys
import threading
import time

ROUNDS = 5
WARM_UP = 5.0
TIMEOUT = 30.0


def serve(handler):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)

    def accept():
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1]


def echo(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def sink(conn):
    with conn:
        while conn.recv(65536):
            pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def forwarder(to_port, rate):
    """A listener whose connections reach `to_port`; what they send goes at `rate` bytes/s."""
    listener = socket.socket()
    # A small receive window, as a slow link's: the sender's bytes wait on its side.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def up(src, dst):
        start, carried = time.monotonic(), 0
        while data := src.recv(8192):
            carried += len(data)
            due = start + carried / rate
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)

    def down(src, dst):
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)

    def accept():
        while True:
            conn, _ = listener.accept()
            server = socket.create_connection(("127.0.0.1", to_port))
            for f, a, b in ((up, conn, server), (down, server, conn)):
                threading.Thread(target=quietly, args=(f, a, b), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1]


def quietly(f, *args):
    try:
        f(*args)
    except OSError:
        pass


def wait_listening(port):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after 10 s")


def tunnel(proxy_port, target_port):
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=TIMEOUT)
    s.sendall(f"CONNECT 127.0.0.1:{target_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = s.recv(1)
        if not data:
            raise OSError(f"the proxy closed after {head!r}")
        head += data
    if b" 200" not in head.split(b"\r\n", 1)[0]:
        raise OSError(f"the proxy answered {head!r}")
    return s


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    gost, scheme = sys.argv[1], sys.argv[2]
    rate = int(sys.argv[3]) if len(sys.argv) > 3 else 200_000
    uploads = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    query = sys.argv[5] if len(sys.argv) > 5 else ""
    echo_port, sink_port = serve(echo), serve(sink)
    server_port, client_port = free_port(), free_port()
    server_url = f"{scheme}://127.0.0.1:{server_port}" + (f"?{query}" if query else "")
    options = [o for o in (query, "nodelay=true" if scheme.startswith("relay") else "") if o]
    procs = [subprocess.Popen([gost, "-L", server_url], stderr=subprocess.DEVNULL)]
    try:
        wait_listening(server_port)
        node = f"{scheme}://127.0.0.1:{forwarder(server_port, rate)}"
        if options:
            node += "?" + "&".join(options)
        procs.append(
            subprocess.Popen(
                [gost, "-L", f"http://127.0.0.1:{client_port}", "-F", node],
                stderr=subprocess.DEVNULL,
            )
        )
        wait_listening(client_port)
        # The first tunnel makes the pooled connection.
        with tunnel(client_port, echo_port) as s:
            s.sendall(b"x")
            assert s.recv(1) == b"x"
        stop = threading.Event()

        def upload():
            with tunnel(client_port, sink_port) as s:
                block = b"u" * 65536
                while not stop.is_set():
                    s.sendall(block)

        for _ in range(uploads):
            threading.Thread(target=quietly, args=(upload,), daemon=True).start()
        time.sleep(WARM_UP)
        times = []
        for _ in range(ROUNDS):
            start = time.monotonic()
            with tunnel(client_port, echo_port) as s:
                s.sendall(b"y")
                if s.recv(1) != b"y":
                    raise OSError("the echo target's byte did not come back")
            times.append(time.monotonic() - start)
            time.sleep(1)
        stop.set()
        print(
            f"{scheme} {query or '-'}: {rate} B/s uplink, {uploads} uploads: open and echo "
            + " ".join(f"{t:.2f}" for t in times)
            + " s"
        )
    finally:
        for p in procs:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
