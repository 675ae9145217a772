"""Build ``call_templates.py`` from the real FreeSWITCH recordings.

    python opensips_fs/sim/gen_templates.py ../shared/golden/freeswitch

The channel events of a recorded loopback call (40_originate_loopback: the
set-up and a ``hupall``; 41_originate_api_sync_plain: a call the B-leg hangs
up; 42_myevents: the A-leg's UNPARK/EXECUTE_COMPLETE) become templates: each
event keeps its exact header names, order and values, with the parts that
differ per call replaced by ``{PLACEHOLDERS}`` (leg uuids, extension, times,
durations, session ids, hangup cause) that ``calls.py`` fills in.
"""

from __future__ import annotations

import json
import pprint
import re
import sys
import urllib.parse
from pathlib import Path

OUT = Path(__file__).with_name("call_templates.py")

TIME_KEYS = {
    "Caller-Profile-Created-Time": "T_CREATED", "Caller-Channel-Created-Time": "T_CREATED",
    "variable_start_uepoch": "T_CREATED", "variable_profile_start_uepoch": "T_CREATED",
    "variable_start_epoch": "E_CREATED", "variable_profile_start_epoch": "E_CREATED",
    "variable_start_stamp": "S_CREATED", "variable_profile_start_stamp": "S_CREATED",
    "Caller-Channel-Answered-Time": "T_ANSWERED", "variable_answer_uepoch": "T_ANSWERED",
    "variable_answer_epoch": "E_ANSWERED", "variable_answer_stamp": "S_ANSWERED",
    "Caller-Channel-Hangup-Time": "T_HANGUP", "variable_end_uepoch": "T_HANGUP",
    "variable_end_epoch": "E_HANGUP", "variable_end_stamp": "S_HANGUP",
    "variable_duration": "DUR_S", "variable_billsec": "DUR_S", "variable_flow_billsec": "DUR_S",
    "variable_mduration": "DUR_MS", "variable_billmsec": "DUR_MS", "variable_flow_billmsec": "DUR_MS",
    "variable_uduration": "DUR_US", "variable_billusec": "DUR_US", "variable_flow_billusec": "DUR_US",
    "variable_session_id": "SESSION",
    "Hangup-Cause": "CAUSE", "variable_hangup_cause": "CAUSE",
    "variable_hangup_cause_q850": "Q850",
    "variable_current_application_data": None,
}
COMMON_END = "Event-Sequence"


def _events_json(path: Path):
    data = json.loads(path.read_text())
    out = []
    for f in data["frames"]:
        if "text/event-json" in f["header_block"]:
            out.append(json.loads(f["body"], object_pairs_hook=list))
    return out


def _events_plain(path: Path):
    data = json.loads(path.read_text())
    out = []
    for f in data["frames"]:
        if "text/event-plain" in f["header_block"]:
            head = f["body"].split("\n\n", 1)[0]
            out.append([(k, urllib.parse.unquote(v)) for k, v in
                        (line.split(": ", 1) for line in head.split("\n") if line)])
    return out


def _get(pairs, key):
    for k, v in pairs:
        if k == key:
            return v
    return None


def _template(pairs, uuids: dict, ext: str):
    """(name, calling, [(key, value-or-format)]) for one recorded event."""
    name = _get(pairs, "Event-Name")
    calling = (_get(pairs, "Event-Calling-File"), _get(pairs, "Event-Calling-Function"),
               int(_get(pairs, "Event-Calling-Line-Number")))
    keys = [k for k, _ in pairs]
    rest = pairs[keys.index(COMMON_END) + 1:]
    out = []
    for key, value in rest:
        slot = TIME_KEYS.get(key, "")
        if slot and value not in ("0", ""):
            out.append((key, "{%s}" % slot))
            continue
        text = value.replace("{", "{{").replace("}", "}}")
        for uuid, leg in uuids.items():
            text = text.replace(uuid, "{%s}" % leg)
        if ext in text:
            text = re.sub(r"(?<!\d)%s(?!\d)" % ext, "{EXT}", text)
        out.append((key, text))
    return name, calling, out


def _leg(pairs):
    channel = _get(pairs, "Channel-Name") or ""
    return "A" if channel.endswith("-a") else "B"


def build(golden: Path) -> dict:
    # 40: bgapi originate loopback/9664 &park, then hupall NORMAL_CLEARING
    ev40 = _events_json(golden / "40_originate_loopback.json")
    a40 = _get(next(e for e in ev40 if _get(e, "Channel-Name") == "loopback/9664-a"), "Unique-ID")
    b40 = _get(next(e for e in ev40 if _get(e, "Channel-Name") == "loopback/9664-b"), "Unique-ID")
    uuids40 = {a40: "A", b40: "B"}
    setup, post_answer, hangup = [], [], []
    phase = setup
    for e in ev40:
        name = _get(e, "Event-Name")
        if name == "BACKGROUND_JOB":
            phase = post_answer
            continue
        if name == "CHANNEL_HANGUP" and phase is post_answer:
            phase = hangup
        phase.append((_leg(e),) + _template(e, uuids40, "9664"))
    # 42: the A-leg of a parked call killed with uuid_kill (plain, via myevents)
    ev42 = _events_plain(golden / "42_myevents.json")
    a42 = _get(ev42[0], "Unique-ID")
    b42 = _get(ev42[0], "variable_other_loopback_leg_uuid")
    extra_a = {}
    orig_a = {}  # A-leg hangup events of a call originated with origination_uuid
    for e in ev42:
        name = _get(e, "Event-Name")
        item = ("A",) + _template(e, {a42: "A", b42: "B"}, "9664")
        if name in ("CHANNEL_UNPARK", "CHANNEL_EXECUTE_COMPLETE") and name not in extra_a:
            extra_a[name] = item
        orig_a.setdefault((name, _get(e, "Channel-State")), item)
    # 41: api originate loopback/9665 &park; the B-leg hangs up after 1 s
    ev41 = _events_plain(golden / "41_originate_api_sync_plain.json")
    a41 = _get(next(e for e in ev41 if _get(e, "Channel-Name") == "loopback/9665-a"), "Unique-ID")
    b41 = _get(next(e for e in ev41 if _get(e, "Channel-Name") == "loopback/9665-b"), "Unique-ID")
    by_b = {}
    for e in ev41:
        name = _get(e, "Event-Name")
        if name in ("CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE"):
            by_b[(_leg(e), name)] = (_leg(e),) + _template(e, {a41: "A", b41: "B"}, "9665")
    # hangup sequences: parked call (hupall/uuid_kill) and B-leg hang-up
    parked = []
    for item in hangup:
        parked.append(item)
        if item[0] == "A" and item[1] == "CHANNEL_HANGUP":
            parked += [extra_a["CHANNEL_UNPARK"], extra_a["CHANNEL_EXECUTE_COMPLETE"]]
    def pick(leg, name, state=None):
        for item in hangup:
            if item[0] == leg and item[1] == name and (state is None or ("Channel-State", state) in item[3]):
                return item
        raise KeyError((leg, name, state))

    def leg_end(leg, complete):
        return [pick(leg, "CHANNEL_STATE", "CS_HANGUP"), pick(leg, "CHANNEL_CALLSTATE"),
                pick(leg, "CHANNEL_STATE", "CS_REPORTING"), complete]

    destroy = [pick("B", "CHANNEL_DESTROY"), pick("B", "CHANNEL_STATE", "CS_DESTROY"),
               pick("A", "CHANNEL_DESTROY"), pick("A", "CHANNEL_STATE", "CS_DESTROY")]
    by_b_seq = ([by_b[("B", "CHANNEL_HANGUP")], by_b[("A", "CHANNEL_HANGUP")],
                 extra_a["CHANNEL_UNPARK"], extra_a["CHANNEL_EXECUTE_COMPLETE"]]
                + leg_end("B", by_b[("B", "CHANNEL_HANGUP_COMPLETE")])
                + leg_end("A", by_b[("A", "CHANNEL_HANGUP_COMPLETE")]) + destroy)
    # show calls / show channels rows while the call is up
    data40 = json.loads((golden / "40_originate_loopback.json").read_text())
    rows = {}
    for f, what in zip([f for f in data40["frames"] if f["header_block"].startswith("Content-Type: api/response")],
                       ("calls", "channels", None)):
        if what:
            body = json.loads(f["body"])
            rows[what] = [[(k, _template([("Event-Name", "x"), ("Event-Calling-File", ""),
                                          ("Event-Calling-Function", ""), ("Event-Calling-Line-Number", "0"),
                                          ("Event-Sequence", "0"), (k, v)], uuids40, "9664")[2][0][1])
                           for k, v in row.items()] for row in body["rows"]]
    parked_orig = [orig_a.get((item[1], dict(item[3]).get("Channel-State")), item) if item[0] == "A" else item
                   for item in parked]
    return {"SETUP": setup, "POST_ANSWER": post_answer, "HANGUP_PARKED": parked,
            "HANGUP_PARKED_ORIGINATION": parked_orig,
            "HANGUP_BY_B": by_b_seq, "SHOW_ROWS": rows}


def main(argv=None) -> int:
    argv = argv if argv is not None else sys.argv[1:]
    golden = Path(argv[0] if argv else Path(__file__).resolve().parents[3] / "shared/golden/freeswitch")
    tables = build(golden)
    lines = ['"""Channel-event templates of a loopback call, generated by gen_templates.py',
             "from the real FreeSWITCH 1.11 recordings (golden/freeswitch 40, 41, 42).",
             "Each event: (leg, Event-Name, (file, function, line), [(header, value-format)]).",
             'Do not edit by hand."""', ""]
    for name, value in tables.items():
        lines.append("%s = %s" % (name, pprint.pformat(value, width=110)))
        lines.append("")
    OUT.write_text("\n".join(lines))
    print("wrote %s" % OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
