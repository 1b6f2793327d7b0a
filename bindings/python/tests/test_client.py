"""fencelock's Python package against real servers: the embedded one and a 3-node
cluster of fencelock processes."""

import asyncio
import threading
import time

import pytest

import fencelock


def test_lock_unlock_and_fences_rise(server):
    c = fencelock.Client([server.endpoint])
    with c.lock("orders:1", ttl=10) as lock:
        assert lock.valid
        assert c.fence("orders:1") == lock.fence
        first = lock.fence
    assert c.fence("orders:1") is None, "released on leaving the with block"
    last = first
    for _ in range(5):
        lock = c.lock("orders:1", ttl=10)
        assert lock.fence > last, "fences strictly increase"
        last = lock.fence
        assert lock.release() is True
    assert lock.release() is False, "a second release says it was not held"


def test_two_clients_contend(server):
    a, b = fencelock.Client([server.endpoint]), fencelock.Client([server.endpoint])
    held = a.lock("res", ttl=10)
    assert b.try_lock("res", ttl=10) is None
    with pytest.raises(fencelock.Timeout):
        b.lock("res", ttl=10, wait=0.2)
    got = {}
    waiter = threading.Thread(target=lambda: got.setdefault("lock", b.lock("res", ttl=10)))
    waiter.start()
    time.sleep(0.2)
    fence = held.fence
    held.release()
    waiter.join(10)
    assert got["lock"].fence > fence
    got["lock"].release()


def test_auto_renew_keeps_a_lock_past_its_ttl(server):
    c = fencelock.Client([server.endpoint])
    lock = c.lock("renewed", ttl=0.6)
    time.sleep(2.0)
    assert lock.valid, lock.lost_reason
    assert c.fence("renewed") == lock.fence
    lock.release()


def test_lost_signal_fires_when_the_server_stops():
    server = fencelock.EmbeddedServer()
    c = fencelock.Client([server.endpoint])
    lock = c.lock("job", ttl=0.9)
    fired = []
    lock.on_lost(fired.append)
    started = time.monotonic()
    server.stop()
    reason = lock.wait_lost(5)
    assert reason is not None and "validity ran out" in reason
    assert time.monotonic() - started < 0.9, "within the TTL"
    assert not lock.valid
    time.sleep(0.1)
    assert fired, "the callback ran"


def test_errors_map_to_exception_types(server):
    c = fencelock.Client([server.endpoint])
    with pytest.raises(fencelock.InvalidRequest):
        c.lock("x", ttl=0)
    with pytest.raises(fencelock.InvalidRequest):
        c.lock("x", ttl=-1)
    assert issubclass(fencelock.NotHolder, fencelock.FencelockError)
    with pytest.raises(fencelock.Unavailable):
        fencelock.Client(["127.0.0.1:1"], retry_for=0.3)
    s = c.session(5)
    s.close()
    with pytest.raises(fencelock.NoSession):
        c.lock("y", ttl=0, session=s)


def test_sessions_hold_locks(server):
    c = fencelock.Client([server.endpoint])
    with c.session(2) as s:
        lock = c.lock("by-session", session=s)
        time.sleep(2.5)
        assert lock.valid and s.valid, "kept alive in the background"
        assert c.fence("by-session") == lock.fence
    assert c.fence("by-session") is None, "closing the session released it"
    assert not lock.valid


def test_a_ttl_given_with_a_session_is_kept(server):
    # The binding used to drop the ttl under a session: the lock then lived as long as
    # the session, however short a lease was asked for.
    c = fencelock.Client([server.endpoint])
    with c.session(10) as s:
        lock = c.lock("both", ttl=1, session=s, auto_renew=False)
        assert c.fence("both") == lock.fence
        time.sleep(1.6)
        assert s.valid, "the session lives on"
        assert c.fence("both") is None, "the 1 s lease ran out under a live session"
        assert not lock.valid


def test_semaphores_elections_and_watches(server):
    c = fencelock.Client([server.endpoint])
    p1 = c.acquire_permit("pool", 2, ttl=10)
    p2 = c.acquire_permit("pool", 2, ttl=10)
    assert p1 and p2 and p2.fence > p1.fence
    assert c.acquire_permit("pool", 2, ttl=10, wait=0.1) is None
    with p1:
        pass
    assert c.acquire_permit("pool", 2, ttl=10) is not None, "leaving the with block released one"

    w = c.watch("election", "leader")
    with c.campaign("leader", "n1", "addr-1", ttl=10) as lead:
        assert c.leader("leader")["candidate"] == b"n1"
        event = w.next(5)
        assert event["kind"] == "leader" and event["candidate"] == b"n1"
        lead.proclaim("addr-2")
        assert c.leader("leader")["value"] == b"addr-2"
    assert c.leader("leader") is None, "leaving the with block resigned"

    keys = c.watch("prefix", "cfg/")
    c.set("cfg/a", "1")
    event = keys.next(5)
    assert (event["kind"], event["target"]) == ("set", b"cfg/a")
    assert keys.next(0.1) is None
    with pytest.raises(fencelock.InvalidRequest):
        c.watch("nope", "x")


def test_asyncio_api(server):
    async def main():
        c = await fencelock.AsyncClient.connect([server.endpoint])
        async with c.lock("async", ttl=5) as lock:
            assert lock.valid
            assert await c.fence("async") == lock.fence
        assert await c.fence("async") is None
        lock = await c.acquire("async", ttl=5)
        assert await lock.release_async() is True
    asyncio.run(main())


def test_failover_keeps_the_lock(cluster):
    endpoints = [f"127.0.0.1:{n.port}" for n in cluster]
    c = fencelock.Client(endpoints)
    lock = c.lock("failover", ttl=3)
    fence = lock.fence
    status = {}
    # The leader: ask any node.
    import redis
    r = redis.Redis(port=cluster[0].port)
    for line in r.execute_command("CLUSTER.STATUS").decode().splitlines():
        key, _, value = line.partition(":")
        status[key] = value
    leader = int(status["leader_id"])
    cluster[leader - 1].kill()
    time.sleep(6)  # two TTLs: renewed through a survivor across the election
    assert lock.valid, lock.lost_reason
    assert c.fence("failover") == fence, "still held with the same fence"
    other = fencelock.Client([e for i, e in enumerate(endpoints) if i != leader - 1])
    assert other.try_lock("failover", ttl=3) is None
    assert lock.release() is True
