#!/usr/bin/env bash
# Installs the peers tally-bench compares Tally with, Redis and PostgreSQL,
# and the headless browser the admin page and widget tests drive, Chromium and
# its chromedriver, from the distribution's packages (Debian/Ubuntu), and the
# validators server/tests/deploy.rs runs on deploy/ (systemd-analyze from
# systemd, kubernetes-validate from PyPI).
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

have_systemd_analyze() {
    command -v systemd-analyze >/dev/null 2>&1
}

have_kubernetes_validate() {
    python3 -m kubernetes_validate --version >/dev/null 2>&1
}

# kubernetes-validate carries the Kubernetes schemas it checks against: no
# download at test time. Installed for the user that runs the tests.
install_kubernetes_validate() {
    if ! have_kubernetes_validate; then
        python3 -m pip install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0' \
            || python3 -m pip install --quiet --user --disable-pip-version-check 'kubernetes-validate==1.37.0'
    fi
    if ! have_kubernetes_validate; then
        echo "install-peers: python3 -m kubernetes_validate still fails after pip install kubernetes-validate." >&2
        exit 1
    fi
}

if have_redis && have_postgres && have_browser && have_systemd_analyze; then
    install_kubernetes_validate
    echo "install-peers: redis-server, a PostgreSQL server, chromium, chromedriver, systemd-analyze and kubernetes-validate are installed; nothing to do."
    exit 0
fi

packages=(redis-server postgresql chromium chromium-driver systemd)

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

install_kubernetes_validate

if have_redis && have_postgres && have_browser && have_systemd_analyze; then
    echo "install-peers: done: $(redis-server --version | cut -d' ' -f1-3), PostgreSQL in $(ls -d /usr/lib/postgresql/*/bin | tail -n1), $(/usr/bin/chromedriver --version | cut -d' ' -f1-2)."
else
    echo "install-peers: the packages installed, but redis-server, initdb/postgres, /usr/bin/chromium, /usr/bin/chromedriver or systemd-analyze is still missing." >&2
    exit 1
fi
