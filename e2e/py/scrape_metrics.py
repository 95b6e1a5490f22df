"""Scrapes a Prometheus endpoint and parses it with the reference Python parser.

usage: scrape_metrics.py URL [USER:PASSWORD]

Prints `status=N`, then one line per sample, `name{label=value,...} value`, labels sorted,
so that tests can assert on series without parsing the exposition format themselves. Exits 1
if the body is not valid Prometheus text.
"""

import base64
import sys
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main():
    url = sys.argv[1]
    request = urllib.request.Request(url)
    if len(sys.argv) > 2:
        token = base64.b64encode(sys.argv[2].encode()).decode()
        request.add_header("Authorization", "Basic " + token)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, body = response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        print(f"status={e.code}")
        print(f"www-authenticate={e.headers.get('WWW-Authenticate')}")
        return 0
    print(f"status={status}")
    families = list(text_string_to_metric_families(body))
    print(f"families={len(families)}")
    for family in families:
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            print(f"{sample.name}{{{labels}}} {sample.value:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
