"""Advertising the hub over mDNS as ``_dropsync._tcp``, so nodes need no fixed address.

A node (ESP8266mDNS ``MDNS.queryService("dropsync", "tcp")``, ESP32 ``MDNS.queryService``)
gets the hub's address and port, and from the TXT record the API path and whether to
speak HTTPS. The hub listening on one address advertises on that interface only; on
``0.0.0.0`` it advertises every IPv4 address this machine has (not loopback).
Registration probes the network for about a second and a half, so it runs on a thread
and never delays start-up.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from typing import Any

from .. import __version__

log = logging.getLogger("dropsync")

SERVICE_TYPE = "_dropsync._tcp.local."
API_PATH = "/api/v1"


def advertised_addresses(host: str) -> list[str]:
    """The IPv4 addresses to advertise for a hub listening on ``host``."""
    if host not in ("", "0.0.0.0", "::"):
        return [host] if ipaddress.ip_address(host).version == 4 else []
    import ifaddr  # zeroconf's own dependency

    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                found.append(ip.ip)
    return found


class Advertiser:
    def __init__(self, host: str, port: int, *, tls: bool = False, name: str | None = None):
        self.host, self.port, self.tls = host, port, tls
        self.name = name or f"DropSync on {socket.gethostname()} port {port}"
        self._zeroconf: Any = None
        self._info: Any = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._register, name="mdns-advertiser",
                                        daemon=True)
        self._thread.start()

    def _register(self) -> None:
        from zeroconf import InterfaceChoice, IPVersion, ServiceInfo, Zeroconf

        addresses = advertised_addresses(self.host)
        if not addresses:
            log.warning("mDNS: no IPv4 address to advertise for HOST=%s; not advertising",
                        self.host)
            return
        specific = self.host not in ("", "0.0.0.0", "::")
        info = ServiceInfo(
            SERVICE_TYPE, f"{self.name}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(a) for a in addresses], port=self.port,
            properties={"path": API_PATH, "scheme": "https" if self.tls else "http",
                        "version": __version__},
            server=f"{socket.gethostname()}.local.")
        try:
            with self._lock:
                if self._stopped:
                    return
                # zeroconf refuses None; on 0.0.0.0 the hub answers on every interface
                self._zeroconf = Zeroconf(
                    interfaces=addresses if specific else InterfaceChoice.All,
                    ip_version=IPVersion.V4Only)
            self._zeroconf.register_service(info, allow_name_change=True)
            self._info = info
            log.info("mDNS: advertising %s on %s port %d", info.name, ", ".join(addresses),
                     self.port)
        except Exception as exc:  # no multicast here: the hub works, nodes need its address
            log.warning("mDNS: could not advertise the hub (%s); nodes need its address "
                        "configured", exc)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._zeroconf is not None:
            try:
                if self._info is not None:
                    self._zeroconf.unregister_service(self._info)
            finally:
                self._zeroconf.close()
            self._zeroconf = None
