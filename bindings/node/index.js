'use strict'
// fencelock for Node: the native addon (Rust, napi-rs) does the work; this file only
// turns each error into its class and adds disposal hooks.

const native = require('./fencelock.node')

class FencelockError extends Error {
  constructor (message) {
    super(message)
    this.name = this.constructor.name
  }
}
const kinds = ['NotHolder', 'Conflict', 'NoSession', 'ConditionFailed', 'LimitExceeded', 'AuthError',
  'InvalidRequest', 'Unavailable', 'OutcomeUnknown', 'LockLost', 'ProtocolError', 'Timeout']
const errors = { FencelockError }
for (const kind of kinds) {
  errors[kind] = { [kind]: class extends FencelockError {} }[kind]
}

// The addon prefixes each message with its kind: "NotHolder: ...".
function convert (e) {
  const m = /^(\w+): ([\s\S]*)$/.exec(e && e.message)
  if (m && errors[m[1]] && m[1] !== 'FencelockError') {
    const converted = new errors[m[1]](m[2])
    converted.cause = e
    return converted
  }
  return e
}
// napi-rs 3 resolves (rather than rejects) the Promise of an async *method* that
// returned Err with the Error object, so both paths are turned into a rejection.
const wrap = (fn) => async function (...args) {
  let result
  try {
    result = await fn.apply(this, args)
  } catch (e) {
    throw convert(e)
  }
  if (result instanceof Error) throw convert(result)
  return result
}
for (const cls of [native.Client, native.Lock, native.Permit, native.Leadership, native.Watch, native.Session]) {
  for (const name of Object.getOwnPropertyNames(cls.prototype)) {
    const d = Object.getOwnPropertyDescriptor(cls.prototype, name)
    if (name !== 'constructor' && typeof d.value === 'function') {
      cls.prototype[name] = wrap(d.value)
    }
  }
}
const Lock = native.Lock
if (typeof Symbol.asyncDispose === 'symbol') {
  // `await using lock = await client.lock(...)` where the runtime supports it.
  Lock.prototype[Symbol.asyncDispose] = function () { return this.release() }
}
if (typeof Symbol.asyncDispose === 'symbol') {
  // `await using session = await client.session(10)`: closed on leaving the scope.
  native.Session.prototype[Symbol.asyncDispose] = function () { return this.close() }
}
/** Calls `callback(reason)` when the lock is lost (not on release). */
Lock.prototype.onLost = function (callback) {
  this.waitLost().then((reason) => {
    if (reason && reason !== 'released' && reason !== 'dropped') callback(reason)
  }, () => {})
}

class EmbeddedServer extends native.EmbeddedServer {
  constructor () {
    try {
      super()
    } catch (e) {
      throw convert(e)
    }
  }
}

module.exports = {
  connect: wrap(native.connect),
  Client: native.Client,
  Lock,
  Permit: native.Permit,
  Leadership: native.Leadership,
  Watch: native.Watch,
  Session: native.Session,
  EmbeddedServer,
  ...errors
}
