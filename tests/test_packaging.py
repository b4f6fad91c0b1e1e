"""A non-editable install (``pip install .``, no ``-e``) serves the dashboard, its assets and
the API docs: templates/ and static/ stay at the top of the repository and are installed
as data files (setup.cfg), where ``dropsync.asset_root()`` finds them."""

from __future__ import annotations

import subprocess
import sys
import sysconfig

import pytest
import requests
from support import ROOT, HubProcess

pytestmark = pytest.mark.slow


def test_a_non_editable_install_serves_the_dashboard_and_the_api_docs(tmp_path):
    # A copy of the checkout (tracked and new files), so the build leaves nothing behind.
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    source = tmp_path / "source"
    for name in listed.splitlines():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((ROOT / name).read_bytes())

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # Offline and quick: dependencies come from the test environment (a path below the new
    # venv's own), the package itself is built here, without -e, and installed for real.
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print("
                              "sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / "venv" / purelib.split(str(venv) + "/")[1] / "test-deps.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                             "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                             str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr

    where = subprocess.run([str(python), "-c", "import dropsync; print(dropsync.__file__); "
                            "print(dropsync.asset_root())"], cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout.split()
    assert where[0].startswith(str(venv)), where  # the installed copy, not the checkout
    assert where[1].startswith(str(venv)), where

    hub = HubProcess(tmp_path / "run", {"DROPSYNC_ADMIN_PASSWORD": "install-password-1"},
                     executable=venv / "bin" / "dropsync").start()
    try:
        login = requests.get(hub.url + "/dashboard/login", timeout=15)
        assert login.status_code == 200 and 'id="password"' in login.text
        assert requests.get(hub.url + "/static/dashboard.css", timeout=15).status_code == 200
        docs = requests.get(hub.url + "/api/v1/docs", timeout=15)
        assert docs.status_code == 200 and "swagger-ui" in docs.text.lower()
    finally:
        hub.stop()
