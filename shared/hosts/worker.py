"""`python -m shared.hosts.worker module:attr`: run a `shared.hosts.Worker` (see
`shared.hosts._worker` for what it does on start, on SIGTERM and at exit)."""

import sys

from shared.hosts._worker import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
