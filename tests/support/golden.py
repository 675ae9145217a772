"""Where the golden transcripts are: the one lookup every test uses.

The recordings are test data inside the repository, in ``tests/golden/``
(its README says what each folder was recorded from). Nothing outside the
repository is looked at. They ship with every clone, so a missing file is a
broken checkout: the test that needs it fails, it is never skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1] / "golden"


def missing(reason: str) -> NoReturn:
    """Fail the test (or the module, at collection) that needs a recording."""
    pytest.fail(f"{reason} — the recordings are part of the repository (tests/golden/)", pytrace=False)


def golden_dir(kind: str) -> Path:
    """``tests/golden/<kind>`` (``"opensips"`` or ``"freeswitch"``).

    Called at import time by modules that parametrize over the recordings,
    or inside a test.
    """
    path = ROOT / kind
    if not path.is_dir():
        missing(f"golden transcripts not found: {path} is not a directory")
    return path


def load(kind: str, name: str) -> dict:
    """One recorded transcript, e.g. ``load("opensips", "mi_core_commands.json")``."""
    return json.loads((golden_dir(kind) / name).read_text())
