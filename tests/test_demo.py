"""``dropsync demo`` as a newcomer runs it: devices come online, Ctrl-C leaves nothing."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import requests
from support import BIN
from sync_support import bearer, wait_until

pytestmark = pytest.mark.slow


def lines_of(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line or environment names ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        for part in ("cmdline", "environ"):
            try:
                if text.encode() in (proc / part).read_bytes():
                    found.append(int(proc.name))
                    break
            except OSError:
                pass
    return found


def test_demo_runs_devices_and_ctrl_c_leaves_nothing_behind(tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    demo = subprocess.Popen([str(BIN / "dropsync"), "demo", "--devices", "4", "--poll", "2"],
                            env={**os.environ, "TMPDIR": str(temp)}, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    printed: queue.Queue = queue.Queue()
    threading.Thread(target=lines_of, args=(demo.stdout, printed), daemon=True).start()
    output = ""
    try:
        while "Admin token:" not in output or "Data:" not in output:
            line = printed.get(timeout=60)
            assert line is not None, output
            output += line
        url = re.search(r"Hub:\s+(http://\S+)", output).group(1)
        token = re.search(r"Admin token:\s+(\S+)", output).group(1)
        workdir = re.search(r"Data:\s+(\S+)", output).group(1)
        assert Path(workdir).parent == temp
        assert "/dashboard/" in output or f"{url}/api/v1/docs" in output

        def online() -> bool:
            devices = requests.get(f"{url}/api/v1/admin/devices", headers=bearer(token),
                                   timeout=10).json()["devices"]
            return len(devices) == 4 and all(d["connection"] == "online" for d in devices)

        wait_until(online, timeout=60, every=0.5, message="the demo's devices online")
        assert "Rollout:" in output and "firmware/demo.bin" in output

        def rollout() -> dict:
            found = requests.get(f"{url}/api/v1/admin/rollouts", headers=bearer(token),
                                 timeout=10).json()["rollouts"]
            assert len(found) == 1 and found[0]["path"] == "firmware/demo.bin", found
            return found[0]

        assert [w["size"] for w in rollout()["waves"]] == [1, 1, 2]
        # in its first minute: the canary ran the image and the next wave has started
        wait_until(lambda: rollout()["waves"][1]["state"] != "waiting", timeout=60,
                   every=0.5, message="the demo's rollout past its canary")
        assert rollout()["state"] in ("running", "finished")
        # boards with no token arrive and wait for the person at the dashboard
        assert "New boards:" in output and "Pending page" in output
        wait_until(lambda: requests.get(f"{url}/api/v1/admin/enrollments?state=pending",
                                        headers=bearer(token), timeout=10).json()["count"]
                   == 2, timeout=30, every=0.5, message="two boards pending")
        assert processes_mentioning(workdir), "the hub runs with the demo's data directory"
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        demo.stdout.close()
    assert list(temp.iterdir()) == []
    assert processes_mentioning(workdir) == []
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/health", timeout=5)
