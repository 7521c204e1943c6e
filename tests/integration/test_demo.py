"""`fleetline demo --exit` as `make demo` runs it: the real template on a fresh emulator,
every process of the stack, every demo step (buses, devices, firmware, orders). The firmware
step rolls a good version out in three waves and a bad one that aborts and rolls back, so
this is also the end-to-end run of the firmware path on the template: simulator -> IoT Jobs
-> telemetry -> devices events -> the acks rule's Kinesis target -> the acks worker, and the
rollout workflow's Distributed Map waves in the map-runs process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.emulator, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_runs_every_step_and_each_shows_what_it_set_out_to(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    env["FLEETLINE_STATE_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "shared.cli", "demo", "--exit", "--state-dir", str(tmp_path)],
        cwd=ROOT, env=env, text=True, capture_output=True, timeout=300, check=False)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert re.search(r"rollout r-\S+ of 9\.1\.0 to tenant t-001: SUCCEEDED in 3 waves", out), out
    assert re.search(r"rollout r-\S+ of 9\.9\.9 to tenant t-002: ROLLED_BACK", out), out
    assert re.search(r"\(c-demo\): CONFIRMED", out), out
    assert re.search(r"\(decline-demo\): CANCELLED \(PaymentDeclined\)", out), out
    assert "t-001: 100 devices in the read model" in out
