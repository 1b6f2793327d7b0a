"""scripts/cluster.sh: a three-node cluster of real processes, used through redis-py."""
import os
import random
import socket
import subprocess
import tempfile

import pytest
import redis

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(ROOT, "scripts", "cluster.sh")


def free_base_port(count):
    # Client ports P..P+count-1 and peer ports 10000 above them must all be free.
    for _ in range(100):
        base = random.randint(20000, 45000)
        ports = [base + i for i in range(count)] + [base + 10000 + i for i in range(count)]
        try:
            sockets = []
            for port in ports:
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                sockets.append(s)
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        return base
    pytest.fail("no free port range")


def run(*args):
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=120, env=dict(os.environ))


def test_up_status_write_anywhere_down():
    base = free_base_port(3)
    data = tempfile.mkdtemp(prefix="fencelock-cluster-")
    try:
        up = run("up", "3", "--base-port", str(base), "--dir", data)
        assert up.returncode == 0, up.stderr
        lines = up.stdout.strip().splitlines()
        assert [l.split()[:3] for l in lines] == [["node", str(i + 1), f"127.0.0.1:{base + i}"] for i in range(3)]
        status = run("status", "--dir", data).stdout
        assert status.count("role master") == 1 and status.count("role slave") == 2, status
        # Any node serves any client: write through one, read through another.
        clients = [redis.Redis(port=base + i) for i in range(3)]
        for i, c in enumerate(clients):
            assert c.set(f"from-{i}", str(i))
        for c in clients:
            assert [c.get(f"from-{i}") for i in range(3)] == [b"0", b"1", b"2"]
        lock = clients[1].lock("cluster:resource", timeout=10)
        assert lock.acquire(blocking=False)
        assert not clients[2].lock("cluster:resource", timeout=10).acquire(blocking=False)
        lock.release()
    finally:
        down = run("down", "--dir", data)
        assert down.returncode == 0, down.stderr
        subprocess.run(["rm", "-rf", data])
