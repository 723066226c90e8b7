#!/usr/bin/env bash
# System packages the integration tests start as real peers: Chromium (the web page is
# tested headless), curl (the page's curl commands are run for real), Prometheus +
# promtool (dashboards and rules are checked against a real server), unshare + ip
# (README's multi-process example runs as written in a private network namespace),
# nginx (real access logs, escapes and all, are ingested; streams go through a reverse
# proxy that passes or holds them) and Apache httpd (its real access logs).
# Installs only what is missing; needs root or sudo for apt-get.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# Debian's nginx and apache2 live in /usr/sbin, which may be off PATH.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v apache2 >/dev/null 2>&1 || [ -x /usr/sbin/apache2 ] || need+=(apache2)
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "tests need: ${need[*]} (install them with your package manager)" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing system packages for the tests: ${need[*]}" >&2
# Debian starts nginx and apache2 (both on port 80) when it installs them; the tests start
# their own. Keep services from starting during the install unless a policy already says so.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
# Another test run on this machine may be installing at the same moment: wait for dpkg's lock.
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
  "${need[@]}" >/dev/null
# Debian's prometheus package starts a service on :9090; the tests start their own.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl stop prometheus >/dev/null 2>&1 || true; fi
pkill -x prometheus >/dev/null 2>&1 || true
# Debian's nginx package starts the system service on :80; the tests start their own
# (own config, pid file and port), which this leaves alone.
if [[ " ${need[*]} " == *" nginx-light "* ]]; then
  $SUDO systemctl stop nginx >/dev/null 2>&1 || $SUDO service nginx stop >/dev/null 2>&1 || true
fi
