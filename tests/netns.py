"""Linux network namespaces as separate hosts on one private bridge (root only).

A "switch" namespace holds the bridge; each host namespace gets one veth into it with a
10.77.0.x/24 address. Nothing is added to the caller's own namespace and no namespace has
a default route, so traffic can only go between the namespaces created here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from types import TracebackType

SUBNET = "10.77.0"


def netns_unavailable() -> str | None:
    """Why namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return "needs the ip (iproute2) and unshare (util-linux) commands"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class NetnsLab:
    """Host namespaces named by the caller, each with address 10.77.0.(index + 1)."""

    def __init__(self, hosts: list[str]) -> None:
        tag = uuid.uuid4().hex[:6]
        self.switch = f"farm{tag}-sw"
        self.namespaces = {host: f"farm{tag}-{host}" for host in hosts}
        self.addresses = {host: f"{SUBNET}.{index + 1}" for index, host in enumerate(hosts)}
        self._created: list[str] = []

    def start(self) -> None:
        for ns in (self.switch, *self.namespaces.values()):
            _ip("netns", "add", ns)
            self._created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for index, (host, ns) in enumerate(self.namespaces.items()):
            port = f"port{index}"
            # Created inside the switch namespace, the peer straight in the host's.
            _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", ns)
            _ip("-n", self.switch, "link", "set", port, "master", "br0")
            _ip("-n", self.switch, "link", "set", port, "up")
            _ip("-n", ns, "addr", "add", f"{self.addresses[host]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def stop(self) -> None:
        for ns in reversed(self._created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self._created.clear()

    def command(self, host: str, argv: list[str], *, hostname: str | None = None) -> list[str]:
        """argv run inside host's namespace, optionally under its own host name."""
        prefix = ["ip", "netns", "exec", self.namespaces[host]]
        if hostname is None:
            return prefix + argv
        # A UTS namespace of its own: socket.gethostname() tells the hosts apart.
        return [*prefix, "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"',
                hostname, *argv]

    def __enter__(self) -> NetnsLab:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
