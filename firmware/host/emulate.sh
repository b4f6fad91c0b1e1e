#!/bin/sh
# Developer check: build the real sketch (dropsync_node.ino with its Arduino glue) in the
# ESP8266 Arduino core's host emulation (tests/host: the real ESP8266HTTPClient, LittleFS
# and Updater over POSIX sockets) and run it against a hub. Not part of CI (it needs a
# checkout of esp8266/Arduino with its submodules); nothing of that repository is copied
# into this one.
#
#   firmware/host/emulate.sh --check /path/to/esp8266-Arduino
#       the whole scenario against a local hub it starts (emulation_check.py): commands,
#       heartbeats, 200 KiB byte check, 2 MiB with a SIGKILL and a resume, a hub outage
#       and the outbox, replace, long name, target move, withdraw; a PASS/FAIL line a step
#   firmware/host/emulate.sh /path/to/esp8266-Arduino http://127.0.0.1:8000 <device id> <token> [seconds]
#       the sketch against a hub of yours for the given seconds
#
# ENROLL_KEY=K builds the board with no identity of its own: it enrolls with that key
# (device id and token are then ignored; give any). BUILD_ONLY=1 builds and stops. FLASH_DIR (default: a temp folder) keeps the emulated
# flash, which persists every write as it happens (see below), so a killed run resumes;
# FLASH_KB sets its size (default 1024, a 4M1M board's FS).
# With SKETCH=stock_update_check it builds host/stock_update_check instead: the core's own
# ESPhttpUpdate against the hub's stock-updater route (GET /api/v1/ota/<id>).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
if [ "${1:-}" = "--check" ]; then
    shift
    python=${PYTHON:-$(command -v python3)}
    [ -x "$here/../.venv/bin/python" ] && python="$here/../.venv/bin/python"
    exec "$python" "$here/host/emulation_check.py" "$@"
fi
sketch=${SKETCH:-dropsync_node}
core=$(cd "$1" && pwd)
hub=$2
device=$3
token=$4
seconds=${5:-20}
work=${TMPDIR:-/tmp}/dropsync-emulation
flash_dir=${FLASH_DIR:-$work/flash}
rm -rf "$work/dropsync_node" "$work/host" "$work/stock_update_check"
mkdir -p "$work/dropsync_node" "$work/host" "$work/stock_update_check" "$flash_dir"
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
#define POLL_S ${POLL_S:-5}
#define HEARTBEAT_S ${HEARTBEAT_S:-10}
#define MANIFEST_S ${MANIFEST_S:-30}
#define BACKOFF_BASE_MS 500
#define BACKOFF_CAP_MS 4000
CONFIG
if [ -n "${ENROLL_KEY:-}" ]; then  # a board built once for a fleet: it enrolls
    echo "#define ENROLL_KEY \"$ENROLL_KEY\"" >> "$work/dropsync_node/config.h"
fi
cp "$work/dropsync_node/config.h" "$work/stock_update_check/config.h"

# The core's tests/host, in a shadow tree (the rest of the checkout linked, not copied),
# with one file of our own: the flash HAL mock. The core's keeps the emulated flash in RAM
# and saves it only at a clean exit; ours also writes every write and erase through to
# $DROPSYNC_FLASH_FILE (the file the LittleFS mock loads at start), so a SIGKILL leaves
# what a power cut leaves on a chip.
shadow=$work/core
mkdir -p "$shadow/tests"
for entry in cores libraries tools bootloaders; do
    ln -sfn "$core/$entry" "$shadow/$entry"
done
if [ ! -d "$shadow/tests/host" ]; then
    cp -R "$core/tests/host" "$shadow/tests/host"
    rm -rf "$shadow/tests/host/bin"
fi
cat > "$shadow/tests/host/common/flash_hal_mock.cpp" <<'HAL'
/* The flash HAL for the host emulation, written through to $DROPSYNC_FLASH_FILE. */
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "flash_hal.h"

extern "C"
{
    uint32_t s_phys_addr  = 0;
    uint32_t s_phys_size  = 0;
    uint32_t s_phys_page  = 0;
    uint32_t s_phys_block = 0;
    uint8_t* s_phys_data  = nullptr;
}

static void write_through(uint32_t addr, uint32_t size)
{
    static int fd = -2;
    if (fd == -2)
    {
        const char* path = getenv("DROPSYNC_FLASH_FILE");
        fd = path ? open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644) : -1;
        // The whole image once (what the mock loaded, or a blank chip), so the file is
        // always the full size the mock checks at start.
        if (fd >= 0 && lseek(fd, 0, SEEK_END) != (off_t)s_phys_size &&
            pwrite(fd, s_phys_data, s_phys_size, 0) != (ssize_t)s_phys_size)
        {
            abort();
        }
    }
    if (fd >= 0 && pwrite(fd, s_phys_data + addr, size, addr) != (ssize_t)size)
    {
        abort();
    }
}

int32_t flash_hal_read(uint32_t addr, uint32_t size, uint8_t* dst)
{
    memcpy(dst, s_phys_data + addr, size);
    return 0;
}

int32_t flash_hal_write(uint32_t addr, uint32_t size, const uint8_t* src)
{
    memcpy(s_phys_data + addr, src, size);
    write_through(addr, size);
    return 0;
}

int32_t flash_hal_erase(uint32_t addr, uint32_t size)
{
    if ((size & (FLASH_SECTOR_SIZE - 1)) != 0 || (addr & (FLASH_SECTOR_SIZE - 1)) != 0)
    {
        abort();
    }
    memset(s_phys_data + addr, 0xff, size);
    write_through(addr, size);
    return 0;
}
HAL

sources=$(ls "$work"/dropsync_node/src/dropsync_core/*.cpp | tr '\n' ' ')
make -C "$shadow/tests/host" FORCE32=0 OPTZ=-O0 R=noexec \
    USERCFLAGS="-I$work/dropsync_node -I$work/dropsync_node/src -I$work/host -DDROPSYNC_EMULATION=1" \
    USERCXXSOURCES="$sources $work/host/sha256.cpp $work/host/emulation_stubs.cpp $core/libraries/ESP8266httpUpdate/src/ESP8266httpUpdate.cpp" \
    "$work/$sketch/$sketch"
binary="$shadow/tests/host/bin/$sketch/$sketch"
echo "---- built $binary"
[ "${BUILD_ONLY:-0}" = 1 ] && exit 0
echo "---- running it for ${seconds}s against $hub (flash in $flash_dir)"
# -S 0: no SPIFFS (it would share the flash HAL); -L: the LittleFS size, 8 KiB blocks
# (FLASH_KB, default 1024 as a 4M1M board's).
kb=${FLASH_KB:-1024}
DROPSYNC_FLASH_FILE="$flash_dir/$sketch-littlefs${kb}KB" \
    timeout "$seconds" "$binary" -c -S 0 -L "$kb" -P "$flash_dir" </dev/null || true
