"""The embedded AWS emulator: moto server, with the fixes that fill its gaps and make it fast
enough to run the stack on one machine. Everything that knows moto's internals is here.

- `Emulator` runs `python -m shared.emulator` in a child process on loopback;
  `configure_endpoint` applies the settings a moto server needs; `read_fixes` asks a running
  emulator which fixes it applied (`FixReport`);
- `fixes/` holds one module per fix, each naming the moto versions it was verified with.
  A fix that fills a gap and does not apply to the installed moto stops the emulator with
  one line (`UnverifiedEmulatorError`); a speed fix is left out and reported once.

Importing this package does not import moto (the parent process never needs it).
"""

from shared.emulator._fixes import FixKind, FixReport, UnverifiedEmulatorError
from shared.emulator._process import (
    Emulator,
    EmulatorError,
    configure_endpoint,
    free_port,
    port_in_use,
    read_fixes,
)

__all__ = [
    "Emulator",
    "EmulatorError",
    "FixKind",
    "FixReport",
    "UnverifiedEmulatorError",
    "configure_endpoint",
    "free_port",
    "port_in_use",
    "read_fixes",
]
