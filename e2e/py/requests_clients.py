"""Drive gost with the `requests` library (and PySocks for SOCKS5), as applications do.

usage: requests_clients.py HTTP_PROXY SOCKS_PROXY TARGET
Both proxies want user:pass. Prints one "... ok" line per check; failures raise.
"""

import sys

import requests

http_proxy, socks_proxy, target = sys.argv[1:4]
TIMEOUT = 20
url = f"http://{target}/requests"

for name, proxy in [
    ("http", f"http://user:pass@{http_proxy}"),
    ("socks5h", f"socks5h://user:pass@{socks_proxy}"),
    ("socks5", f"socks5://user:pass@{socks_proxy}"),
]:
    response = requests.get(url, proxies={"http": proxy}, timeout=TIMEOUT)
    assert response.status_code == 200, (name, response.status_code)
    assert response.text.startswith("hello from target"), response.text
    assert "proxy-authorization" not in response.text.lower(), response.text
    print(f"requests via {name} ok")

response = requests.get(url, proxies={"http": f"http://user:wrong@{http_proxy}"}, timeout=TIMEOUT)
assert response.status_code == 407, response.status_code
assert response.headers["Proxy-Authenticate"] == 'Basic realm="gost"', response.headers
print("requests 407 ok")

try:
    requests.get(url, proxies={"http": f"socks5h://user:wrong@{socks_proxy}"}, timeout=TIMEOUT)
except requests.exceptions.ConnectionError as error:
    assert "auth" in str(error).lower() or "socks" in str(error).lower(), error
    print("requests socks5 refusal ok")
else:
    raise AssertionError("a wrong SOCKS5 password was accepted")
