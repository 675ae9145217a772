"""The FreeSWITCH Event Socket simulator (``opensips-fs-sim``).

A faithful stand-in for FreeSWITCH's mod_event_socket in inbound mode, byte
for byte where a client can see it (docs/protocols/esl.md §12): greeting, auth/userauth,
event subscriptions in json/plain/xml, filters, api/bgapi with canned
outputs, sendevent, log, HEARTBEAT, simulated calls, the slow-consumer rule;
plus what tests and benchmarks need: fault injection, bursts, pushing exact
frames, and a record of what every client sent.

Library use::

    from opensips_fs.sim import FsSimulator, SimSettings, SimUser
    with FsSimulator(SimSettings(port=0, heartbeat=1)) as box:
        ...connect to box.address...
        box.wait_clients(1)
        box.raise_event("CUSTOM", {"Event-Subclass": "my::thing", "Foo": "bar"})
        assert box.clients[0].commands[0] == "auth ClueCon"
"""

from .client import SimClient
from .server import FsSimulator
from .settings import SimSettings, SimUser

__all__ = ["FsSimulator", "SimSettings", "SimUser", "SimClient"]
