"""short_reason: the one exception -> short text used in log lines, status
fields and start-up errors."""

import socket
import ssl

import gevent

from opensips_fs.reasons import short_reason


def test_timeouts_say_timed_out():
    assert short_reason(socket.timeout()) == "timed out"
    assert short_reason(TimeoutError(110, "Connection timed out")) == "timed out"
    assert short_reason(gevent.Timeout(1.5)) == "timed out"


def test_os_errors_give_the_system_message_alone():
    assert short_reason(ConnectionRefusedError(111, "Connection refused")) == "Connection refused"
    assert short_reason(FileNotFoundError(2, "No such file or directory", "/etc/x.cfg")) == \
        "No such file or directory"
    cert = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    assert "CERTIFICATE_VERIFY_FAILED" in short_reason(cert)


def test_other_errors_are_one_line_or_their_class_name():
    assert short_reason(ValueError("server closed\n  the connection\tunexpectedly")) == \
        "server closed the connection unexpectedly"
    assert short_reason(OSError("HTTPError: 503")) == "HTTPError: 503"
    assert short_reason(RuntimeError()) == "RuntimeError"
