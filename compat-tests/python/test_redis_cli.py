"""Debian's redis-cli against fencelock: command mode, inline-friendly output, errors."""
import shutil
import subprocess

import pytest

CLI = shutil.which("redis-cli")
pytestmark = pytest.mark.skipif(CLI is None, reason="redis-cli not installed (scripts/test.sh installs redis-tools)")


def cli(server, *args, stdin=None):
    result = subprocess.run([CLI, "-p", str(server.port), *map(str, args)], input=stdin, capture_output=True, text=True, timeout=20)
    return result.stdout.strip()


def test_set_nx_px_get_fence(server):
    assert cli(server, "SET", "cli:lock", "tok", "NX", "PX", 30000) == "OK"
    assert cli(server, "SET", "cli:lock", "other", "NX", "PX", 30000) == ""
    assert cli(server, "GET", "cli:lock") == "tok"
    assert int(cli(server, "FENCE", "cli:lock")) > 0
    assert 29000 < int(cli(server, "PTTL", "cli:lock")) <= 30000


def test_native_lock_shows_its_grant(server):
    out = cli(server, "LOCK", "cli:native", 10000, "TOKEN", "t1").splitlines()
    assert out[0] == "fence" and out[2] == "token" and out[3] == "t1"
    assert cli(server, "LOCK", "cli:native", 10000, "TOKEN", "t2") == ""
    assert cli(server, "UNLOCK", "cli:native", "t1") == "0"


def test_errors_are_printed_and_the_session_goes_on(server):
    # Several commands through one connection (stdin), an error in the middle.
    # redis-cli prints a blank line after an error when stdin is not a terminal.
    out = [line for line in cli(server, stdin="SET cli:a 1\nNOSUCHCOMMAND x\nINCR cli:a\n").splitlines() if line]
    assert out[0] == "OK"
    assert out[1].startswith("ERR unknown command 'NOSUCHCOMMAND'")
    assert out[2] == "2"


def test_info_and_ping(server):
    assert cli(server, "PING") == "PONG"
    info = cli(server, "INFO")
    assert "loading:0" in info and "role:master" in info
    assert cli(server, "--no-raw", "COMMAND", "COUNT").startswith("(integer)")
    assert cli(server, "EVAL", "return ARGV[1]", 0, "hello") == "hello"
