"""What the HTTP/2 test clients share: a TLS connection to gost's `http2` listener with ALPN
`h2`, and an `h2` client connection that may send a plain CONNECT."""

import socket
import ssl

import h2.config
import h2.connection


def connect(proxy, timeout):
    """A TLS socket to PROXY (`host:port`) that chose `h2`, and an initiated client connection.

    gost's generated certificate is self-signed, as GOST's is, so it is not verified. A plain
    CONNECT (RFC 9113 §8.5) has no :scheme or :path, which the package refuses to send unless
    outbound validation is off; answers are still validated.
    """
    host, port = proxy.rsplit(":", 1)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    tls = context.wrap_socket(sock, server_hostname=host)
    assert tls.selected_alpn_protocol() == "h2", tls.selected_alpn_protocol()
    config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    return tls, conn
