"""TLS checks with Python's standard library, as an independent client of gost.

    tls_clients.py cert HOST PORT
        prints the PEM certificate the TLS server at HOST:PORT serves
    tls_clients.py socks5-tls PROXY_PORT TARGET_PORT USER PASS [expect-method]
        speaks SOCKS5 as a GOST client does: offers 00 02 80 82; when the server picks 0x82,
        runs TLS (unverified, as GOST's default) over the same socket, then RFC 1929 and
        CONNECT inside it, then sends an HTTP request to the target through the tunnel
"""
import socket
import ssl
import struct
import sys

TIMEOUT = 20


def server_cert(host, port):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=TIMEOUT) as raw:
        with context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    print(ssl.DER_cert_to_PEM_cert(der), end="")


def handshake(host, port, max_version, alpn, ciphers=None):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = {
        "1.2": ssl.TLSVersion.TLSv1_2,
        "1.3": ssl.TLSVersion.TLSv1_3,
    }[max_version]
    if alpn != "-":
        context.set_alpn_protocols(alpn.split(","))
    if ciphers:
        context.set_ciphers(ciphers)
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as raw:
            with context.wrap_socket(raw) as tls:
                print(
                    f"version={tls.version()} alpn={tls.selected_alpn_protocol()} "
                    f"cipher={tls.cipher()[0]}"
                )
    except (ssl.SSLError, ConnectionError) as e:
        print(f"refused: {e}")


def handshake_sni(host, port, name):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as raw:
            sni = None if name == "-" else name
            with context.wrap_socket(raw, server_hostname=sni) as tls:
                der = tls.getpeercert(binary_form=True)
                print(f"served {len(der)} bytes of certificate")
    except (ssl.SSLError, ConnectionError) as e:
        print(f"refused: {e}")


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise SystemExit(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def socks5_tls(proxy_port, target_port, user, password):
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=TIMEOUT)
    sock.sendall(bytes([5, 4, 0x00, 0x02, 0x80, 0x82]))
    version, method = recv_exact(sock, 2)
    print(f"method {method:#04x}")
    if method in (0x80, 0x82):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        sock = context.wrap_socket(sock)
        print(f"tls {sock.version()}")
    if method in (0x02, 0x82):
        u, p = user.encode(), password.encode()
        sock.sendall(bytes([1, len(u)]) + u + bytes([len(p)]) + p)
        _, status = recv_exact(sock, 2)
        print(f"auth status {status}")
        if status != 0:
            return
    sock.sendall(bytes([5, 1, 0, 1, 127, 0, 0, 1]) + struct.pack(">H", target_port))
    reply = recv_exact(sock, 10)
    print(f"reply {reply[1]}")
    if reply[1] != 0:
        return
    sock.sendall(b"GET / HTTP/1.1\r\nHost: target\r\nConnection: close\r\n\r\n")
    response = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        response += chunk
    print(response.decode(errors="replace").splitlines()[0])
    print("hello" if b"hello from target" in response else "no greeting")


if __name__ == "__main__":
    if sys.argv[1] == "cert":
        server_cert(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "handshake":
        handshake(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], *sys.argv[6:7])
    elif sys.argv[1] == "handshake-sni":
        handshake_sni(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif sys.argv[1] == "socks5-tls":
        socks5_tls(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        raise SystemExit(f"unknown command {sys.argv[1]}")
