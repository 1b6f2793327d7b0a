"""Fixtures: the embedded server, and a real 3-node cluster of `fencelock` processes
(the binary at $FENCELOCK_BIN) on 127.0.0.1, killed and removed afterwards."""

import os
import random
import socket
import subprocess
import tempfile
import threading

import pytest

import fencelock


@pytest.fixture
def server():
    s = fencelock.EmbeddedServer()
    yield s
    s.stop()


_handed_out = set()


def _free_port():
    # Below the ephemeral range, where `--port 0` listeners live; never twice.
    while True:
        port = random.randint(20000, 31999)
        if port in _handed_out:
            continue
        _handed_out.add(port)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


class Node:
    def __init__(self, node_id, peers, data_dir):
        binary = os.environ.get("FENCELOCK_BIN")
        if not binary:
            pytest.fail("set FENCELOCK_BIN to a built fencelock binary")
        self.proc = subprocess.Popen(
            [binary, "--port", "0", "--bind", "127.0.0.1", "--node-id", str(node_id),
             "--peers", peers, "--data-dir", os.path.join(data_dir, f"n{node_id}")],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.port = None
        ready = threading.Event()

        def read():
            for line in self.proc.stdout:
                if line.startswith("fencelock ready on 127.0.0.1:"):
                    self.port = int(line.split(":")[1].split()[0])
                    ready.set()
        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(30):
            self.kill()
            pytest.fail(f"node {node_id} did not start")

    def kill(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def cluster():
    with tempfile.TemporaryDirectory(prefix="fencelock-py-") as d:
        peers = ",".join(f"{i}=127.0.0.1:{_free_port()}" for i in (1, 2, 3))
        nodes = [None] * 3
        threads = [threading.Thread(target=lambda i=i: nodes.__setitem__(i, Node(i + 1, peers, d))) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            yield nodes
        finally:
            for n in nodes:
                if n is not None:
                    n.kill()
