// Type declarations for fencelock (kept in sync with src/lib.rs and index.js; the
// tests compare them with the module's exports).

export interface ConnectOptions {
  /** The server's requirepass. */
  password?: string
  /** Seconds a request that is safe to repeat is retried across nodes (default 15). */
  retryFor?: number
  /** The clock drift allowed for when counting a lease down (default 0.01). */
  drift?: number
}

export interface LockOptions {
  /** Lease in seconds (default 30), renewed in the background. */
  ttl?: number
  /** Seconds to queue for it (default: as long as it takes). Ignored by tryLock. */
  wait?: number
  /** A shared (read) lock. */
  shared?: boolean
  /** Renew in the background (default true). */
  autoRenew?: boolean
}

/** Connects to the first endpoint ("host:port") that answers. */
export function connect (endpoints: string[], options?: ConnectOptions): Promise<Client>

export declare class Client {
  /** Acquires a lock, queueing up to `wait` seconds; rejects with Timeout when it runs out. */
  lock (name: string, options?: LockOptions): Promise<Lock>
  /** Acquires a lock if it is free now; null when held. */
  tryLock (name: string, options?: LockOptions): Promise<Lock | null>
  /** The current fence of a lock, or null when it is free. */
  fence (name: string): Promise<number | null>
  /** GET key (linearizable). */
  get (key: string): Promise<Buffer | null>
}

export declare class Lock {
  /** The fencing token: pass it to the storage you protect. */
  readonly fence: number
  readonly token: string
  readonly name: string
  /** Still valid by the client's own conservative clock and not known lost. */
  readonly valid: boolean
  /** Seconds of validity left. */
  readonly remaining: number
  readonly lostReason: string | null
  /** Resolves with the reason when lost (or "released"), or null after `timeout` seconds. */
  waitLost (timeout?: number): Promise<string | null>
  /** Calls `callback(reason)` when the lock is lost (not on release). */
  onLost (callback: (reason: string) => void): void
  /** true if it was still held, false if it had expired or been taken. */
  release (): Promise<boolean>
  [Symbol.asyncDispose] (): Promise<boolean>
}

export declare class EmbeddedServer {
  /** Starts a single node on 127.0.0.1, an ephemeral port, a temp data dir. */
  constructor ()
  readonly port: number
  readonly endpoint: string
  stop (): void
}

export declare class FencelockError extends Error {}
export declare class NotHolder extends FencelockError {}
export declare class Conflict extends FencelockError {}
export declare class NoSession extends FencelockError {}
export declare class ConditionFailed extends FencelockError {}
export declare class LimitExceeded extends FencelockError {}
export declare class AuthError extends FencelockError {}
export declare class InvalidRequest extends FencelockError {}
export declare class Unavailable extends FencelockError {}
export declare class OutcomeUnknown extends FencelockError {}
export declare class LockLost extends FencelockError {}
export declare class ProtocolError extends FencelockError {}
export declare class Timeout extends FencelockError {}
