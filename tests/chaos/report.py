"""`make report`: the chaos scenarios' records (the JSON files CHAOS_OUT collects) as a Markdown
report with PNG plots, one section per scenario, each figure beside its numbers:

- latency over time: every request as a point at its arrival (seconds since the run began) against
  its end-to-end latency, failures in red, each fault a vertical line (and its healing a dashed one);
- throughput: answers completed per second over the same axis;
- the failover-time distribution over every scenario that measured recovery.

    python tests/chaos/report.py <records folder> <report folder> [--command "..."]

Prints the report's path. The command that produced the records goes into the report.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def load(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def _origin(run: dict) -> float:
    starts = [r["start"] for r in run["records"]] + [f["at"] for f in run["faults"]]
    return min(starts) if starts else 0.0


def _marks(ax, run: dict, t0: float) -> None:
    for i, fault in enumerate(run["faults"]):
        ax.axvline(fault["at"] - t0, color="tab:red", lw=1.2, label="fault" if i == 0 else None)
        if fault.get("healed"):
            ax.axvline(fault["healed"] - t0, color="tab:green", lw=1.0, ls="--", label="healed" if i == 0 else None)


def latency_plot(name: str, run: dict, out: Path) -> Path:
    t0 = _origin(run)
    ok = [r for r in run["records"] if r["status"] == 200 and not r["error"] and r["end"] is not None]
    bad = [r for r in run["records"] if r not in ok]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.scatter([r["start"] - t0 for r in ok], [r["end"] - r["start"] for r in ok], s=8, label="answered")
    if bad:
        ax.scatter([r["start"] - t0 for r in bad], [((r["end"] or r["start"]) - r["start"]) for r in bad], s=14,
                   color="tab:red", marker="x", label="failed")
    _marks(ax, run, t0)
    ax.set_xlabel("arrival (s since the run began)")
    ax.set_ylabel("latency (s)")
    ax.set_title(f"{name}: latency over time")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path = out / f"{name}-latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def throughput_plot(name: str, run: dict, out: Path) -> Path:
    t0 = _origin(run)
    ends = [r["end"] - t0 for r in run["records"] if r["status"] == 200 and not r["error"] and r["end"] is not None]
    fig, ax = plt.subplots(figsize=(8, 2.4))
    if ends:
        ax.hist(ends, bins=range(0, int(max(ends)) + 2), color="tab:blue")
    _marks(ax, run, t0)
    ax.set_xlabel("s since the run began")
    ax.set_ylabel("answers / s")
    ax.set_title(f"{name}: throughput")
    fig.tight_layout()
    path = out / f"{name}-throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def recovery_plot(runs: dict[str, dict], out: Path) -> Path | None:
    values = [(name, r) for name, run in runs.items() for r in run["summary"].get("recovery_s", []) if r is not None]
    if not values:
        return None
    fig, ax = plt.subplots(figsize=(8, max(2.0, 0.5 + 0.35 * len(runs))))  # room for the labels with one run
    names = sorted({n for n, _ in values})
    ax.scatter([r for _, r in values], [names.index(n) for n, _ in values], s=30)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("recovery: fault to the first token of the first request sent after it (s)")
    ax.set_title("failover / recovery time, every fault")
    fig.tight_layout()
    path = out / "recovery.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


_COLUMNS = ("requests", "ok", "lost", "run_twice", "wrong", "client_failures", "recovery_s", "p99_during_s", "p99_baseline_s")


def write(runs: dict[str, dict], out: Path, command: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# cynode chaos report", "", f"Produced by: `{command}`", "",
             "Each scenario: real daemons, open-loop Poisson load, the faults marked on the plots "
             "(red: injected, green dashed: healed). Invariants: lost, run twice and wrong must be 0.", "",
             "| scenario | " + " | ".join(_COLUMNS) + " |", "|" + "---|" * (len(_COLUMNS) + 1)]
    for name, run in runs.items():
        lines.append(f"| [{name}](#{name}) | " + " | ".join(str(run["summary"].get(c, "")) for c in _COLUMNS) + " |")
    recovery = recovery_plot(runs, out)
    if recovery:
        lines += ["", "## Recovery times", "", f"![recovery]({recovery.name})"]
    for name, run in runs.items():
        faults = ", ".join(f["kind"] for f in run["faults"]) or "none"
        lines += ["", f"## {name}", "", f"Faults: {faults}.", "",
                  "```", json.dumps(run["summary"], default=str), "```", "",
                  f"![latency]({latency_plot(name, run, out).name})", "",
                  f"![throughput]({throughput_plot(name, run, out).name})"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("records", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--command", default="make report")
    args = parser.parse_args()
    runs = load(args.records)
    if not runs:
        print(f"no scenario records in {args.records} (run the chaos tests with CHAOS_OUT={args.records})", file=sys.stderr)
        return 1
    print(write(runs, args.out, args.command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
