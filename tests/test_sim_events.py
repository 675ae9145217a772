"""Event serialisation of the simulator (docs/protocols/esl.md §6.2-6.4), bytes only."""

import json

from opensips_fs.sim.events import Event, Identity, date_headers, is_event_name, url_encode


def test_url_encode_matches_recorded_values():
    # values and their encodings recorded from FreeSWITCH (golden 12_event_plain)
    assert url_encode("a b  c") == "a%20b%20%20c"
    assert url_encode("héllo ☃") == "h%C3%A9llo%20%E2%98%83"
    assert url_encode("100% & a=b;c+d/e?f#g\"'<x>") == "100%25%20%26%20a%3Db%3Bc%2Bd/e%3Ff%23g%22'%3Cx%3E"
    assert url_encode("50%41 %4a %zz %") == "50%41%20%254a%20%25zz%20%25"
    assert url_encode("a\tb") == "a%09b"
    assert url_encode("{a}[b]|c\\d^e`f~g@h!i*j(k)l$m,n") == "%7Ba%7D%5Bb%5D%7Cc%5Cd%5Ee%60f~g%40h!i*j(k)l$m,n"
    assert url_encode("fd00::2") == "fd00%3A%3A2"
    assert url_encode("plain-value_1.2") == "plain-value_1.2"


def test_json_frame_compact_strings_and_body():
    ev = Event("CUSTOM", [("Event-Name", "CUSTOM"), ("Quote", 'a"b\\c/d'), ("Ctl", "\x01"),
                          ("Uni", "café"), ("Content-Length", "5")], body="hello\n")
    frame = ev.frame("json")
    head, _, body = frame.partition(b"\n\n")
    assert head == b"Content-Length: %d\nContent-Type: text/event-json" % len(body)
    assert body == ('{"Event-Name":"CUSTOM","Quote":"a\\"b\\\\c/d","Ctl":"\\u0001","Uni":"café",'
                    '"Content-Length":"5","Content-Length":"6","_body":"hello\\n"}').encode()
    assert json.loads(body)["_body"] == "hello\n"


def test_plain_frame_nested_body_and_empty_values():
    ev = Event("CUSTOM", [("Event-Name", "CUSTOM"), ("X-Empty", ""), ("X", "a b")], body="é")
    frame = ev.frame("plain")
    body = b"Event-Name: CUSTOM\nX: a%20b\nContent-Length: 2\n\n\xc3\xa9"
    assert frame == b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(body) + body
    no_body = Event("HEARTBEAT", [("Event-Name", "HEARTBEAT")]).frame("plain")
    assert no_body.endswith(b"Event-Name: HEARTBEAT\n\n")


def test_xml_frame():
    ev = Event("HEARTBEAT", [("Event-Name", "HEARTBEAT"), ("Event-Info", "System Ready")])
    body = ev.frame("xml").partition(b"\n\n")[2]
    assert body == (b"<event>\n  <headers>\n    <Event-Name>HEARTBEAT</Event-Name>\n"
                    b"    <Event-Info>System%20Ready</Event-Info>\n  </headers>\n</event>\n")


def test_frames_are_cached_per_format():
    ev = Event("API", [("Event-Name", "API")])
    assert ev.frame("json") is ev.frame("json")


def test_event_names_case_insensitive():
    assert is_event_name("heartbeat") == "HEARTBEAT"
    assert is_event_name("all") == "ALL"
    assert is_event_name("NOT_A_REAL_EVENT") is None


def test_common_block_order_and_dates():
    ident = Identity(hostname="fakefs", core_uuid="2a1b4c3d-0000-4000-8000-00000000c0de")
    block = ident.common("HEARTBEAT", 1795693969.498272, 998, ("switch_core.c", "send_heartbeat", 95))
    assert [k for k, _ in block] == [
        "Event-Name", "Core-UUID", "FreeSWITCH-Hostname", "FreeSWITCH-Switchname", "FreeSWITCH-IPv4",
        "FreeSWITCH-IPv6", "Event-Date-Local", "Event-Date-GMT", "Event-Date-Timestamp",
        "Event-Calling-File", "Event-Calling-Function", "Event-Calling-Line-Number", "Event-Sequence"]
    values = dict(block)
    assert values["FreeSWITCH-Switchname"] == "fakefs" and values["Event-Sequence"] == "998"
    assert dict(date_headers(1795693969.498272))["Event-Date-GMT"] == "Thu, 26 Nov 2026 11:52:49 GMT"
    assert dict(date_headers(1795693969.498272))["Event-Date-Timestamp"] == "1795693969498272"


def test_xml_frame_with_body():
    ev = Event("CUSTOM", [("Event-Name", "CUSTOM")], body="a<b & c")
    body = ev.frame("xml").partition(b"\n\n")[2]
    assert body == (b"<event>\n  <headers>\n    <Event-Name>CUSTOM</Event-Name>\n  </headers>\n"
                    b"  <Content-Length>7</Content-Length>\n  <body>a&lt;b &amp; c</body>\n</event>\n")
