"""The simulator's call templates: package data (call_templates.json) that
gen_templates.py builds from the recorded FreeSWITCH calls, shipped in the
wheel and loaded through importlib.resources."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest

from support.golden import golden_dir
from opensips_fs.sim import calls, gen_templates

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]

TABLES = ("SETUP", "POST_ANSWER", "HANGUP_PARKED", "HANGUP_PARKED_ORIGINATION", "HANGUP_BY_B", "SHOW_ROWS")


def _packaged_text() -> str:
    return resources.files("opensips_fs.sim").joinpath("call_templates.json").read_text(encoding="utf-8")


def test_json_is_what_the_generator_builds_from_the_recordings():
    golden = golden_dir("freeswitch")  # in-repo recordings; a missing folder fails
    assert _packaged_text() == gen_templates.render(gen_templates.build(golden))


def test_one_event_per_line_and_every_table_loaded():
    text = _packaged_text()
    data = json.loads(text)
    assert set(TABLES) <= set(data)
    events = [event for name in TABLES[:-1] for event in data[name]]
    one_line = [json.loads(line.strip().rstrip(",")) for line in text.splitlines() if line.startswith("    [")]
    assert one_line == events  # each event is one line of the file
    assert [len(data[name]) for name in TABLES[:-1]] == [
        len(calls.SETUP), len(calls.POST_ANSWER), len(calls.HANGUP_PARKED),
        len(calls.HANGUP_PARKED_ORIGINATION), len(calls.HANGUP_BY_B)]
    assert calls.SHOW_ROWS == data["SHOW_ROWS"] and set(data["SHOW_ROWS"]) == {"calls", "channels"}
    leg, name, calling, variants = calls.SETUP[0]
    assert (leg, name, calling) == ("A", "CHANNEL_OUTGOING",
                                    ("switch_core_session.c", "switch_core_session_outgoing_channel", 768))


def test_wheel_ships_the_templates(tmp_path):
    """A non-editable install gets the JSON file (setup.cfg package_data)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "setup.cfg"):
        shutil.copy(ROOT / name, src / name)
    (src / "README.md").write_text("x\n")  # long_description; not what is tested here
    shutil.copytree(ROOT / "opensips_fs", src / "opensips_fs",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, timeout=50)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = zf.read("opensips_fs/sim/call_templates.json").decode("utf-8")
    assert shipped == _packaged_text()
