#!/usr/bin/env bash
# The Debian packages the tests need, installed when missing:
#   chromium, chromium-driver  the browser tests (tests/test_playground.py)
#   postgresql                 the PostgreSQL model store and tests/test_cluster.py
#   haproxy                    the load balancer of `make cluster` and tests/test_cluster.py
#   wrk                        the load of tests/test_neighbours.py's flood and of the benchmarks
# Given package names (`make cluster` gives postgresql haproxy), only those are looked at.
# As root (CI, containers) it runs apt-get for what is missing; as anyone else it prints what
# is missing and how to install it, and goes on (the tests that need it then skip or fail
# saying so). Nothing missing: it prints nothing and costs a few stat calls.
set -euo pipefail

wanted=("$@")
[ ${#wanted[@]} -eq 0 ] && wanted=(chromium chromium-driver haproxy wrk postgresql)

missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "$2" ]; }
for package in "${wanted[@]}"; do
    case "$package" in
        chromium) have chromium /usr/bin/chromium || missing+=(chromium) ;;
        chromium-driver) have chromedriver /usr/bin/chromedriver || missing+=(chromium-driver) ;;
        haproxy) have haproxy /usr/sbin/haproxy || missing+=(haproxy) ;;
        wrk) have wrk /usr/bin/wrk || missing+=(wrk) ;;
        # Debian puts the server programs in /usr/lib/postgresql/<version>/bin, not on PATH
        postgresql) command -v postgres >/dev/null 2>&1 \
            || ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql) ;;
        *) echo "tools/system-packages.sh: no check for package $package" >&2; exit 2 ;;
    esac
done

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
