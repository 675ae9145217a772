"""Replay of the `mi_fs_*` transcripts through the real `opensips-cli`.

Every recorded request that opensips-cli can express (no params, named
params whose values are strings or arrays of space-free strings, positional
`[url, [events…]]`) is turned into the command line a user would type
(`fs_subscribe freeswitch_url=… events="A B"`, `fs_subscribe URL A B`); the
CLI's output must be the recorded result (printed as JSON) or the recorded
error (`CODE: MESSAGE (DATA)` on stderr, exit status 255). The service and
the simulators are the same as in test_scripting_golden; requests the CLI
cannot express (null, numbers, objects, `[url, "A"]`) are sent over HTTP
as recorded, so the state stays the recorded one.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from test_scripting_golden import (Stack, golden_commands, http_exchanges, load,
                                   no_half_made_entries_adjust)
from test_scripting_mi import CLI, cli

MY_COMMANDS = {"fs_subscribe", "fs_unsubscribe", "fs_list", "fs_reload",
               "freeswitch_scripting:subscribe", "freeswitch_scripting:unsubscribe",
               "freeswitch_scripting:list", "freeswitch_scripting:reload"}
ARRAY_PARAM = {"fs_subscribe", "fs_unsubscribe", "freeswitch_scripting:subscribe",
               "freeswitch_scripting:unsubscribe"}


def cli_args(body: dict) -> list[str] | None:
    """The opensips-cli words for a recorded request, or None."""
    method = body.get("method")
    if method not in MY_COMMANDS or "id" not in body:
        return None
    params = body.get("params")
    if params in (None, {}):
        return [method]
    if isinstance(params, dict):
        words = [method]
        for key, value in params.items():
            if key == "events" and method in ARRAY_PARAM and not isinstance(value, list):
                return None  # the CLI always makes `events=…` an array
            if isinstance(value, str) and " " not in value and value:
                words.append(f"{key}={value}")
            elif isinstance(value, list) and value and method in ARRAY_PARAM and all(
                    isinstance(v, str) and v and " " not in v for v in value):
                words.append(f"{key}={' '.join(value)}")
            else:
                return None
        return words
    if isinstance(params, list) and method in ARRAY_PARAM and len(params) == 2 \
            and isinstance(params[0], str) and params[0] and isinstance(params[1], list) \
            and params[1] and all(isinstance(v, str) and v for v in params[1]):
        return [method, params[0], *params[1]]
    return None


class CliBatch:
    """Consecutive commands for one interactive opensips-cli process (its
    start-up takes most of a second): lines `mi WORDS` on stdin; each
    command's output follows a prompt on stdout, errors go to stderr."""

    PROMPT = "(opensips-cli): "

    def __init__(self, stack: Stack, tmp_path: Path):
        self.stack, self.tmp_path = stack, tmp_path
        self.items: list[tuple[str, list[str], dict]] = []

    def add(self, label, words, expected):
        self.items.append((label, words, expected))

    def run(self) -> int:
        if not self.items:
            return 0
        stack = self.stack
        lines = "".join("mi " + " ".join(shlex.quote(stack.rewrite(w)) for w in words) + "\n"
                        for _, words, _ in self.items)
        run = cli(stack, self.tmp_path, stdin=lines)
        outputs = run.stdout.split(self.PROMPT)[1:]
        errors = [line for line in run.stderr.splitlines() if "Error executing command" in line]
        assert len(outputs) >= len(self.items), run.stdout
        for (label, _, expected), out in zip(self.items, outputs):
            if "result" in expected:
                assert json.loads(stack.unrewrite(out)) == expected["result"], label
            else:
                assert out.strip() == "", (label, out)
                err = expected["error"]
                text = f"{err['code']}: {err['message']}" + (
                    f" ({err['data']})" if "data" in err else "")
                assert errors and text in errors.pop(0), (label, run.stderr)
        assert errors == []
        done, self.items = len(self.items), []
        return done


@pytest.mark.timeout(60)
def test_mi_phase_through_opensips_cli(tmp_path):
    if not CLI.exists():
        pytest.fail(f"{CLI} missing: the test extra installs opensips-cli")
    stack = Stack(tmp_path, db_rows=[])
    batch = CliBatch(stack, tmp_path)
    through_cli = 0
    try:
        names = ["mi_fs_list_empty", "mi_fs_subscribe_named", "mi_fs_subscribe_positional",
                 None, "mi_fs_subscribe_errors", "mi_fs_subscribe_known_socket_no_password",
                 "mi_fs_unsubscribe", "mi_fs_reload_no_rows"]
        for name in names:
            if name is None:  # the unrecorded scenario of this run (see test_scripting_golden)
                through_cli += batch.run()
                assert stack.mi("fs_subscribe", {"freeswitch_url": stack.rewrite(
                    ":ClueCon@127.0.0.1:8021"), "events": ["TALK"]})["result"] == "OK"
                continue
            for ex in http_exchanges(load(name)):
                try:
                    body = json.loads(ex["request_body"])
                except ValueError:
                    body = None
                words = cli_args(body) if isinstance(body, dict) else None
                if words is None:
                    through_cli += batch.run()
                    status, reply = stack.send_raw(ex["request_raw"])
                    assert status == ex["status"], ex["label"]
                    continue
                expected = json.loads(no_half_made_entries_adjust(ex, ex["response_body"]))
                batch.add(ex["label"], words, expected)
        through_cli += batch.run()
        # the CLI drove the same wire conversation as the recorded run
        assert stack.commands(8021, 2) == golden_commands(load("mi_fs_reload_no_rows"))[(8021, 2)]
        assert through_cli >= 30
    finally:
        stack.stop()
