#!/usr/bin/env bash
# The Debian packages the tests need, installed when missing:
#   chromium, chromium-driver  the browser tests (tests/test_playground.py)
#   postgresql                 the PostgreSQL model store and tests/test_cluster.py
#   haproxy                    the load balancer of `make cluster` and tests/test_cluster.py
#   wrk                        the load of tests/test_neighbours.py's flood and of the benchmarks
# As root (CI, containers) it runs apt-get for what is missing; as anyone else it prints what
# is missing and how to install it, and goes on (the tests that need it then skip or fail
# saying so). Nothing missing: it prints nothing and costs a few stat calls.
set -euo pipefail

missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "$2" ]; }
have chromium /usr/bin/chromium || missing+=(chromium)
have chromedriver /usr/bin/chromedriver || missing+=(chromium-driver)
have haproxy /usr/sbin/haproxy || missing+=(haproxy)
have wrk /usr/bin/wrk || missing+=(wrk)
# Debian puts the server programs in /usr/lib/postgresql/<version>/bin, not on PATH
if ! command -v postgres >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    missing+=(postgresql)
fi

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "system packages missing: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "system packages missing: ${missing[*]}, and no apt-get to install them with" >&2
    exit 0
fi
echo "installing system packages: ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
