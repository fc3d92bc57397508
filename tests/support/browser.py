"""The viewer's browser tests: Debian's chromium driven by Playwright, and the viewer's generated data.

* :func:`launch` starts headless chromium (``/usr/bin/chromium``; ``playwright install`` is not used).
* :func:`attribute_names` is what ``viewer/data/attributes.json`` must hold: the NDE names of
  ``pacs/diconde/attributes.csv`` and DICOM keywords from pydicom's dictionary, for the header view.
  Regenerate the file with ``python -m tests.support.browser names``.
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts" / "viewer"
ATTRIBUTES_JSON = Path(str(resources.files("viewer"))) / "data" / "attributes.json"


def launch(playwright: Any) -> Any:
    """Headless Debian chromium (a ``playwright.sync_api.Browser``)."""
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def screenshot(page: Any, name: str) -> Path:
    """Save a screenshot as a test artifact (tests/artifacts/viewer/NAME.png, git-ignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def attribute_names() -> dict[str, Any]:
    """The content of viewer/data/attributes.json, made from the archive's and pydicom's tables."""
    import pydicom
    from pydicom.datadict import DicomDictionary

    from pacs.diconde import indexed_attributes

    nde = {
        f"{attr.tag:08X}": {
            "keyword": attr.keyword,
            "name": attr.nde_name,
            "level": attr.level,
            "column": attr.column,
        }
        for level in indexed_attributes().values()
        for attr in level
    }
    keywords = {
        f"{tag:08X}": entry[4]
        for tag, entry in sorted(DicomDictionary.items())
        if entry[4] and not entry[3]  # a keyword, not retired
    }
    return {
        "source": "pacs/diconde/attributes.csv (nde) and the pydicom "
        f"{pydicom.__version__} data dictionary (keywords, not retired); "
        "regenerate with `python -m tests.support.browser names`",
        "nde": nde,
        "keywords": keywords,
    }


def write_attribute_names(path: Path = ATTRIBUTES_JSON) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(attribute_names(), indent=0, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:] != ["names"]:
        raise SystemExit("usage: python -m tests.support.browser names")
    write_attribute_names()
    print(f"wrote {ATTRIBUTES_JSON}")
