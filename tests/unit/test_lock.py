"""The lock (requirements.lock) is what runs: every package it names for this platform is
installed at exactly its version, and it still satisfies what pyproject.toml asks for (a
range changed without `make lock` fails here, not on a user's machine)."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"


def locked() -> dict[str, str]:
    """name -> version of every lock entry whose marker holds here."""
    pins: dict[str, str] = {}
    for raw in LOCK.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "--")) or raw[0].isspace():
            continue  # comments, options, and the hash lines under each entry
        requirement, _, marker = line.removesuffix("\\").partition(";")
        name, _, version = requirement.strip().partition("==")
        assert version, f"not pinned with ==: {line!r}"
        if marker.strip() and not Marker(marker.strip()).evaluate():
            continue
        pins[canonicalize_name(name)] = version.strip()
    return pins


def test_every_entry_is_pinned_with_hashes() -> None:
    text = LOCK.read_text()
    entries = [line for line in text.splitlines() if line and line[0].isalnum()]
    hashes = text.count("--hash=sha256:")
    assert len(entries) > 50
    assert hashes >= len(entries)
    assert all("==" in line for line in entries)


def test_the_environment_is_the_lock() -> None:
    pins = locked()
    assert "moto" in pins
    assert "aiobotocore" in pins
    wrong = {}
    for name, version in pins.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != version:
            wrong[name] = f"locked {version}, installed {installed}"
    assert not wrong, f"the environment is not the lock (run `make install`): {wrong}"


def test_the_lock_satisfies_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"],
              *(r for extra in ("local", "dev") for r in project["optional-dependencies"][extra])]
    pins = locked()
    stale = []
    for text in wanted:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name == "fleetline":
            continue  # the project's own extras
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = pins.get(name)
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            stale.append(f"{text} (locked: {version})")
    assert not stale, f"pyproject.toml asks for what the lock lacks (run `make lock`): {stale}"
