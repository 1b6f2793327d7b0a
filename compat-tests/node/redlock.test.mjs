// ioredis 5 (INFO ready check, RESP2) driving node-redlock v5 unmodified against fencelock.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import Redis from "ioredis";
import Redlock, { ExecutionError } from "redlock";
import { startServer } from "./server.mjs";

let server;
let clients = [];

function client() {
  const c = new Redis({ port: server.port, host: "127.0.0.1", maxRetriesPerRequest: 1, enableReadyCheck: true });
  clients.push(c);
  return c;
}

before(async () => {
  server = await startServer();
});

after(() => {
  for (const c of clients) c.disconnect();
  server.stop();
});

test("ioredis connects through its INFO ready check and sees loading:0", async () => {
  const redis = client();
  assert.equal(await redis.ping(), "PONG");
  assert.equal(redis.status, "ready");
  assert.match(await redis.info("persistence"), /loading:0/);
});

test("redlock acquire, extend and release", async () => {
  const redlock = new Redlock([client()], { retryCount: 0 });
  const lock = await redlock.acquire(["node:a", "node:b"], 2000);
  assert.equal(lock.resources.length, 2);
  const redis = client();
  assert.equal(await redis.get("node:a"), lock.value);
  const pttl = await redis.pttl("node:b");
  assert.ok(pttl > 1000 && pttl <= 2000, `pttl ${pttl}`);
  const extended = await lock.extend(5000);
  assert.ok((await redis.pttl("node:a")) > 4000);
  await extended.release();
  assert.equal(await redis.exists("node:a", "node:b"), 0);
});

test("redlock's acquire, extend and release scripts run natively", async () => {
  // The installed package's script bytes are the ones fencelock recognises; if a
  // release changes them, this fails and the server's table needs the new bytes.
  const redis = client();
  const runs = async () => {
    const stats = await redis.info("stats");
    return [/fencelock_scripts_native:(\d+)/, /fencelock_scripts_vm:(\d+)/].map((re) => Number(stats.match(re)[1]));
  };
  const [nativeBefore, vmBefore] = await runs();
  const redlock = new Redlock([client()], { retryCount: 0 });
  const lock = await redlock.acquire(["node:native"], 2000);
  const extended = await lock.extend(3000);
  await extended.release();
  const [nativeAfter, vmAfter] = await runs();
  assert.deepEqual([nativeAfter - nativeBefore, vmAfter - vmBefore], [3, 0]);
});

test("a held resource cannot be acquired by another redlock until released", async () => {
  const first = new Redlock([client()], { retryCount: 0 });
  const second = new Redlock([client()], { retryCount: 0 });
  const lock = await first.acquire(["node:contended"], 5000);
  await assert.rejects(second.acquire(["node:contended"], 5000), ExecutionError);
  await lock.release();
  const again = await second.acquire(["node:contended"], 5000);
  await again.release();
});

test("a waiting redlock with retries gets the lock after release", async () => {
  const holder = new Redlock([client()], { retryCount: 0 });
  const waiter = new Redlock([client()], { retryCount: 50, retryDelay: 20, retryJitter: 5 });
  const lock = await holder.acquire(["node:retry"], 5000);
  setTimeout(() => lock.release(), 200);
  const started = Date.now();
  const got = await waiter.acquire(["node:retry"], 5000);
  assert.ok(Date.now() - started >= 150);
  await got.release();
});

test("redlock using() runs the routine under an auto-extended lock", async () => {
  const redlock = new Redlock([client()], { retryCount: 0, automaticExtensionThreshold: 200 });
  const redis = client();
  const value = await redlock.using(["node:using"], 600, async (signal) => {
    await new Promise((r) => setTimeout(r, 900));
    assert.equal(signal.aborted, false);
    return await redis.exists("node:using");
  });
  assert.equal(value, 1, "still held after more than the TTL thanks to extension");
  assert.equal(await redis.exists("node:using"), 0, "released after the routine");
});

test("extending an expired lock fails", async () => {
  const redlock = new Redlock([client()], { retryCount: 0 });
  const lock = await redlock.acquire(["node:expiring"], 100);
  await new Promise((r) => setTimeout(r, 300));
  await assert.rejects(lock.extend(1000), ExecutionError);
});

test("fences increase with every SET-based acquisition", async () => {
  const redlock = new Redlock([client()], { retryCount: 0 });
  const redis = client();
  const fences = [];
  for (let i = 0; i < 3; i++) {
    const lock = await redlock.acquire(["node:fenced"], 2000);
    fences.push(await redis.call("FENCE", "node:fenced"));
    await lock.release();
  }
  assert.deepEqual([...fences].sort((a, b) => a - b), fences);
  assert.equal(new Set(fences).size, 3);
});
