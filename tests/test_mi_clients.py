"""The real clients against the real MI transports: `opensips-cli -x mi …`
and `opensips.mi.OpenSIPSMI`, over HTTP, FIFO and datagram (docs/protocols/mi.md §8).

The server runs in this process (gevent); each client runs in its own
process, as users run it. `fs_list` through these clients is covered by the
scripting room's tests once its handler is registered (note for them:
`opensips_cli(..., "fs_list")` below works as is)."""

from __future__ import annotations

import json

import pytest

from opensips_fs.config import MiDatagramSettings, MiFifoSettings, MiHttpSettings
from opensips_fs.mi.datagram import MiDatagramServer
from opensips_fs.mi.fifo import MiFifoServer
from opensips_fs.mi.http import MiHttpServer
from opensips_fs.stats import Stats
from support.mi import build_registry, httpd_settings
from support.mi_clients import TRANSPORTS, MiServers, opensips_cli, opensips_mi

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    base = tmp_path_factory.mktemp("mi")
    stats = Stats()
    registry = build_registry(stats)
    http = MiHttpServer(httpd_settings(), MiHttpSettings(root="mi"), registry, stats).start()
    fifo = MiFifoServer(MiFifoSettings(fifo_name=str(base / "opensips_fifo"), fifo_mode=0o666,
                                       reply_dir=str(base)), registry, stats).start()
    datagram = MiDatagramServer(MiDatagramSettings(socket_name="udp:127.0.0.1:0"), registry, stats).start()
    yield MiServers(http=http, fifo=fifo, datagram=datagram, reply_dir=base, home=base)
    http.stop()
    fifo.stop()
    datagram.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cli_which(servers, transport):
    result = opensips_cli(servers, transport, "which")
    assert result.returncode == 0, result.stderr
    names = json.loads(result.stdout)
    assert "fs_list" in names and "freeswitch_scripting:list" in names


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cli_version(servers, transport):
    result = opensips_cli(servers, transport, "version")
    assert result.returncode == 0, result.stderr
    server = json.loads(result.stdout)["Server"]
    assert server.startswith("OpenSIPS (4.1.0-dev (")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cli_uptime(servers, transport):
    result = opensips_cli(servers, transport, "uptime")
    assert result.returncode == 0, result.stderr
    assert list(json.loads(result.stdout)) == ["Now", "Up since", "Up time"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cli_command_error(servers, transport):
    result = opensips_cli(servers, transport, "log_level", "abc")
    assert result.returncode != 0
    assert "-32602: Invalid params (Bad type for parameter 'level')" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cli_array_params_and_named(servers, transport):
    result = opensips_cli(servers, transport, "get_statistics", "mi:", "http_connections")
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert "mi:requests" in values and "mi:http_connections" in values
    named = opensips_cli(servers, transport, "which", "command=fs_subscribe")
    assert json.loads(named.stdout) == [["freeswitch_url", "events"]]


def test_cli_int_param_as_string_sets_level(servers):
    result = opensips_cli(servers, "http", "log_level", "4")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"New global log level": 4}


def test_cli_unknown_command_refused_locally(servers):
    result = opensips_cli(servers, "http", "no_such_cmd")
    assert result.returncode != 0
    assert "no_such_cmd" in result.stderr


# -- python opensips package -------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_opensips_mi_package(servers, transport):
    which, version, uptime, error, stats, named = opensips_mi(servers, transport, [
        ["which", []],
        ["version", None],
        ["uptime", {}],
        ["log_level", {"level": "x"}],
        ["get_statistics", [["mi:"]]],
        ["which", {"command": "event_subscribe"}],
    ])
    assert "fs_list" in which["result"]
    assert version["result"]["Server"].startswith("OpenSIPS (4.1.0-dev (")
    assert list(uptime["result"]) == ["Now", "Up since", "Up time"]
    assert error["error"] == "Error executing command: -32602: Invalid params (Bad type for parameter 'level')"
    assert "mi:requests" in stats["result"]
    assert named["result"] == [["event", "socket"], ["event", "socket", "expire"]]
