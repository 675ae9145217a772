"""The text/disconnect-notice frames the simulated Event Socket sends
before it closes a connection, byte for byte as FreeSWITCH's."""

from __future__ import annotations

__all__ = ["NOTICE_BYE", "NOTICE_SHUTDOWN", "NOTICE_LOST", "NOTICE_LOST_LOG", "notice_frame", "BYE", "SHUTDOWN"]

NOTICE_BYE = "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
NOTICE_SHUTDOWN = "The system is being shut down.\n"
NOTICE_LOST = "killed listener because of lost events\n"
NOTICE_LOST_LOG = "killed listener because of lost log lines\n"


def notice_frame(text: str, extra: bytes = b"") -> bytes:
    raw = text.encode()
    return b"Content-Type: text/disconnect-notice\n%sContent-Length: %d\n\n%s" % (extra, len(raw), raw)


BYE = notice_frame(NOTICE_BYE)
SHUTDOWN = notice_frame(NOTICE_SHUTDOWN)
