"""Linux network namespaces as separate hosts, for the multi-host tests.

`NetLab` builds, under names unique to this test session (`cetest-<hex>`),
a bridge in the root namespace and N namespaces, each joined to the bridge
by a veth pair and given an address of its own in one /24 of the
benchmarking range 198.18.0.0/15 (RFC 2544): the root namespace (where
the dispatcher runs) holds `.1`, namespace i holds `.(i+2)`. Namespaces
reach each other over the bridge, so a namespace can also act as another
dispatcher. No traffic leaves these links.

`close()` removes everything it created (processes left in the
namespaces, the namespaces, the bridge) and is safe to call after a
partial build, so a fixture calls it in `finally`.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass

BENCH_RANGE = ipaddress.ip_network("198.18.0.0/15")


def unavailable_reason() -> str | None:
    """Why the namespace tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "NETNS TESTS SKIPPED: they need root (ip netns add, veth, bridge)"
    if shutil.which("ip") is None:
        return "NETNS TESTS SKIPPED: the 'ip' command (iproute2) is not installed"
    return None


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _subnets_in_use() -> list:
    shown = ip("-4", "-o", "addr", "show").stdout.split()
    return [
        ipaddress.ip_interface(word).network for word in shown if "/" in word and word[0].isdigit()
    ]


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of the benchmarking range no interface here is using (several
    test sessions may run on one host at once)."""
    used = _subnets_in_use()
    subnets = list(BENCH_RANGE.subnets(new_prefix=24))
    for _ in range(64):
        candidate = subnets[secrets.randbelow(len(subnets))]
        if not any(candidate.overlaps(other) for other in used):
            return candidate
    raise RuntimeError("no free /24 in 198.18.0.0/15")


@dataclass
class Host:
    """One namespace: its name, address and the veth end inside it."""

    ns: str
    address: str
    inner: str  # the interface inside the namespace
    outer: str  # its peer, a port of the bridge

    def argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def link(self, up: bool) -> None:
        ip("-n", self.ns, "link", "set", self.inner, "up" if up else "down")


class NetLab:
    def __init__(self, count: int):
        self.tag = secrets.token_hex(3)
        self.bridge = f"ce{self.tag}br"
        self.hosts: list[Host] = []
        self._made_bridge = False
        self.subnet = _free_subnet()
        base = self.subnet.network_address
        self.root_address = str(base + 1)
        try:
            self._build(count, base)
        except BaseException:
            self.close()
            raise

    def _build(self, count: int, base) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        self._made_bridge = True
        ip("addr", "add", f"{self.root_address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for i in range(count):
            host = Host(
                f"cetest-{self.tag}-{i}",
                str(base + 2 + i),
                f"ce{self.tag}n{i}",
                f"ce{self.tag}h{i}",
            )
            ip("netns", "add", host.ns)
            self.hosts.append(host)
            ip("link", "add", host.outer, "type", "veth", "peer", "name", host.inner)
            ip("link", "set", host.inner, "netns", host.ns)
            ip("link", "set", host.outer, "master", self.bridge)
            ip("link", "set", host.outer, "up")
            ip("-n", host.ns, "addr", "add", f"{host.address}/24", "dev", host.inner)
            ip("-n", host.ns, "link", "set", host.inner, "up")
            ip("-n", host.ns, "link", "set", "lo", "up")

    def forget_neighbour(self, host: Host) -> None:
        """Drop the root namespace's ARP entry for `host`, so the next
        connection must resolve it again (and fails at once if it cannot)."""
        ip("neigh", "flush", "to", host.address, "dev", self.bridge, check=False)

    def close(self) -> None:
        for host in self.hosts:
            # Only processes inside our own namespaces, by pid.
            pids = ip("netns", "pids", host.ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            # Deleting the namespace deletes its veth end, and so the pair.
            ip("netns", "del", host.ns, check=False)
            ip("link", "del", host.outer, check=False)
        if self._made_bridge:
            ip("link", "del", self.bridge, check=False)

    def leftovers(self) -> list[str]:
        """Anything of ours still present (for a check after close)."""
        names = ip("netns", "list").stdout + ip("-o", "link", "show").stdout
        return sorted(
            {word for word in names.replace(":", " ").replace("@", " ").split() if self.tag in word}
        )


def in_netns(runner, host: Host):
    """A copy of a pyz runner (tests/conftest.py `Pyz`) whose commands run
    inside `host`'s namespace."""
    base = type(runner)

    class NsPyz(base):  # type: ignore[misc, valid-type]
        def argv(self, *args: str) -> list[str]:
            return host.argv(*super().argv(*args))

    made = NsPyz(runner.path, runner.cache, runner.root)
    made.host = host
    return made
