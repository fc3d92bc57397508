"""The image's build copies every package the project installs.

``pip install /tmp/src`` in the Dockerfile installs what ``[tool.setuptools.packages.find]`` finds in
the copied sources; a package left out of the COPY lines is silently missing from the image, and the
archive fails when it first imports it (the web viewer's static files once: every worker died at
start). The image cannot be built here (no registry to pull the base image from), so the COPY lines
are checked against the project's own package list.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _copied() -> set[str]:
    """Sources the Dockerfile copies into /tmp/src (the folder it installs from)."""
    copied: set[str] = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        match = re.match(r"COPY\s+(?!--)(.+)\s+/tmp/src/\S*$", line.strip())
        if match:
            copied.update(match.group(1).split())
    return copied


def test_every_installed_package_is_copied_into_the_image() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    # As setuptools' find: folders with an __init__.py whose name an include pattern matches.
    top_level = {
        folder.name
        for folder in ROOT.iterdir()
        if (folder / "__init__.py").is_file() and any(fnmatch.fnmatch(folder.name, p) for p in include)
    }
    assert {"pacs", "storage", "dicom_nodes", "api", "viewer"} <= top_level
    copied = _copied()
    assert top_level - copied == set(), "packages pip would not find in the image"
    assert {"pyproject.toml", "README.md"} <= copied  # the build reads both
