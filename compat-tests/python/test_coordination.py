"""Coordination primitives through redis-py 8 (execute_command and its PubSub), against
the real binary: what a Python service would do without a fencelock-specific client."""
import time

import redis


def client(server):
    return redis.Redis(port=server.port, socket_timeout=10, decode_responses=True)


def fields(reply):
    """A map: a dict over RESP3 (redis-py 8's default), flat [k1, v1, ...] over RESP2."""
    return reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2]))


def test_bound_session_election_and_semaphore_release_when_the_process_goes(server):
    observer = client(server).pubsub()
    observer.subscribe("__election__:py-ctl")
    assert observer.get_message(timeout=5)["type"] == "subscribe"

    owner = client(server)
    session = owner.execute_command("SESSION.OPEN", 1000)
    # redis-py pools connections: pin one so the bind and the commands share it.
    with owner.client() as pinned:
        assert pinned.execute_command("SESSION.BIND", session) in (b"OK", "OK", True)
        grant = fields(pinned.execute_command("ELECT.CAMPAIGN", "py-ctl", "worker-1", 0, "VALUE", "10.0.0.1"))
        permit = fields(pinned.execute_command("SEM.ACQUIRE", "py-pool", 1, 0))
        message = observer.get_message(timeout=5)
        assert message["data"] == "worker-1"
        leader = fields(client(server).execute_command("ELECT.LEADER", "py-ctl"))
        assert (leader["candidate"], leader["value"], leader["session"]) == ("worker-1", "10.0.0.1", session)
        time.sleep(1.5)  # past the TTL: the node keeps the bound session alive
        assert client(server).execute_command("ELECT.LEADER", "py-ctl") is not None
    owner.close()  # the process "dies": its connections close
    started = time.time()
    message = observer.get_message(timeout=5)
    assert message["data"] == "", "observers see the leader go"
    assert time.time() - started < 2.5
    assert client(server).execute_command("ELECT.LEADER", "py-ctl") is None
    assert fields(client(server).execute_command("SEM.INFO", "py-pool"))["in_use"] == 0
    assert int(grant["fence"]) < int(permit["fence"])


def test_keyspace_notifications_config_store_and_queues(server):
    c = client(server)
    p = c.pubsub()
    p.psubscribe("__keyspace@0__:py-cfg*")
    assert p.get_message(timeout=5)["type"] == "psubscribe"
    c.set("py-cfg:a", "1")
    message = p.get_message(timeout=5)
    assert (message["channel"], message["data"]) == ("__keyspace@0__:py-cfg:a", "set")

    v1 = c.execute_command("CFG.SET", "py/flag", "on", "IFVERSION", 0)
    try:
        c.execute_command("CFG.SET", "py/flag", "off", "IFVERSION", 0)
        raise AssertionError("create-only CFG.SET succeeded twice")
    except redis.ResponseError as e:
        assert str(e).startswith("CONDFAILED")
    assert fields(c.execute_command("CFG.GET", "py/flag")) == {"value": "on", "version": v1}

    assert c.execute_command("QUEUE.PUSH", "py-jobs", "PRIORITY", 5, "a") == 1
    assert c.execute_command("QUEUE.POP", "py-jobs") == "a"
    assert c.execute_command("QUEUE.POP", "py-jobs", "WAIT", 100) is None
