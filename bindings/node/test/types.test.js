'use strict'
// index.d.ts declares exactly what the module exports, with the same methods.
const test = require('node:test')
const assert = require('node:assert')
const fs = require('node:fs')
const path = require('node:path')

const fencelock = require('..')
const dts = fs.readFileSync(path.join(__dirname, '..', 'index.d.ts'), 'utf8')

test('every export is declared and every declaration exported', () => {
  const declared = new Set([...dts.matchAll(/^export (?:declare class|function) (\w+)/gm)].map((m) => m[1]))
  const exported = new Set(Object.keys(fencelock))
  assert.deepStrictEqual([...declared].sort(), [...exported].sort())
})

test('every class method is declared', () => {
  for (const m of dts.matchAll(/^export declare class (\w+)[^{]*\{([\s\S]*?)^\}/gm)) {
    const [, name, body] = m
    const cls = fencelock[name]
    if (cls.prototype instanceof Error) continue
    const declared = new Set([...body.matchAll(/^ {2}(?:readonly )?(\w+)/gm)].map((x) => x[1]).filter((x) => x !== 'constructor'))
    // Own and inherited (EmbeddedServer extends the native class) up to Object.
    const actual = new Set()
    for (let p = cls.prototype; p && p !== Object.prototype; p = Object.getPrototypeOf(p)) {
      for (const x of Object.getOwnPropertyNames(p)) if (x !== 'constructor') actual.add(x)
    }
    assert.deepStrictEqual([...actual].sort(), [...declared].sort(), `${name}: index.d.ts out of date`)
  }
})

test('locks dispose with `await using` where Node has Symbol.asyncDispose', () => {
  if (typeof Symbol.asyncDispose === 'symbol') {
    assert.strictEqual(typeof fencelock.Lock.prototype[Symbol.asyncDispose], 'function')
  }
})
