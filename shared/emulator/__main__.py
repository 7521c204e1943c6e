"""`python -m shared.emulator [-H HOST] [-p PORT]`: the emulator's server (see `_server`).
`python -m shared.emulator fingerprints`: each fix's fingerprint of the installed moto, to
record in the fix's `verified` once the whole suite has passed on that version."""

from __future__ import annotations

import argparse
import os
import sys


def _fingerprints() -> int:
    from shared.emulator._fixes import decide, fingerprint, moto_version
    from shared.emulator.fixes import ALL

    version = moto_version()
    for fix in ALL:
        found = fingerprint(fix.checks)
        reason = decide(fix, version, found)
        print(f"{fix.name:22} {fix.kind:5}  {version}: {found!r}  "
              + ("verified" if reason is None else reason))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fingerprints"]:
        return _fingerprints()
    parser = argparse.ArgumentParser(prog="python -m shared.emulator")
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=int(os.environ.get("MOTO_PORT", 5000)))
    args = parser.parse_args(argv)
    from shared.emulator._server import main as serve

    return serve(args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
