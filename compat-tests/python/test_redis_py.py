"""redis-py 8 (RESP3 handshake by default) against fencelock, unmodified."""
import threading
import time

import pytest
import redis
from redis.exceptions import LockError, LockNotOwnedError, NoScriptError, ResponseError


@pytest.fixture(params=[3, 2], ids=["resp3", "resp2"])
def r(server, request):
    client = redis.Redis(port=server.port, protocol=request.param, socket_timeout=10)
    # Both protocol runs share one server: keep their keys apart.
    client.p = f"py{request.param}"
    yield client
    client.close()


def test_handshake_and_introspection(r):
    assert r.ping() is True
    info = r.info()
    assert info["loading"] == 0
    assert info["role"] == "master"
    me = r.client_info()
    assert me["lib-name"] == "redis-py"
    assert r.echo("hi") == b"hi"
    assert r.client_setname("worker-1")
    assert r.client_getname() in ("worker-1", b"worker-1")


def scripts_run(r):
    stats = r.info("stats")
    return stats["fencelock_scripts_native"], stats["fencelock_scripts_vm"]


def test_lock_acquire_extend_reacquire_release(r):
    native_before, vm_before = scripts_run(r)
    lock = r.lock(f"{r.p}:resource", timeout=10)
    assert lock.acquire(blocking=False)
    assert lock.owned() and lock.locked()
    assert r.pttl(f"{r.p}:resource") > 9_000
    assert lock.extend(5)
    assert 14_000 < r.pttl(f"{r.p}:resource") <= 15_000
    assert lock.reacquire()
    assert 9_000 < r.pttl(f"{r.p}:resource") <= 10_000
    other = r.lock(f"{r.p}:resource", timeout=10)
    assert not other.acquire(blocking=False)
    lock.release()
    assert not lock.locked()
    assert other.acquire(blocking=False)
    other.release()
    # redis-py's release, extend and reacquire scripts are the installed package's
    # bytes: the server recognises them and runs them natively (if redis-py changes a
    # script, this fails and fencelock's table needs the new bytes).
    native_after, vm_after = scripts_run(r)
    assert (native_after - native_before, vm_after - vm_before) == (4, 0)


def test_every_acquire_records_a_larger_fence(r):
    fences = []
    for _ in range(3):
        lock = r.lock(f"{r.p}:fenced", timeout=10)
        assert lock.acquire(blocking=False)
        fences.append(r.execute_command("FENCE", f"{r.p}:fenced"))
        lock.release()
    assert fences == sorted(fences) and len(set(fences)) == 3


def test_blocking_acquire_waits_for_release(r, server):
    holder = r.lock(f"{r.p}:blocking", timeout=10)
    assert holder.acquire(blocking=False)
    got = {}

    def waiter():
        client = redis.Redis(port=server.port)
        lock = client.lock(f"{r.p}:blocking", timeout=10, blocking_timeout=5, sleep=0.02)
        started = time.time()
        got["acquired"] = lock.acquire()
        got["waited"] = time.time() - started
        lock.release()

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.3)
    holder.release()
    t.join(10)
    assert got["acquired"] is True
    assert 0.2 < got["waited"] < 5


def test_lock_expires_and_release_after_expiry_is_refused(r):
    lock = r.lock(f"{r.p}:short", timeout=0.2)
    assert lock.acquire(blocking=False)
    time.sleep(0.5)
    assert not lock.locked()
    # The server refuses both: the lease is gone (redis-py forgets its token on release,
    # so extend is tried first).
    with pytest.raises(LockNotOwnedError):
        lock.extend(1)
    with pytest.raises(LockNotOwnedError):
        lock.release()


def test_lock_in_a_pipeline_of_scripts(r):
    # Pipelines send SCRIPT EXISTS / SCRIPT LOAD before EVALSHA.
    lock = r.lock(f"{r.p}:pipelined", timeout=10)
    assert lock.acquire(blocking=False)
    pipe = r.pipeline()
    pipe.get(f"{r.p}:pipelined")
    pipe.pttl(f"{r.p}:pipelined")
    value, ttl = pipe.execute()
    assert value == lock.local.token
    assert ttl > 9_000
    lock.release()
    with pytest.raises(LockError):
        lock.release()


def test_scripts(r):
    assert r.eval("return {1, 'two', false, {ok='three'}}", 0) == [1, b"two", None, b"three"]
    sha = r.script_load("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert r.script_exists(sha) == [True]
    assert r.evalsha(sha, 1, f"{r.p}:counter", 5) == 5
    with pytest.raises(NoScriptError):
        r.evalsha("0" * 40, 0)
    # A failed script leaves nothing behind.
    r.set(f"{r.p}:text", "not a number")
    with pytest.raises(ResponseError, match="not an integer"):
        r.eval("redis.call('SET', KEYS[1], 'x'); return redis.call('INCR', KEYS[2])", 2, f"{r.p}:partial", f"{r.p}:text")
    assert r.get(f"{r.p}:partial") is None


def test_keyspace_commands(r):
    assert r.set(f"{r.p}:k", "v", nx=True, px=60_000)
    db0 = r.info("keyspace")["db0"]
    assert db0["keys"] >= 1 and db0["expires"] >= 1 and 0 < db0["avg_ttl"] <= 60_000
    assert r.set(f"{r.p}:k", "w", nx=True) is None
    assert r.get(f"{r.p}:k") == b"v"
    assert r.set(f"{r.p}:k", "w", xx=True, get=True) == b"v"
    assert r.ttl(f"{r.p}:k") == -1
    assert r.expire(f"{r.p}:k", 100) and 99 <= r.ttl(f"{r.p}:k") <= 100
    assert r.persist(f"{r.p}:k") and r.ttl(f"{r.p}:k") == -1
    assert r.incr(f"{r.p}:n") == 1 and r.incrby(f"{r.p}:n", 9) == 10 and r.decr(f"{r.p}:n") == 9
    assert r.hset(f"{r.p}:h", mapping={"a": "1", "b": "2"}) == 2
    assert r.hincrby(f"{r.p}:h", "a", 5) == 6
    assert r.hgetall(f"{r.p}:h") == {b"a": b"6", b"b": b"2"}
    assert r.hexists(f"{r.p}:h", "b") and r.hdel(f"{r.p}:h", "b") == 1
    assert r.rpush(f"{r.p}:l", "x", "y") == 2 and r.lpop(f"{r.p}:l") == b"x"
    assert r.type(f"{r.p}:h") in (b"hash", "hash")
    assert f"{r.p}:k".encode() in r.keys(f"{r.p}:*")
    assert set(r.scan_iter(f"{r.p}:*")) >= {f"{r.p}:k".encode(), f"{r.p}:n".encode(), f"{r.p}:h".encode(), f"{r.p}:l".encode()}
    assert r.exists(f"{r.p}:k", f"{r.p}:nope") == 1
    assert r.delete(f"{r.p}:k", f"{r.p}:n") == 2
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        r.get(f"{r.p}:h")


def test_blpop_served_by_another_client(r, server):
    def push():
        time.sleep(0.2)
        redis.Redis(port=server.port).rpush(f"{r.p}:queue", "job")

    threading.Thread(target=push).start()
    assert r.blpop([f"{r.p}:queue"], timeout=5) in ([f"{r.p}:queue".encode(), b"job"], (f"{r.p}:queue".encode(), b"job"))
    assert r.blpop([f"{r.p}:empty"], timeout=0.2) is None


def test_native_lock_commands(r):
    reply = r.execute_command("LOCK", f"{r.p}:native", 5000, "TOKEN", "tok-1")
    grant = dict(zip(reply[::2], reply[1::2])) if isinstance(reply, list) else reply
    grant = {k.decode() if isinstance(k, bytes) else k: v for k, v in grant.items()}
    assert grant["token"] == b"tok-1" and grant["holds"] == 1 and grant["ttl"] == 5000
    assert r.execute_command("LOCK", f"{r.p}:native", 5000, "TOKEN", "tok-2") is None
    assert r.execute_command("FENCE", f"{r.p}:native") == grant["fence"]
    assert r.execute_command("UNLOCK", f"{r.p}:native", "tok-1") == 0
    with pytest.raises(ResponseError, match="NOTHOLDER"):
        r.execute_command("UNLOCK", f"{r.p}:native", "tok-1")


def test_auth_required(auth_server):
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=auth_server.port, password="wrong").ping()
    assert redis.Redis(port=auth_server.port, password="s3cret").ping()
    assert redis.Redis(port=auth_server.port, password="s3cret", protocol=2).ping()
    with pytest.raises((redis.exceptions.AuthenticationError, ResponseError)):
        redis.Redis(port=auth_server.port).get("k")


def wait_message(pubsub, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message:
            return message
    return None


def test_pubsub_channels_patterns_and_script_publish(r, server):
    sub = redis.Redis(port=server.port, protocol=r.get_connection_kwargs().get("protocol", 2)).pubsub()
    sub.subscribe(f"{r.p}:events")
    sub.psubscribe(f"{r.p}:lock:*")
    # Wait until both subscriptions are confirmed.
    confirmations = 0
    deadline = time.time() + 5
    while confirmations < 2 and time.time() < deadline:
        m = sub.get_message(timeout=0.1)
        if m and m["type"] in ("subscribe", "psubscribe"):
            confirmations += 1
    assert confirmations == 2
    assert r.publish(f"{r.p}:events", "hello") == 1
    m = wait_message(sub)
    assert m["type"] == "message" and m["data"] == b"hello"
    # Redisson's unlock publishes from inside its script: redis.call(ARGV[n], channel, msg).
    r.eval("return redis.call(ARGV[1], KEYS[1], ARGV[2])", 1, f"{r.p}:lock:orders", "PUBLISH", "released")
    m = wait_message(sub)
    assert m["type"] == "pmessage" and m["channel"] == f"{r.p}:lock:orders".encode() and m["data"] == b"released"
    sub.unsubscribe()
    sub.punsubscribe()
    sub.close()


def test_resp2_subscribed_connection_may_only_manage_subscriptions(server):
    import socket

    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    s.sendall(b"SUBSCRIBE ch\r\n")
    time.sleep(0.2)
    assert s.recv(4096) == b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    s.sendall(b"GET k\r\n")
    time.sleep(0.2)
    assert s.recv(4096).startswith(b"-ERR Can't execute 'get'")
    s.sendall(b"PING\r\n")
    time.sleep(0.2)
    assert s.recv(4096) == b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
    s.close()
