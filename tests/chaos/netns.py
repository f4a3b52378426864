"""A network namespace joined to this one by a veth pair, for network faults aimed at one node.

    root namespace                               namespace <name>
    lo: 10.78.<n>.1 (Redis), .10, .11 (nodes)     cyv<n>b: 10.77.<n>.2 (the node under test)
    cyv<n>a: 10.77.<n>.254  <------ veth ------>  default route via 10.77.<n>.254

The other nodes' addresses live on lo, not on the veth, so cutting the link (`partition`: the
namespace's end goes down) cuts only the node inside. `shape` rate-limits the link with tbf
(a slow, congested link). `lossy` drops a share of the packets to and from some ports (nftables:
a `netdev` table on each end's ingress, so a drop is silent, as on a real lossy link, rather than
an EPERM to the sender as an output-hook drop would be) and, where the kernel has sch_netem, adds
a delay on the link (`netem_available`; many kernels, this CI machine's among them, lack it: no
delay is added there, and the fault's description says so). Needs root, `ip`, `tc` and, for
loss, `nft`.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess

_indices = itertools.count(os.getpid() % 200 + 20)


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip", *(("netns", "exec", netns, "ip") if netns else ()), *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def supported() -> str | None:
    """None when namespaces and veth pairs can be made here, else why not."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
        return "network namespaces need root, ip and tc"
    probe = f"cyprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class Namespace:
    def __init__(self) -> None:
        n = next(_indices)
        self.name = f"cynode-chaos-{os.getpid()}-{n}"
        self.outer, self.inner = f"cyv{n}a", f"cyv{n}b"
        self.inside = f"10.77.{n}.2"  # the node in the namespace
        self.redis_host = f"10.78.{n}.1"
        self._outside = (f"10.78.{n}.{i}" for i in itertools.count(10))
        self._lo: list[str] = [self.redis_host]
        self._gateway = f"10.77.{n}.254"
        self._table = f"cynode_chaos_{n}"  # nft tables are per namespace; the root one must not clash

    @property
    def launcher(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.name)

    def outside_host(self) -> str:
        """A fresh address for a node outside the namespace (on lo)."""
        host = next(self._outside)
        _ip("addr", "add", f"{host}/32", "dev", "lo")
        self._lo.append(host)
        return host

    def create(self) -> "Namespace":
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        _ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        _ip("link", "set", self.inner, "netns", self.name)
        _ip("addr", "add", f"{self._gateway}/24", "dev", self.outer)
        _ip("link", "set", self.outer, "up")
        _ip("addr", "add", f"{self.redis_host}/32", "dev", "lo")
        _ip("addr", "add", f"{self.inside}/24", "dev", self.inner, netns=self.name)
        _ip("link", "set", self.inner, "up", netns=self.name)
        _ip("link", "set", "lo", "up", netns=self.name)
        _ip("route", "add", "default", "via", self._gateway, netns=self.name)
        return self

    def partition(self) -> None:
        _ip("link", "set", self.inner, "down", netns=self.name)

    def heal(self) -> None:
        _ip("link", "set", self.inner, "up", netns=self.name)
        _ip("route", "replace", "default", "via", self._gateway, netns=self.name)

    def _tc(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["tc", "qdisc", *args], capture_output=True, text=True)

    def shape(self, rate: str = "2mbit", latency: str = "100ms") -> None:
        """Both directions through a token bucket of `rate`: a slow link that queues under load."""
        for dev, ns in ((self.outer, None), (self.inner, self.name)):
            cmd = ["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", "16kb", "latency", latency]
            subprocess.run(["ip", "netns", "exec", ns, *cmd] if ns else cmd, check=True, capture_output=True)

    def unshape(self) -> None:
        for dev, ns in ((self.outer, None), (self.inner, self.name)):
            cmd = ["tc", "qdisc", "del", "dev", dev, "root"]
            subprocess.run(["ip", "netns", "exec", ns, *cmd] if ns else cmd, capture_output=True)

    def netem_available(self) -> bool:
        done = self._tc("add", "dev", self.outer, "root", "netem", "delay", "1ms")
        if done.returncode == 0:
            self._tc("del", "dev", self.outer, "root")
        return done.returncode == 0

    @staticmethod
    def nft_available() -> bool:
        return shutil.which("nft") is not None

    def _nft(self, script: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [*(("ip", "netns", "exec", netns) if netns else ()), "nft", "-f", "-"]
        done = subprocess.run(cmd, input=script, capture_output=True, text=True)
        if check and done.returncode:
            raise RuntimeError(f"nft failed: {done.stderr.strip()}\n{script}")
        return done

    def lossy(self, percent: float, ports: set[int], delay: str = "20ms") -> str:
        """Drop `percent` % of the TCP and UDP packets, each direction, whose source or destination
        port is one of `ports` (nft), and delay everything on the link by `delay` where netem
        exists. Returns what was done, for the fault's description. `clear` undoes it."""
        if not ports:
            raise ValueError("lossy needs the ports to drop packets on")
        if not self.nft_available():
            raise RuntimeError("packet loss needs nft (apt-get install nftables)")
        threshold = int(round(percent * 100))  # numgen counts in 1/10000
        elements = ", ".join(str(p) for p in sorted(ports))
        for dev, ns in ((self.outer, None), (self.inner, self.name)):
            self._nft(f"""
table netdev {self._table} {{
  set ports {{
    type inet_service
    elements = {{ {elements} }}
  }}
  chain lossy {{
    numgen random mod 10000 < {threshold} counter drop
  }}
  chain ingress {{
    type filter hook ingress device {dev} priority 0; policy accept;
    meta l4proto {{ tcp, udp }} th dport @ports goto lossy
    meta l4proto {{ tcp, udp }} th sport @ports goto lossy
  }}
}}
""", netns=ns)
        what = f"{percent:g}% loss each way on ports {elements} (nft)"
        if self.netem_available():
            for dev, ns in ((self.outer, None), (self.inner, self.name)):
                cmd = ["tc", "qdisc", "replace", "dev", dev, "root", "netem", "delay", delay]
                subprocess.run(["ip", "netns", "exec", ns, *cmd] if ns else cmd, check=True, capture_output=True)
            return f"{what}, {delay} delay on the link (netem)"
        return f"{what}, no added delay (this kernel has no sch_netem)"

    def dropped(self) -> int:
        """Packets `lossy` dropped so far, both ends together."""
        total = 0
        for ns in (None, self.name):
            done = self._nft(f"list chain netdev {self._table} lossy", netns=ns, check=False)
            for word, after in zip(done.stdout.split(), done.stdout.split()[1:]):
                if word == "packets":
                    total += int(after)
        return total

    def clear(self) -> None:
        """Undo `lossy` and `shape`."""
        for ns in (None, self.name):
            self._nft(f"delete table netdev {self._table}", netns=ns, check=False)
        self.unshape()

    def destroy(self) -> None:
        self._nft(f"delete table netdev {self._table}", check=False)  # outlives its device otherwise
        _ip("link", "del", self.outer, check=False)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        for host in self._lo:
            _ip("addr", "del", f"{host}/32", "dev", "lo", check=False)
