'use strict'
// fencelock for Node against real servers: the embedded one and a 3-node cluster of
// fencelock processes ($FENCELOCK_BIN).
const test = require('node:test')
const assert = require('node:assert')
const { spawn } = require('node:child_process')
const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')
const readline = require('node:readline')

const fencelock = require('..')
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

test('lock, unlock, and fences rise', async () => {
  const server = new fencelock.EmbeddedServer()
  try {
    const c = await fencelock.connect([server.endpoint])
    const lock = await c.lock('orders:1', { ttl: 10 })
    assert.ok(lock.valid)
    assert.strictEqual(await c.fence('orders:1'), lock.fence)
    let last = lock.fence
    assert.strictEqual(await lock.release(), true)
    assert.strictEqual(await lock.release(), false, 'a second release says it was not held')
    assert.strictEqual(await c.fence('orders:1'), null)
    for (let i = 0; i < 5; i++) {
      const l = await c.lock('orders:1', { ttl: 10 })
      assert.ok(l.fence > last, 'fences strictly increase')
      last = l.fence
      await l.release()
    }
  } finally {
    server.stop()
  }
})

test('two clients contend', async () => {
  const server = new fencelock.EmbeddedServer()
  try {
    const a = await fencelock.connect([server.endpoint])
    const b = await fencelock.connect([server.endpoint])
    const held = await a.lock('res', { ttl: 10 })
    assert.strictEqual(await b.tryLock('res', { ttl: 10 }), null)
    await assert.rejects(b.lock('res', { ttl: 10, wait: 0.2 }), fencelock.Timeout)
    const waiting = b.lock('res', { ttl: 10 })
    await sleep(200)
    await held.release()
    const next = await waiting
    assert.ok(next.fence > held.fence)
    await next.release()
  } finally {
    server.stop()
  }
})

test('auto-renew keeps a lock past its TTL', async () => {
  const server = new fencelock.EmbeddedServer()
  try {
    const c = await fencelock.connect([server.endpoint])
    const lock = await c.lock('renewed', { ttl: 0.6 })
    await sleep(2000)
    assert.ok(lock.valid, lock.lostReason)
    assert.strictEqual(await c.fence('renewed'), lock.fence)
    await lock.release()
  } finally {
    server.stop()
  }
})

test('the lost signal fires when the server stops', async () => {
  const server = new fencelock.EmbeddedServer()
  const c = await fencelock.connect([server.endpoint])
  const lock = await c.lock('job', { ttl: 0.9 })
  let fired = null
  lock.onLost((reason) => { fired = reason })
  const started = Date.now()
  server.stop()
  const reason = await lock.waitLost(5)
  assert.ok(reason && reason.includes('validity ran out'), reason)
  assert.ok(Date.now() - started < 900, 'within the TTL')
  assert.strictEqual(lock.valid, false)
  await sleep(50)
  assert.ok(fired, 'the callback ran')
})

test('errors map to their classes', async () => {
  const server = new fencelock.EmbeddedServer()
  try {
    const c = await fencelock.connect([server.endpoint])
    await assert.rejects(c.lock('x', { ttl: 0 }), fencelock.InvalidRequest)
    await assert.rejects(c.lock('x', { ttl: -1 }), (e) => e instanceof fencelock.InvalidRequest && e instanceof fencelock.FencelockError)
    await assert.rejects(fencelock.connect(['127.0.0.1:1'], { retryFor: 0.3 }), fencelock.Unavailable)
  } finally {
    server.stop()
  }
})

test('semaphores, elections and watches', async () => {
  const server = new fencelock.EmbeddedServer()
  try {
    const c = await fencelock.connect([server.endpoint])
    const p1 = await c.acquirePermit('pool', 2, { ttl: 10 })
    const p2 = await c.acquirePermit('pool', 2, { ttl: 10 })
    assert.ok(p1 && p2 && p2.fence > p1.fence)
    assert.strictEqual(await c.acquirePermit('pool', 2, { ttl: 10, wait: 0.1 }), null)
    assert.strictEqual(await p1.release(), true)
    assert.ok(await c.acquirePermit('pool', 2, { ttl: 10 }))

    const w = await c.watch('election', 'leader')
    const lead = await c.campaign('leader', 'n1', 'addr-1', { ttl: 10 })
    assert.strictEqual((await c.leader('leader')).candidate, 'n1')
    const event = await w.next(5)
    assert.strictEqual(event.kind, 'leader')
    assert.strictEqual(event.candidate, 'n1')
    assert.strictEqual(await lead.release(), true)
    assert.strictEqual(await c.leader('leader'), null)

    const keys = await c.watch('prefix', 'cfg/')
    await c.set('cfg/a', '1')
    const change = await keys.next(5)
    assert.deepStrictEqual([change.kind, change.target], ['set', 'cfg/a'])
    await assert.rejects(c.watch('nope', 'x'), fencelock.InvalidRequest)
  } finally {
    server.stop()
  }
})

const handedOut = new Set()
function freePort () {
  return new Promise((resolve) => {
    const port = 20000 + Math.floor(Math.random() * 12000)
    if (handedOut.has(port)) return resolve(freePort())
    handedOut.add(port)
    const s = net.createServer()
    s.once('error', () => resolve(freePort()))
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(port)))
  })
}

function startNode (id, peers, dir) {
  const bin = process.env.FENCELOCK_BIN
  assert.ok(bin, 'set FENCELOCK_BIN to a built fencelock binary')
  const child = spawn(bin, ['--port', '0', '--bind', '127.0.0.1', '--node-id', String(id), '--peers', peers,
    '--data-dir', path.join(dir, `n${id}`)], { stdio: ['ignore', 'pipe', 'ignore'] })
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`node ${id} did not start`)), 30000)
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      const m = /^fencelock ready on 127\.0\.0\.1:(\d+)/.exec(line)
      if (m) {
        clearTimeout(timer)
        resolve({ child, port: Number(m[1]) })
      }
    })
  })
}

function clusterStatus (port) {
  // CLUSTER.STATUS over raw RESP (a bulk string of key:value lines).
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1', () => sock.write('*1\r\n$14\r\nCLUSTER.STATUS\r\n'))
    let data = ''
    sock.on('data', (d) => {
      data += d
      const m = /^\$(\d+)\r\n/.exec(data)
      if (m && data.length >= m[0].length + Number(m[1])) {
        sock.end()
        resolve(data.slice(m[0].length, m[0].length + Number(m[1])))
      }
    })
    sock.on('error', reject)
  })
}

test('failover to another node keeps the lock', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fencelock-node-'))
  const ports = [await freePort(), await freePort(), await freePort()]
  const peers = ports.map((p, i) => `${i + 1}=127.0.0.1:${p}`).join(',')
  const nodes = await Promise.all([1, 2, 3].map((id) => startNode(id, peers, dir)))
  try {
    const endpoints = nodes.map((n) => `127.0.0.1:${n.port}`)
    const c = await fencelock.connect(endpoints)
    const lock = await c.lock('failover', { ttl: 3 })
    const status = await clusterStatus(nodes[0].port)
    const leader = Number(/leader_id:(\d+)/.exec(status)[1])
    nodes[leader - 1].child.kill('SIGKILL')
    await sleep(6000)
    assert.ok(lock.valid, lock.lostReason)
    assert.strictEqual(await c.fence('failover'), lock.fence, 'still held with the same fence')
    assert.strictEqual(await lock.release(), true)
  } finally {
    for (const n of nodes) n.child.kill('SIGKILL')
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('a session holds its locks until it closes, and a ttl given with it is kept', async () => {
  const server = new fencelock.EmbeddedServer()
  try {
    const c = await fencelock.connect([server.endpoint])
    const session = await c.session(2)
    assert.ok(session.id > 0 && session.valid)
    const held = await session.lock('by-session')
    const leased = await session.lock('leased', { ttl: 1, autoRenew: false })
    await sleep(2500)
    assert.ok(session.valid && held.valid, 'the session is kept alive in the background')
    assert.strictEqual(await c.fence('by-session'), held.fence)
    assert.strictEqual(await c.fence('leased'), null, 'its own 1 s lease ran out under the live session')
    await session.close()
    assert.ok(!session.valid)
    assert.strictEqual(await c.fence('by-session'), null, 'closing the session released it')
    await assert.rejects(session.lock('after'), fencelock.NoSession)
  } finally {
    server.stop()
  }
})
