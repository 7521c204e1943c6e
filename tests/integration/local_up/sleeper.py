"""A stand-in ECS worker for the `fleetline up` tests: runs until SIGTERM, then exits 0
after a short drain, like a real worker."""

from __future__ import annotations

import os
import signal
import sys
import time

stopping = False


def _stop(signum: int, frame: object) -> None:
    global stopping
    stopping = True


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop)
    print(f"sleeper up, queue={os.environ.get('FLEETLINE_WORK_QUEUE')}", flush=True)
    while not stopping:
        time.sleep(0.05)
    print("sleeper drained", flush=True)
    sys.exit(0)
