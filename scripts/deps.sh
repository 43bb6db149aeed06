#!/usr/bin/env bash
# deps.sh — installs the Debian 12 packages chorus needs to build, test and
# benchmark. As root it runs apt-get; otherwise it prints the command.
set -euo pipefail

PACKAGES=(
  build-essential clang libclang-rt-14-dev pkg-config
  liblua5.4-dev lua5.4 libuv1-dev libcurl4-openssl-dev libhttp-parser-dev libmicrohttpd-dev
  liblmdb-dev lmdb-utils libcjson-dev libssl-dev libxxhash-dev
  libsystemd-dev  # sd_notify: READY, STOPPING and watchdog pings under systemd (contrib/chorus.service)
  lua-busted lua-dkjson lua-system lua-check lua-argparse curl wrk valgrind clang-format time bc
  # lua-argparse: the CLI's grammar (chorus.cli_args), loaded by ./chorus from the system Lua path
  python3  # tests/integration/raw_client.py: raw and slow requests curl cannot send
  nodejs   # tests/otlp/receiver.js: the OTLP receiver tests/integration/otlp_spec.lua sends spans to
  # tests/integration/ui_browser_spec.lua: the web console in headless Chromium
  chromium chromium-driver python3-selenium
  # promtool (in Debian's prometheus package): checks contrib/prometheus-alerts.yml;
  # groff-base: the man page make install writes is checked with groff
  prometheus groff-base
  # make bench: the event-driven upstream (scripts/bench/upstream.sh) and the
  # nginx + Lua server chorus is compared with; perf for make bench-profile
  nginx-light libnginx-mod-http-lua linux-perf
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# tests/otlp: the OpenTelemetry npm packages the OTLP receiver is built on,
# at the versions package-lock.json pins. Debian's nodejs comes without npm
# (its own package); a nodejs from elsewhere may bring it.
npm_deps() {
  cd "$(dirname "$0")/.."
  if ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "deps: npm missing: run as root: apt-get install -y npm"
      return 1
    fi
    apt-get install -y -q --no-install-recommends npm
  fi
  npm ci --prefix tests/otlp --no-audit --no-fund --loglevel=error
  echo "deps: tests/otlp npm packages installed"
}

if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#PACKAGES[@]} packages present"
  npm_deps
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: missing ${missing[*]}"
  echo "deps: run as root: apt-get update && apt-get install -y ${missing[*]}"
  exit 1
fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
npm_deps
