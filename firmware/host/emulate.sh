#!/bin/sh
# Developer check: build the real sketch (dropsync_node.ino with its Arduino glue) in the
# ESP8266 Arduino core's host emulation (tests/host: the real ESP8266HTTPClient, LittleFS
# and Updater over POSIX sockets) and run it against a hub. Not part of CI (it needs a
# checkout of esp8266/Arduino); nothing of that repository is copied into this one.
#
#   firmware/host/emulate.sh /path/to/esp8266-Arduino http://127.0.0.1:8000 <device id> <token> [seconds]
#
# With SKETCH=stock_update_check it builds host/stock_update_check instead: the core's own
# ESPhttpUpdate against the hub's stock-updater route (GET /api/v1/ota/<id>).
set -eu
sketch=${SKETCH:-dropsync_node}
core=$(cd "$1" && pwd)
hub=$2
device=$3
token=$4
seconds=${5:-20}
here=$(cd "$(dirname "$0")/.." && pwd)
work=${TMPDIR:-/tmp}/dropsync-emulation
rm -rf "$work"
mkdir -p "$work/dropsync_node" "$work/host" "$work/stock_update_check"
cp -R "$here/dropsync_node/." "$work/dropsync_node/"
cp "$here/host/stock_update_check/stock_update_check.ino" "$work/stock_update_check/"
cp "$here/host/sha256.h" "$here/host/sha256.cpp" "$here/host/emulation_stubs.cpp" "$work/host/"
cat > "$work/dropsync_node/config.h" <<CONFIG
#define DROPSYNC_EMULATION 1
#define WIFI_SSID "emulated"
#define WIFI_PASSWORD "emulated"
#define HUB_URL "$hub"
#define DEVICE_ID "$device"
#define DEVICE_TOKEN "$token"
#define FIRMWARE_VERSION "emulated-1.0.0"
#define POLL_S 5
#define HEARTBEAT_S 10
#define MANIFEST_S 30
#define BACKOFF_BASE_MS 500
#define BACKOFF_CAP_MS 8000
CONFIG
cp "$work/dropsync_node/config.h" "$work/stock_update_check/config.h"
sources=$(ls "$work"/dropsync_node/src/dropsync_core/*.cpp | tr '\n' ' ')
make -C "$core/tests/host" FORCE32=0 OPTZ=-O0 R=noexec \
    USERCFLAGS="-I$work/dropsync_node -I$work/dropsync_node/src -I$work/host -DDROPSYNC_EMULATION=1" \
    USERCXXSOURCES="$sources $work/host/sha256.cpp $work/host/emulation_stubs.cpp $core/libraries/ESP8266httpUpdate/src/ESP8266httpUpdate.cpp" \
    "$work/$sketch/$sketch"
binary="$core/tests/host/bin/$sketch/$sketch"
echo "---- running $binary for ${seconds}s against $hub"
timeout "$seconds" "$binary" -c </dev/null || true
