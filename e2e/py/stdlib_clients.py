"""Drive gost with Python's standard-library HTTP clients.

usage: stdlib_clients.py CLIENT_PROXY SERVER_PROXY TARGET
CLIENT_PROXY needs no credentials; SERVER_PROXY wants user:pass.
Prints one "... ok" line per check; any failure raises and exits non-zero.
"""

import base64
import http.client
import sys
import urllib.request

client_proxy, server_proxy, target = sys.argv[1:4]
TIMEOUT = 20

# urllib through the seed's client proxy (plain forwarding of an absolute-form request).
opener = urllib.request.build_opener(
    urllib.request.ProxyHandler({"http": f"http://{client_proxy}"})
)
with opener.open(f"http://{target}/urllib", timeout=TIMEOUT) as response:
    body = response.read().decode()
    assert response.status == 200, response.status
    assert body.startswith("hello from target"), body
print("urllib ok")

# http.client with a CONNECT tunnel straight to the server proxy, with credentials.
host, port = server_proxy.rsplit(":", 1)
token = base64.b64encode(b"user:pass").decode()
conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
target_host, target_port = target.rsplit(":", 1)
conn.set_tunnel(target_host, int(target_port), headers={"Proxy-Authorization": f"Basic {token}"})
conn.request("GET", "/tunnel")
response = conn.getresponse()
body = response.read().decode()
assert response.status == 200, response.status
assert body.startswith("hello from target"), body
assert "proxy-authorization" not in body.lower(), body
conn.close()
print("http.client tunnel ok")

# Without credentials the server proxy answers 407 with a Basic challenge.
conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
conn.request("GET", f"http://{target}/denied")
response = conn.getresponse()
response.read()
assert response.status == 407, response.status
assert response.getheader("Proxy-Authenticate") == 'Basic realm="gost"', response.getheaders()
conn.close()
print("407 ok")
