#!/usr/bin/env bash
# Installs the peers tally-bench compares Tally with, Redis and PostgreSQL,
# and the headless browser the admin page and widget tests drive, Chromium and
# its chromedriver, from the distribution's packages (Debian/Ubuntu).
#
# The bench starts its own servers, on free loopback ports with their data in
# the run's folder; it never uses the services the packages set up. Those are
# stopped and kept from starting at boot, so they hold no memory or ports.
set -euo pipefail

have_redis() {
    command -v redis-server >/dev/null 2>&1
}

have_postgres() {
    local bin
    for bin in /usr/lib/postgresql/*/bin; do
        if [[ -x "$bin/initdb" && -x "$bin/postgres" ]]; then
            return 0
        fi
    done
    command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1
}

# Where server/tests/browser.rs looks for them.
have_browser() {
    [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]
}

if have_redis && have_postgres && have_browser; then
    echo "install-peers: redis-server, a PostgreSQL server, chromium and chromedriver are installed; nothing to do."
    exit 0
fi

packages=(redis-server postgresql chromium chromium-driver)

if [[ "$(id -u)" -ne 0 ]]; then
    echo "install-peers: installing needs root; run:" >&2
    echo "  sudo $0" >&2
    echo "or install them yourself: sudo apt-get install -y --no-install-recommends ${packages[*]}" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-peers: no apt-get here; install Redis 7, PostgreSQL (server and initdb), Chromium and chromedriver with your package manager." >&2
    exit 1
fi

apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}"

# The packages' own services are not used by the bench. Stop them and keep
# them from starting at boot; with no init system (containers) there is
# nothing running or to disable, and failures here are harmless.
if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
    systemctl disable --now redis-server.service postgresql.service >/dev/null 2>&1 || true
elif command -v service >/dev/null 2>&1; then
    service redis-server stop >/dev/null 2>&1 || true
    service postgresql stop >/dev/null 2>&1 || true
fi

if have_redis && have_postgres && have_browser; then
    echo "install-peers: done: $(redis-server --version | cut -d' ' -f1-3), PostgreSQL in $(ls -d /usr/lib/postgresql/*/bin | tail -n1), $(/usr/bin/chromedriver --version | cut -d' ' -f1-2)."
else
    echo "install-peers: the packages installed, but redis-server, initdb/postgres, /usr/bin/chromium or /usr/bin/chromedriver is still missing." >&2
    exit 1
fi
