"""MI over a FIFO (`mi_fifo`): the transport only moves bytes.

At start the server FIFO `fifo_name` is (re)created with `fifo_mode` and kept
open read-write — unless a FIFO at that path already has a reader: another
process (an OpenSIPS, another opensips-fs) serves it, and the start fails
with an error naming the path instead of stealing its clients. A FIFO is
removed at stop only while it is still the one this server made (same
device and inode), never one that replaced it.

The FIFO is kept open read-write, so the empty open/close opensips-cli does before every
request never produces an end of file. A reader greenlet feeds what it reads
to `fifoframe.FifoParser`; the requests completed by one read are run in
order by one greenlet (so a slow command does not hold up other clients),
each reply written to its own reply FIFO `reply_dir/<reply_name>` (docs/protocols/mi.md
§6.2): opened non-blocking for writing (retried 4 times 80 ms apart while
the client has not opened it for reading yet), one compact line without a
newline, then closed. A notification opens and closes the reply FIFO with
nothing written. Only an existing FIFO is written to, never another kind of
file, and never through a symbolic link (`O_NOFOLLOW`: a link planted in the
reply folder cannot redirect a reply elsewhere).
"""

from __future__ import annotations

import errno
import logging
import os
import stat

import gevent
from gevent.monkey import get_original
from gevent.os import nb_read, nb_write

from ..config import MiFifoSettings
from ..reasons import short_reason
from ..stats import Stats
from . import StartupError
from .fifoframe import FifoParser, FifoRejected
from .registry import MiRegistry

__all__ = ["MiFifoServer"]

log = logging.getLogger(__name__)

READ_SIZE = 65536
OPEN_RETRIES = 4
OPEN_RETRY_DELAY = 0.08
WRITE_TIMEOUT = 5.0
IDLE_FLUSH = 2.0  # s without bytes before an incomplete request is a parse error

# gevent's patched os.close defers the close to the loop's next iteration
# (after its next poll): the client waiting for the reply's EOF would then
# wait for some unrelated event. The reply fd has no watcher left when we
# close it, so the plain close is safe.
_close_now = get_original("os", "close")


class MiFifoServer:
    def __init__(self, mi_fifo_settings: MiFifoSettings, registry: MiRegistry, stats: Stats):
        self.path = mi_fifo_settings.fifo_name
        self.mode = mi_fifo_settings.fifo_mode
        self.reply_dir = mi_fifo_settings.reply_dir
        self.registry = registry
        self.idle_flush = IDLE_FLUSH
        self._fd: int | None = None
        self._made: tuple[int, int] | None = None   # (st_dev, st_ino) of the FIFO we made
        self._reader: gevent.Greenlet | None = None
        self._requests = stats.counter("mi", "fifo_requests", "MI requests read from the FIFO")
        self._rejected = stats.counter("mi", "fifo_rejected", "FIFO requests refused (malformed, bad reply path)")
        self._reply_failures = stats.counter("mi", "fifo_reply_failures", "FIFO replies that could not be written")

    def start(self) -> "MiFifoServer":
        if not os.path.isdir(self.reply_dir):
            raise StartupError(f"mi_fifo: reply_dir {self.reply_dir} is not an existing directory")
        try:
            if os.path.lexists(self.path):
                if os.path.isdir(self.path) and not os.path.islink(self.path):
                    raise StartupError(f"mi_fifo: {self.path} is a directory")
                if _served(self.path):
                    raise StartupError(
                        f"mi_fifo: FIFO {self.path} is already served by another process "
                        "(an OpenSIPS or another opensips-fs?): not replacing it; set another "
                        "fifo_name or stop that process")
                os.unlink(self.path)
            os.mkfifo(self.path, self.mode)
            os.chmod(self.path, self.mode)
            self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
            made = os.fstat(self._fd)
            self._made = (made.st_dev, made.st_ino)
        except OSError as err:
            raise StartupError(f"mi_fifo: cannot create FIFO {self.path}: {short_reason(err)}") from None
        self._reader = gevent.spawn(self._read_loop)
        log.info("MI FIFO listening on %s", self.path)
        return self

    def stop(self) -> None:
        if self._reader is not None:
            self._reader.kill()
            self._reader = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            try:
                now = os.lstat(self.path)
                if (now.st_dev, now.st_ino) == self._made:
                    os.unlink(self.path)
                else:
                    log.warning("MI FIFO %s was replaced by another file: left in place", self.path)
            except OSError:
                pass

    # -- reading --------------------------------------------------------------

    def _read_loop(self) -> None:
        parser = FifoParser()
        fd = self._fd
        assert fd is not None  # start() opened it before spawning this loop
        while True:
            try:
                if parser.pending:
                    data = None
                    # False: a silent timeout (gevent's documented form; the stubs lack it)
                    with gevent.Timeout(self.idle_flush, False):  # type: ignore[arg-type]
                        data = nb_read(fd, READ_SIZE)
                    items = parser.feed(data) if data is not None else parser.flush()
                else:
                    items = parser.feed(nb_read(fd, READ_SIZE))
            except OSError as err:
                log.error("reading the MI FIFO %s failed: %s", self.path, err)
                return
            if items:
                gevent.spawn(self._run, items)

    def _run(self, items: list) -> None:
        for item in items:
            if isinstance(item, FifoRejected):
                self._rejected.value += 1
                log.warning("MI FIFO request dropped: %s", item.reason)
                continue
            self._requests.value += 1
            reply = self.registry.handle(item.body, "fifo")
            if item.reply_name is not None:
                self._write_reply(item.reply_name, reply or b"")

    # -- replying -------------------------------------------------------------

    def _write_reply(self, name: str, reply: bytes) -> None:
        path = os.path.join(self.reply_dir, name)
        fd = None
        for attempt in range(OPEN_RETRIES + 1):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
                break
            except OSError as err:
                if err.errno not in (errno.ENXIO, errno.ENOENT) or attempt == OPEN_RETRIES:
                    self._reply_failures.value += 1
                    reason = "a symbolic link, not followed" if err.errno == errno.ELOOP else short_reason(err)
                    log.error("cannot open reply FIFO %s: %s", path, reason)
                    return
                gevent.sleep(OPEN_RETRY_DELAY)
        assert fd is not None  # the loop either opened it or returned
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                self._reply_failures.value += 1
                log.error("reply FIFO %s is not a FIFO: not written", path)
                return
            with gevent.Timeout(WRITE_TIMEOUT):
                view = memoryview(reply)
                while view:
                    view = view[nb_write(fd, view):]
        except (OSError, gevent.Timeout) as err:
            self._reply_failures.value += 1
            log.error("cannot write reply FIFO %s: %s", path, err)
        finally:
            _close_now(fd)


def _served(path: str) -> bool:
    """True when `path` is a FIFO that some process has open for reading:
    a non-blocking open for writing succeeds only then (ENXIO otherwise)."""
    try:
        if not stat.S_ISFIFO(os.stat(path).st_mode):
            return False
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return False
    _close_now(fd)
    return True
