"""The systemd units and the nginx site: what deploy/ ships is what the code writes, and
the tools that will read them (systemd-analyze, nginx -t) accept them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT, free_port

from dropsync.ops import service
from dropsync.ops.nginx import Listen, Site, nginx_rate, render_main, render_site

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
NGINX = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin")


def verify_units(*paths) -> subprocess.CompletedProcess:
    return subprocess.run([SYSTEMD_ANALYZE, "verify", *map(str, paths)],
                          capture_output=True, text=True, timeout=60)


def test_deploy_folder_holds_what_the_code_writes_for_the_default_layout():
    for name, text in service.render_units(service.Layout()).items():
        assert (ROOT / "deploy" / name).read_text() == text, name
    assert (ROOT / "deploy" / "dropsync.env").read_text() == service.env_file_template()
    assert (ROOT / "deploy" / "nginx.conf").read_text() == render_site(Site())


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed "
                    "(Debian package systemd; tests/system-deps.sh installs it)")
def test_install_service_writes_units_that_systemd_accepts(cli, tmp_path):
    out = tmp_path / "units"
    result = cli("install-service", "--output", str(out), "--backup-dir",
                 str(tmp_path / "backups"), "--env-file", str(tmp_path / "dropsync.env"))
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted([service.SERVICE, service.BACKUP_SERVICE, service.BACKUP_TIMER])
    for name in written:
        assert f"write {out / name}" in result.output
    unit = (out / service.SERVICE).read_text()
    data_dir, staging = tmp_path / "data", Path("staging").absolute()  # the CLI's defaults
    lines = unit.splitlines()
    for line in ("User=dropsync", "Restart=always", "ProtectSystem=strict",
                 "NoNewPrivileges=yes", "PrivateTmp=yes",
                 f"EnvironmentFile=-{tmp_path / 'dropsync.env'}",
                 f"ReadWritePaths={data_dir} {staging}",
                 f"Environment=DROPSYNC_DATA_DIR={data_dir}",
                 f"ExecStart={Path(sys.executable).parent / 'dropsync'} serve"):
        assert line in lines, line
    backup = (out / service.BACKUP_SERVICE).read_text()
    assert f"backup --dir {tmp_path / 'backups'} --keep 7" in backup
    assert "OnCalendar=" in (out / service.BACKUP_TIMER).read_text()

    checked = verify_units(*(out / name for name in written))
    assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip(), \
        checked.stdout + checked.stderr
    # The check can fail: a misspelt directive is reported.
    broken = tmp_path / "broken" / service.SERVICE
    broken.parent.mkdir()
    broken.write_text(unit.replace("ProtectSystem=", "ProtectSystm="))
    assert "Unknown key" in verify_units(broken).stderr


def test_install_service_dry_run_says_what_it_would_do_and_does_nothing(cli, tmp_path):
    unit_dir = tmp_path / "systemd"
    result = cli("install-service", "--dry-run", "--unit-dir", str(unit_dir),
                 "--env-file", str(tmp_path / "etc" / "dropsync.env"),
                 "--backup-dir", str(tmp_path / "backups"))
    assert f"would write {unit_dir / service.SERVICE}" in result.output
    assert "would systemctl daemon-reload" in result.output
    assert "systemctl enable --now dropsync.service dropsync-backup.timer" in result.output
    assert not unit_dir.exists() and not (tmp_path / "etc").exists()
    assert not (tmp_path / "backups").exists()


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (Debian nginx-light; "
                    "tests/system-deps.sh installs it)")
def test_nginx_accepts_the_site_with_the_ticket_file_nginx_ticket_writes(tmp_path, cli):
    cert, key = tmp_path / "hub.crt", tmp_path / "hub.key"
    from dropsync.ops import tls

    cert_pem, key_pem = tls.make_certificate(["localhost"], ["127.0.0.1"], 1)
    tls.write_pair(cert, key, cert_pem, key_pem)
    env_file, ticket_conf = tmp_path / "etc" / "dropsync.env", tmp_path / "etc" / "ticket.conf"
    env_file.parent.mkdir()
    env_file.write_text("DROPSYNC_PORT=8000\n")
    written = cli("nginx-ticket", "--env-file", str(env_file), "--nginx-conf",
                  str(ticket_conf)).output
    secret_line = env_file.read_text().splitlines()[-1]
    secret = secret_line.removeprefix("DROPSYNC_DOWNLOAD_TICKET_SECRET=")
    assert env_file.read_text() == f"DROPSYNC_PORT=8000\n{secret_line}\n"
    assert len(secret) >= 32 and secret not in written  # printed: what, where; not the secret
    assert str(env_file) in written and str(ticket_conf) in written
    assert f'set $dropsync_ticket_secret "{secret}";' in ticket_conf.read_text()
    for path in (env_file, ticket_conf):
        assert path.stat().st_mode & 0o777 == 0o640, path
    # Run again: the same secret (the hub and nginx stay in step); --rotate: a new one.
    cli("nginx-ticket", "--env-file", str(env_file), "--nginx-conf", str(ticket_conf))
    assert env_file.read_text().count(secret) == 1 and secret in ticket_conf.read_text()

    site = Site(blobs_dir=tmp_path / "blobs", blob_socket=tmp_path / "blobs.sock",
                listens=[Listen(free_port(), address="127.0.0.1"),
                         Listen(free_port(), tls=True, address="127.0.0.1")],
                cert=cert, key=key, ticket_conf=ticket_conf, chunk_cache=tmp_path / "chunks")
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_main(render_site(site), tmp_path))
    checked = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(conf), "-e",
                              str(tmp_path / "error.log")], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr

    cli("nginx-ticket", "--env-file", str(env_file), "--nginx-conf", str(ticket_conf),
        "--rotate")
    assert secret not in env_file.read_text() and secret not in ticket_conf.read_text()


@pytest.mark.parametrize("rate, expected", [
    ("6000/minute", ("100r/s", 5999, 1)),      # the default: the whole window at once
    ("40/minute", ("40r/m", 39, 2)),
    ("600/minute;50/second", ("10r/s", 599, 1)),  # the slowest of several counts
    ("100/hour", ("2r/m", 99, 30)),            # nginx counts per second or per minute
    ("1/day", ("1r/m", 0, 60)),
])
def test_the_hubs_files_rate_becomes_nginxs_per_device_limit(rate, expected):
    assert nginx_rate(rate) == expected
    site = render_site(Site(files_rate=rate))
    assert f"rate={expected[0]};" in site and f"burst={expected[1]} nodelay;" in site
    assert f"Retry-After {expected[2]} always;" in site
    assert "limit_req" not in render_site(Site(files_rate=None))  # RATE_LIMITS_ENABLED off
