"""Where the golden transcripts are: the one lookup every test uses.

The recordings live in the shared folder, outside the repository. Looked up
in this order:

1. the directory named by the environment variable ``OPENSIPS_FS_GOLDEN``
   (when set, it is the only place looked at: a wrong value is reported,
   not silently replaced by another copy);
2. ``<repo>/../shared/golden`` (a clone with a copy of shared/ beside it,
   as in CI);
3. ``/work/shared/golden`` (the development machine).

When the transcripts cannot be found, the tests that need them are skipped
with the reason — except when the environment says ``CI=true``: there they
fail, so that CI can never pass by skipping the golden replays.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NoReturn

import pytest

ENV_VAR = "OPENSIPS_FS_GOLDEN"
REPO = Path(__file__).resolve().parents[1]
CANDIDATES = (REPO.parent / "shared" / "golden", Path("/work/shared/golden"))


def _locate() -> tuple[Path | None, str]:
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        path = Path(explicit)
        if path.is_dir():
            return path, ""
        return None, f"${ENV_VAR}={explicit} is not a directory"
    for path in CANDIDATES:
        if path.is_dir():
            return path, ""
    looked = ", ".join(str(p) for p in CANDIDATES)
    return None, f"golden transcripts not found (set ${ENV_VAR}; looked in {looked})"


ROOT, WHY_MISSING = _locate()


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def missing(reason: str) -> NoReturn:
    """Skip (locally) or fail (under CI=true) the test or module that needs them."""
    if in_ci():
        pytest.fail(f"{reason} — CI=true: the golden replays must run, not be skipped", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def golden_dir(kind: str) -> Path:
    """``golden/<kind>`` (``"opensips"`` or ``"freeswitch"``).

    Called at import time by modules that parametrize over the recordings,
    or inside a test; either way a missing directory skips (or, in CI, fails).
    """
    if ROOT is None:
        missing(WHY_MISSING)
    path = ROOT / kind
    if not path.is_dir():
        missing(f"golden transcripts not found: {path} is not a directory")
    return path


def load(kind: str, name: str) -> dict:
    """One recorded transcript, e.g. ``load("opensips", "mi_core_commands.json")``."""
    return json.loads((golden_dir(kind) / name).read_text())
