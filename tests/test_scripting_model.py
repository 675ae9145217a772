"""The scripting model without any network: entry order, event order,
duplicate and empty names, removal rules (docs/protocols/scripting.md §3-§5), DB row validation
(§6) and freeswitch_esl command normalisation (§7.2)."""

from typing import Any

import orjson
import pytest

from opensips_fs.db import BadRow, FsRow, row_subscription
from opensips_fs.mi.commands import MiError
from opensips_fs.scripting import SubscriptionSet, normalize_command

A, B = "127.0.0.1:8021", "127.0.0.1:8022"  # sockets are opaque to the model


def test_new_entries_and_new_events_are_prepended():
    s: SubscriptionSet[str] = SubscriptionSet()
    assert s.add(A, ["CHANNEL_STATE", "DTMF"]) == (True, ["CHANNEL_STATE", "DTMF"])
    assert s.as_list() == {"Sockets": [{"if": A, "Events": ["DTMF", "CHANNEL_STATE"]}]}
    assert s.add(A, ["TALK"]) == (False, ["TALK"])
    assert s.add(B, ["CHANNEL_HANGUP"]) == (True, ["CHANNEL_HANGUP"])
    assert s.as_list()["Sockets"] == [
        {"if": B, "Events": ["CHANNEL_HANGUP"]},
        {"if": A, "Events": ["TALK", "DTMF", "CHANNEL_STATE"]}]


def test_listing_is_kept_until_the_set_changes():
    """fs_list's answer is built once per change: every change renews it."""
    s: SubscriptionSet[str] = SubscriptionSet()
    s.add(A, ["DTMF"])
    first, first_json = s.as_list(), s.as_list_json()
    assert s.as_list() is first and s.as_list_json() is first_json
    assert orjson.dumps(first_json) == orjson.dumps(first)
    s.add(A, ["TALK"])
    assert s.as_list() == {"Sockets": [{"if": A, "Events": ["TALK", "DTMF"]}]}
    assert orjson.loads(orjson.dumps(s.as_list_json())) == s.as_list()
    s.remove(A, ["TALK"])
    assert s.as_list() == {"Sockets": [{"if": A, "Events": ["DTMF"]}]}
    other: SubscriptionSet[str] = SubscriptionSet()
    other.add(B, ["HEARTBEAT"])
    s.extend(other.entries)
    assert s.as_list()["Sockets"][-1] == {"if": B, "Events": ["HEARTBEAT"]}
    assert orjson.loads(orjson.dumps(s.as_list_json())) == s.as_list()


def test_duplicates_and_empty_names_are_skipped():
    s: SubscriptionSet[str] = SubscriptionSet()
    assert s.add(A, ["DTMF", "", "DTMF", "TALK"]) == (True, ["DTMF", "TALK"])
    assert s.add(A, ["TALK", "dtmf"]) == (False, ["dtmf"])  # case-sensitive, as OpenSIPS
    assert s.as_list()["Sockets"][0]["Events"] == ["dtmf", "TALK", "DTMF"]


def test_only_empty_names_still_create_an_entry():
    s: SubscriptionSet[str] = SubscriptionSet()
    assert s.add(A, [""]) == (True, [])
    assert s.as_list()["Sockets"] == [{"if": A, "Events": []}]


def test_remove_names_and_drop_the_entry_with_its_last_event():
    s: SubscriptionSet[str] = SubscriptionSet()
    s.add(A, ["CHANNEL_STATE", "DTMF", "TALK"])
    assert s.remove(A, ["DTMF", "NOT_SUBSCRIBED"]) == (False, ["DTMF"])
    assert s.remove(A, ["NOT_SUBSCRIBED"]) == (False, [])
    assert s.as_list()["Sockets"] == [{"if": A, "Events": ["TALK", "CHANNEL_STATE"]}]
    assert s.remove(A, ["TALK", "CHANNEL_STATE"]) == (True, ["TALK", "CHANNEL_STATE"])
    assert s.as_list() == {"Sockets": []}
    assert s.remove(A, ["TALK"]) == (False, [])


def test_an_entry_without_events_goes_with_any_non_empty_name():
    s: SubscriptionSet[str] = SubscriptionSet()
    s.add(A, [])
    assert s.remove(A, [""]) == (False, [])
    assert s.first(A) is not None
    assert s.remove(A, ["WHATEVER"]) == (True, [])
    assert s.first(A) is None


def test_mi_calls_touch_the_newest_entry_of_a_socket_only():
    s: SubscriptionSet[str] = SubscriptionSet()
    s.entries = []
    s.add(A, ["CHANNEL_CREATE", "DTMF"])
    s.add(B, ["CHANNEL_ANSWER"])
    # a second entry on socket A (duplicate DB row), newest first
    from opensips_fs.scripting import Entry
    s.entries.insert(0, Entry(A, ["CHANNEL_HANGUP", "DTMF"]))
    s.add(A, ["NOTALK"])
    s.remove(A, ["DTMF"])
    assert s.as_list()["Sockets"] == [
        {"if": A, "Events": ["NOTALK", "CHANNEL_HANGUP"]},
        {"if": B, "Events": ["CHANNEL_ANSWER"]},
        {"if": A, "Events": ["DTMF", "CHANNEL_CREATE"]}]
    assert s.sockets() == [A, B]


# ------------------------------------------------------------------ DB rows

def row(**kw):
    values: dict[str, Any] = dict(id=7, username=None, password="ClueCon", ip="127.0.0.1", port=8021,
                                  events_csv="DTMF")
    values.update(kw)
    return FsRow(**values)


def test_row_fields_are_trimmed_and_keep_csv_order():
    sub = row_subscription(row(events_csv=" TALK , NOTALK ,\tDTMF\r\n"))
    assert sub.events == ("TALK", "NOTALK", "DTMF")
    assert (sub.host, sub.port, sub.username, sub.password) == ("127.0.0.1", 8021, None, "ClueCon")


def test_row_empty_fields_are_dropped():  # crash bug 2 in OpenSIPS
    assert row_subscription(row(events_csv="TALK,,NOTALK")).events == ("TALK", "NOTALK")


@pytest.mark.parametrize("port, expected", [(0, 8021), (None, 8021), (8022, 8022), ("8023", 8023)])
def test_row_port(port, expected):
    assert row_subscription(row(port=port)).port == expected


@pytest.mark.parametrize("username, expected", [(None, None), ("", None), ("admin", "admin")])
def test_row_username(username, expected):
    assert row_subscription(row(username=username)).username == expected


def test_row_ip_is_the_host_string_verbatim():
    assert row_subscription(row(ip="::1")).host == "::1"
    assert row_subscription(row(ip="localhost")).host == "localhost"


@pytest.mark.parametrize("kw, message", [
    ({"password": None}, "column fs_secret cannot be null"),
    ({"password": ""}, "column fs_secret cannot be empty"),
    ({"ip": None}, "column ip cannot be null"),
    ({"ip": ""}, "column ip cannot be empty"),
    ({"events_csv": None}, "column events cannot be null"),
    ({"events_csv": ""}, "column events cannot be empty"),
    ({"events_csv": " , ,"}, "has no event name"),
    ({"events_csv": "DTMF,A\nnixevent ALL"}, "on several lines"),
    ({"port": "abc"}, "not a port number"),
    ({"port": 70000}, "out of range"),
])
def test_bad_rows_name_the_column(kw, message):
    with pytest.raises(BadRow, match=message):
        row_subscription(row(**kw), {"password": "fs_secret"})


# ------------------------------------------------------ command normalising

@pytest.mark.parametrize("text, sent", [
    ("api status", "api status"),
    ("api version\n", "api version"),
    ("api uptime\n\n", "api uptime"),
    ("api uptime\r\n\r\n", "api uptime"),
    ("bgapi originate {origination_uuid=123}user/1010 9386\njob-uuid: foobar",
     "bgapi originate {origination_uuid=123}user/1010 9386\njob-uuid: foobar"),
    ("sendevent CUSTOM\nEvent-Subclass: a::b\r\nFoo: bar\n", "sendevent CUSTOM\nEvent-Subclass: a::b\r\nFoo: bar"),
])
def test_commands_are_sent_without_their_terminator(text, sent):
    assert normalize_command(text) == sent


@pytest.mark.parametrize("text, code, message", [
    ("", 400, "Empty ESL command"),
    ("\n\n", 400, "Empty ESL command"),
    ("   ", 400, "Empty ESL command"),
    ("api status\n\napi version", 400, "Bad ESL command"),
    ("api status\n\r\nnixevent ALL", 400, "Bad ESL command"),
    ("\napi status", 400, "Bad ESL command"),
    ("x" * 65537, 400, "ESL command too long"),
])
def test_bad_commands_are_refused(text, code, message):
    with pytest.raises(MiError) as err:
        normalize_command(text)
    assert (err.value.code, err.value.message, err.value.data) == (code, message, None)


def test_the_size_limit_counts_bytes_and_is_configurable():
    assert normalize_command("x" * 65536) == "x" * 65536
    with pytest.raises(MiError, match="too long"):
        normalize_command("é" * 40000)  # 80 000 bytes
    with pytest.raises(MiError, match="too long"):
        normalize_command("api status", max_bytes=5)
