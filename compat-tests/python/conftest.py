"""Starts the real fencelock binary on an ephemeral 127.0.0.1 port with a temp data dir."""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest


def binary():
    path = os.environ.get("FENCELOCK_BIN")
    if not path or not os.path.exists(path):
        pytest.fail("FENCELOCK_BIN must point at a built fencelock binary (compat-tests/run.sh sets it)")
    return path


class Server:
    def __init__(self, extra_args=()):
        self.dir = tempfile.mkdtemp(prefix="fencelock-compat-")
        self.proc = subprocess.Popen(
            [binary(), "--port", "0", "--bind", "127.0.0.1", "--data-dir", os.path.join(self.dir, "data"), *extra_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        deadline = time.time() + 30
        line = ""
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            match = re.search(r"ready on 127\.0\.0\.1:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                return
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"fencelock did not start: {line!r}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture
def auth_server():
    s = Server(["--requirepass", "s3cret"])
    yield s
    s.stop()
