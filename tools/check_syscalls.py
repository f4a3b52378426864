"""Would the unit's SystemCallFilter let this workload run? Compare what a run used with what it allows.

systemd is not PID 1 on the development machines, so the seccomp filter of packaging/cynode.service
cannot be tried for real there. This checks the next best thing: every system call a real run made
(recorded with `strace -f -c`, children included: vLLM's engine core, torch's threads) against the
calls the unit's `SystemCallFilter=` lines allow, expanded with `systemd-analyze syscall-filter`.

    strace -f -c -o /tmp/calls.txt -- cynode run -c node.toml    # serve a request, then SIGTERM it
    python tools/check_syscalls.py packaging/cynode.service /tmp/calls.txt

Exit status 1 when a call the run made would be refused (EPERM under SystemCallErrorNumber=EPERM).
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path


@functools.cache
def expand(group: str) -> frozenset[str]:
    """The system calls in a systemd set (`@system-service`), nested sets included."""
    if not group.startswith("@"):
        return frozenset({group})
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", group], capture_output=True, text=True,
                         check=True).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        names |= expand(word) if word.startswith("@") else {word}
    return frozenset(names)


def allowed(unit: Path) -> frozenset[str]:
    allow: set[str] = set()
    deny: set[str] = set()
    for line in unit.read_text().splitlines():
        if not line.startswith("SystemCallFilter="):
            continue
        value = line.split("=", 1)[1].strip()
        target = deny if value.startswith("~") else allow
        for word in value.lstrip("~").split():
            target |= expand(word)
    return frozenset(allow - deny)


def used(summary: Path) -> dict[str, int]:
    """Syscall → calls, from an `strace -c` table."""
    calls = {}
    for line in summary.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and re.fullmatch(r"[\d.]+", fields[0]) and fields[-1] != "total":
            calls[fields[-1]] = int(fields[3])
    return calls


def main(argv: list[str]) -> int:
    unit, summary = Path(argv[0]), Path(argv[1])
    calls, ok = used(summary), allowed(unit)
    refused = {name: n for name, n in calls.items() if name not in ok}
    print(f"{len(calls)} distinct system calls used, {sum(calls.values())} calls; the unit allows {len(ok)}")
    for name, n in sorted(refused.items()):
        print(f"  refused: {name} ({n} calls)")
    print("every call is allowed" if not refused else f"{len(refused)} call(s) would fail with EPERM")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
