"""/health stays liveness; /ready says whether the configured job is being
done: the database loaded, the sockets the DB and the fs_subscribe modparams
name connected (but `ready_max_down` of them); 503 lists each reason. With
HTTP auth on, /metrics and /ready need it unless `probes_auth` is 0."""

import json
import socket

import pytest

from opensips_fs.sim import FsSimulator, SimSettings
from support.ops import OpsStack, wait_until

pytestmark = pytest.mark.timeout(40)


@pytest.fixture
def made(tmp_path):
    started: list = []
    yield started
    for thing in reversed(started):
        thing.stop()


def sim(made):
    box = FsSimulator(SimSettings(password="ClueCon")).start()
    made.append(box)
    return box


def refused_port(made):
    """A port bound and never listening: connections to it are refused."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    made.append(type("Closer", (), {"stop": lambda self: holder.close()})())
    return holder.getsockname()[1]


def ready(s):
    status, _, body = s.get("/ready")
    return status, json.loads(body)


def modparam(port, events="HEARTBEAT"):
    return f'modparam("freeswitch_scripting", "fs_subscribe", ":ClueCon@127.0.0.1:{port}?{events}")\n'


def test_ready_without_anything_to_wait_for(tmp_path, made):
    s = OpsStack(tmp_path)
    made.append(s)
    assert ready(s) == (200, {"status": "ready"})
    assert s.get("/health")[0] == 200


def test_ready_follows_the_modparam_sockets_not_mi_ones(tmp_path, made):
    box = sim(made)
    s = OpsStack(tmp_path, extra=modparam(box.port))
    made.append(s)
    wait_until(lambda: ready(s)[0] == 200)
    dead = refused_port(made)
    assert s.mi("fs_subscribe", [f":pw@127.0.0.1:{dead}", ["DTMF"]])["result"] == "OK"
    assert ready(s) == (200, {"status": "ready"})             # an MI socket does not count
    box.stop()
    status, body = wait_until(lambda: (r := ready(s))[0] == 503 and r)
    assert body["status"] == "not ready"
    assert any(r.startswith(f"ESL 127.0.0.1:{box.port} not connected") for r in body["reasons"])
    assert "ClueCon" not in json.dumps(body)
    assert s.get("/health")[0] == 200                        # still alive


def test_ready_max_down_lets_some_be_down(tmp_path, made):
    box = sim(made)
    dead = refused_port(made)
    extra = modparam(box.port) + modparam(dead) + \
        'modparam("freeswitch_scripting", "ready_max_down", 1)\n'
    s = OpsStack(tmp_path, extra=extra)
    made.append(s)
    wait_until(lambda: ready(s)[0] == 200)
    box.stop()
    status, body = wait_until(lambda: (r := ready(s))[0] == 503 and r)
    assert "2 of the sockets the DB and fs_subscribe modparams name are down (ready_max_down 1)" \
        in body["reasons"]


def test_not_ready_while_the_database_is_not_loaded(tmp_path, made):
    dead = refused_port(made)
    s = OpsStack(tmp_path, extra='modparam("freeswitch_scripting", "db_url", '
                                 f'"postgres://u:Secr3t@127.0.0.1:{dead}/opensips")\n')
    made.append(s)
    status, body = ready(s)
    assert status == 503
    assert body["reasons"][0].startswith(
        f"database: table freeswitch in postgres://u:***@127.0.0.1:{dead}/opensips not loaded yet: ")
    assert "Secr3t" not in json.dumps(body)


AUTH = ('modparam("httpd", "auth_username", "admin")\n'
        'modparam("httpd", "auth_password", "Adm1nPw")\n')


def test_with_auth_probes_need_it_by_default(tmp_path, made):
    s = OpsStack(tmp_path, extra=AUTH)
    made.append(s)
    assert s.get("/health")[0] == 200
    assert s.get("/ready")[0] == 401 and s.get("/metrics")[0] == 401
    assert s.get("/ready", auth="admin:Adm1nPw")[0] == 200
    assert s.get("/metrics", auth="admin:Adm1nPw")[0] == 200


def test_probes_auth_0_opens_the_probes_not_mi(tmp_path, made):
    s = OpsStack(tmp_path, extra=AUTH + 'modparam("httpd", "probes_auth", 0)\n')
    made.append(s)
    assert s.get("/ready")[0] == 200 and s.get("/metrics")[0] == 200
    assert s.post_raw(b'{"jsonrpc":"2.0","method":"version","id":1}')[0] == 401
