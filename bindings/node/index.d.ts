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

export interface HeldOptions {
  /** Lease in seconds (default 30), renewed in the background. */
  ttl?: number
  /** Seconds to queue (default: only if free now). */
  wait?: number
}

export interface LeaderInfo {
  candidate: string
  /** The leader's fence (term). */
  fence: number
  value: string
}

export interface WatchEvent {
  /** The log index of the change (the same on every node). */
  revision: number
  /** set, del, expired, released, revoked, leader. */
  kind: string
  target: string
  /** For elections: the new leader (null: nobody leads). */
  candidate: string | null
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
  /** SET key value. */
  set (key: string, value: string): Promise<void>
  /** Takes a permit of semaphore `name` (at most `limit` at once); null when none came free. */
  acquirePermit (name: string, limit: number, options?: HeldOptions): Promise<Permit | null>
  /** Campaigns to lead election `name`; null when another candidate still leads. */
  campaign (name: string, candidate: string, value: string, options?: HeldOptions): Promise<Leadership | null>
  /** The current leader of election `name`, or null. */
  leader (name: string): Promise<LeaderInfo | null>
  /** Watches "key", "prefix", "lock" or "election" `name`. */
  watch (kind: string, name: string, fromRevision?: number): Promise<Watch>
  /** Opens a session of `ttl` seconds, kept alive in the background. */
  session (ttl: number): Promise<Session>
}

/** Locks taken with `session.lock` are held as long as the session lives. */
export declare class Session {
  readonly id: number
  /** Still valid by the client's clock and not known lost. */
  readonly valid: boolean
  /** A lock held by this session; without `ttl` it has no lease of its own, with one it is valid while both are. */
  lock (name: string, options?: LockOptions): Promise<Lock>
  /** Closes it: everything it holds is released now. */
  close (): Promise<void>
}

export declare class Permit {
  readonly fence: number
  readonly valid: boolean
  /** Gives it back: true if it was still held. */
  release (): Promise<boolean>
}

export declare class Leadership {
  readonly fence: number
  readonly valid: boolean
  /** Resigns: true if it still led. */
  release (): Promise<boolean>
}

export declare class Watch {
  /** The next change, or null after `timeout` seconds. */
  next (timeout: number): Promise<WatchEvent | null>
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
