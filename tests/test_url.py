"""FreeSWITCH URL parsing (docs/protocols/scripting.md §2.1), including every URL recorded in the
golden transcripts: the ones OpenSIPS refused must raise UrlError, the ones it
accepted must parse to the socket it used."""

import ipaddress
import json
import re

import pytest
from hypothesis import given, strategies as st

from opensips_fs.url import DEFAULT_PORT, FsUrl, UrlError, parse

from support import golden

GOLDEN = golden.golden_dir("opensips")


@pytest.mark.parametrize("text, host, port, username, password, events", [
    ("127.0.0.1", "127.0.0.1", 8021, None, None, []),
    ("127.0.0.1:8022", "127.0.0.1", 8022, None, None, []),
    (":ClueCon@127.0.0.1:8021", "127.0.0.1", 8021, None, "ClueCon", []),
    ("admin:ClueCon@127.0.0.1:8023", "127.0.0.1", 8023, "admin", "ClueCon", []),
    ("admin@h", "h", 8021, "admin", None, []),
    ("fs://127.0.0.1:8021?X,Y", "127.0.0.1", 8021, None, None, ["X", "Y"]),
    ("http://:ClueCon@127.0.0.1:8028", "127.0.0.1", 8028, None, "ClueCon", []),
    (":ClueCon@127.0.0.1:8021?CHANNEL_ANSWER,BACKGROUND_JOB", "127.0.0.1", 8021, None,
     "ClueCon", ["CHANNEL_ANSWER", "BACKGROUND_JOB"]),
    ("fs://:ClueCon@127.0.0.1:8022?DTMF", "127.0.0.1", 8022, None, "ClueCon", ["DTMF"]),
    ("u:pa:ss@h:1", "h", 1, "u", "pa:ss", []),           # password may hold ':'
    ("h:0", "h", DEFAULT_PORT, None, None, []),           # port 0 means 8021
    ("h/db?A=1, B ,", "h", 8021, None, None, ["A", "B"]),  # database ignored, values ignored
    ("localhost:8022", "localhost", 8022, None, None, []),
    ("h:65535", "h", 65535, None, None, []),
    ("Fs-1.example.COM.", "Fs-1.example.COM.", 8021, None, None, []),   # host kept verbatim
    ("fs_box", "fs_box", 8021, None, None, []),
    ("[::1]:8022", "::1", 8022, None, None, []),          # IPv6 in brackets, kept without them
    (":pw@[fe80::1]?DTMF", "fe80::1", 8021, None, "pw", ["DTMF"]),
    ("[2001:db8::5]", "2001:db8::5", 8021, None, None, []),
])
def test_valid_urls(text, host, port, username, password, events):
    url = parse(text)
    assert (url.host, url.port, url.username, url.password, url.events) == (
        host, port, username, password, events)
    assert url.key == f"{host}:{port}"


@pytest.mark.parametrize("text, message", [
    ("", "empty FreeSWITCH URL"),
    ("fs://", "nothing after the scheme"),
    (":ClueCon@", "no host after the credentials"),
    ("::", "empty host"),
    (":8021", "empty host"),
    ("::bad url", "empty host"),
    ("://x", "empty host"),                   # '://' at 0 is no scheme
    ("127.0.0.1:", "bad port"),
    ("127.0.0.1:abc", "bad port"),
    (":ClueCon@127.0.0.1:abc", "bad port"),
    ("h:-1", "bad port"),
    ("h:１２", "bad port"),                    # non-ASCII digits
    ("h:65536", "out of range"),              # [EMU] OpenSIPS wraps to 0 -> 8021
    ("h:70000", "out of range"),              # [EMU] OpenSIPS wraps to 4464
    ("a,b:8021", "several hosts"),
    ("?DTMF", "empty host"),
    ("/db", "empty host"),
    ("h?=x", "empty name"),
    # [EMU] a host must be a hostname, an IPv4 address or a bracketed IPv6 one
    ("::::@@@", "bad host '@@'"),             # OpenSIPS retries DNS for '@@' for ever
    ("@host", "bad host '@host'"),            # '@' at 0 is no userinfo
    (" h :8021", "bad host 'h '"),
    ("8021", "bad host '8021'"),              # OpenSIPS connects to 0.0.31.85
    ("10.0.0.256", "bad host"),
    ("1.2.3", "bad host"),
    ("h..x", "bad host"),
    ("-h", "bad host"),
    ("h$x:8021", "bad host"),
    ("a" * 254, "bad host"),
    ("[::1", "unclosed"),
    ("[::1]x", "after ']'"),
    ("[::1]:x", "bad port"),
    ("[10.0.0.1]:8021", "bad IPv6 address"),
    ("[]:8021", "bad IPv6 address"),
])
def test_malformed_urls_raise_a_clear_error(text, message):
    with pytest.raises(UrlError, match=message):
        parse(text)


@pytest.mark.parametrize("value", [None, 8021, b"h", ["h"]])
def test_non_strings_are_refused(value):
    with pytest.raises(UrlError, match="must be a string"):
        parse(value)


def test_a_huge_host_is_cut_in_the_error():
    with pytest.raises(UrlError) as err:
        parse(":pw@" + "x$" * 450_000 + ":8021")
    assert len(str(err.value)) < 600 and "cut" in str(err.value)


def test_errors_and_repr_never_show_the_password():
    with pytest.raises(UrlError) as err:
        parse("admin:s3cret@h:bad")
    assert "s3cret" not in str(err.value) and "admin:***@h:bad" in str(err.value)
    with pytest.raises(UrlError) as err:
        parse("fs://:s3cret@,x")
    assert "s3cret" not in str(err.value)
    assert "s3cret" not in repr(parse("u:s3cret@h"))


def _golden_urls():
    """(url, kind) for every URL OpenSIPS logged about in the transcripts:
    `failed to parse FS URL '…'` -> refused by the parser; `refusing to
    connect to FS '…' without a password` -> parsed; plus every URL of an
    fs_subscribe that answered OK -> parsed."""
    out = set()
    for path in sorted(GOLDEN.glob("*.json")):
        scenario = json.load(open(path))
        for entry in scenario.get("opensips_log", []):
            # most recordings keep plain lines; evi_rabbitmq.json keeps {"phase", "line", ...}
            line = entry["line"] if isinstance(entry, dict) else entry
            for pattern, kind in ((r"failed to parse FS URL '(.*)'$", "refused"),
                                  (r"refusing to connect to FS '(.*)' without a password",
                                   "parsed")):
                match = re.search(pattern, line)
                if match:
                    out.add((match.group(1), kind))
        for ex in scenario.get("exchanges", []):
            try:
                body = json.loads(ex.get("request_body") or "")
            except ValueError:
                continue
            if isinstance(body, dict) and body.get("method") == "fs_subscribe" \
                    and isinstance(body.get("params"), dict) \
                    and ex.get("response_json", {}).get("result") == "OK":
                out.add((body["params"]["freeswitch_url"], "parsed"))
    return sorted(out)


GOLDEN_URLS = _golden_urls()


def test_the_golden_transcripts_hold_urls_of_both_kinds():
    kinds = {kind for _, kind in GOLDEN_URLS}
    assert kinds == {"parsed", "refused"} and len(GOLDEN_URLS) >= 10


# [EMU] hosts OpenSIPS accepted and opensips-fs refuses (see test_malformed_urls…)
REFUSED_HOSTS = {"8021"}


@pytest.mark.parametrize("text, kind", GOLDEN_URLS)
def test_golden_urls_parse_as_opensips_did(text, kind):
    if kind == "refused" or text in REFUSED_HOSTS:
        with pytest.raises(UrlError):
            parse(text)
    else:
        assert isinstance(parse(text), FsUrl)


@given(st.text(max_size=60))
def test_parse_is_total_and_consistent(text):
    try:
        url = parse(text)
    except UrlError:
        return
    assert url.host and "," not in url.host
    assert ":" not in url.host or ipaddress.IPv6Address(url.host)
    assert 1 <= url.port <= 65535
    assert all(name and name == name.strip() for name in url.events)
