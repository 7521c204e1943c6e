"""Time to READY of `fleetline up` on the real template (issue 2's goal: under 30 s).

    .venv/bin/python bench/up_bench.py [--runs 3] [--no-workers] [--zones eu,us]

Each run starts `fleetline up --detach` (with `--zones`: one stack per zone, docs/zones.md) on
a fresh state directory and a free port (so a fresh embedded emulator), waits for its READY
line, records the wall time and the resident memory of every process it started (read from
/proc right after READY), then `fleetline down`. Prints a table: seconds to READY and RSS per
run, min / median / max, and the machine's load average at the start of each run (the
emulator and the local processes share the same 2 cores as whatever else runs, so a loaded
machine reads slower; compare runs on a quiet machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]


def _fleetline(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    env.setdefault("AWS_ACCESS_KEY_ID", "testing")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        cwd=ROOT, env=env, text=True, capture_output=True, timeout=timeout, check=False,
    )


def _rss_mb(pids: list[int]) -> float:
    """Resident memory of `pids` (Linux /proc; 0 for a process gone or elsewhere)."""
    total_kb = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total_kb += next((int(line.split()[1]) for line in status.splitlines()
                          if line.startswith("VmRSS:")), 0)
    return total_kb / 1024


def one_run(workers: bool, zones: str | None) -> tuple[float, int, float]:
    """(seconds to READY, processes, their RSS in MB)."""
    with tempfile.TemporaryDirectory(prefix="fleetline-up-bench-") as state_dir:
        started = time.monotonic()
        done = _fleetline(
            "up", "--detach", "--state-dir", state_dir,
            "--workers" if workers else "--no-workers",
            *(["--zones", zones] if zones else []), timeout=300,
        )
        elapsed = time.monotonic() - started
        try:
            if done.returncode != 0 or "READY " not in done.stdout:
                raise SystemExit(f"fleetline up failed: {done.stderr.strip()[-500:]}")
            state = json.loads((Path(state_dir) / "state.json").read_text())
            pids = [int(c["pid"]) for c in state.get("children", [])]
            return elapsed, len(pids), _rss_mb([state["supervisor_pid"], *pids])
        finally:
            _fleetline("down", "--state-dir", state_dir, timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-workers", action="store_true")
    parser.add_argument("--zones", help="e.g. eu,us: one stack per zone (docs/zones.md)")
    args = parser.parse_args()
    console = Console()
    table = Table(title="fleetline up on deploy/template.yaml"
                  + (f" --zones {args.zones}" if args.zones else "") + ": seconds to READY")
    table.add_column("run", justify="right")
    table.add_column("load avg (1 min) at start", justify="right")
    table.add_column("seconds to READY", justify="right")
    table.add_column("processes", justify="right")
    table.add_column("RSS MB", justify="right")
    times = []
    for run in range(1, args.runs + 1):
        load = os.getloadavg()[0]
        seconds, processes, rss = one_run(workers=not args.no_workers, zones=args.zones)
        times.append(seconds)
        table.add_row(str(run), f"{load:.2f}", f"{seconds:.1f}", str(processes), f"{rss:.0f}")
    table.add_row("min / median / max", "", " / ".join(
        f"{v:.1f}" for v in (min(times), statistics.median(times), max(times))), "", "")
    console.print(table)
    console.print(f"goal: < 30 s; met by the median: {statistics.median(times) < 30}")


if __name__ == "__main__":
    main()
