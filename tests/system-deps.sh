#!/usr/bin/env bash
# Installs the Debian packages the test suite drives for real, when they are missing:
# Chromium for the dashboard's browser tests, nginx for the deployment tests, the xtensa
# cross-compiler for the firmware core's size check, systemd-analyze for the service unit,
# syncthing for the many-sites test.
# Idempotent and quick when everything is there; needs root (or sudo) only to install.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have chromium || need+=(chromium)
have nginx || need+=(nginx-light)
have g++ || need+=(g++)
have make || need+=(make)  # the firmware host client's Makefile
[ -f /usr/include/openssl/ssl.h ] || need+=(libssl-dev)  # the host client's HTTPS (pinning)
have openssl || need+=(openssl)  # the ESP8266 core's signing.py signs with it (tests compare)
have xtensa-lx106-elf-g++ || need+=(gcc-xtensa-lx106 binutils-xtensa-lx106)
[ -d /usr/lib/xtensa-lx106-elf/include ] || need+=(picolibc-xtensa-lx106-elf)
have systemd-analyze || need+=(systemd)
have npm || need+=(npm)
have wrk || need+=(wrk)
have ip || need+=(iproute2)  # a private network namespace for the mDNS test on 0.0.0.0
have syncthing || need+=(syncthing)  # the many-sites test: one daemon per hub

[ ${#need[@]} -eq 0 ] && exit 0
echo "system-deps: installing ${need[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
