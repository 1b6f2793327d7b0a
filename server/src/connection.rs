//! One client connection: read requests, answer them strictly in order, keep the
//! connection's own state (protocol, name, authentication, SCAN cursors).
//!
//! A blocking request (LOCK ... WAIT, BLPOP) suspends this connection only, as in
//! Redis; other connections go on. If the client goes away while waiting, the wait is
//! cancelled through the log so the lock is never granted to a dead connection.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use fencelock_core::{Command, Error, Event, PutBackTo, Reply, WaitEnd};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cmd::script::{ScriptAdmin, Source};
use crate::cmd::{self, render, CmdError, Conn, Request, Shape};
use crate::errors::core_error;
use crate::info;
use crate::node::NodeError;
use crate::resp::request::{Parsed, RequestParser};
use crate::resp::{Proto, Wire};
use crate::server::{ClientInfo, Server};

/// Bytes read per read call while requests keep arriving in bulk (pipelining).
const READ_CHUNK: usize = 16 * 1024;
/// Bytes read per read call when nothing is left over from the last one: a request
/// or two. Idle connections then hold a small buffer: with 16 KiB for input and output
/// each, an idle connection measured 43 KiB of RSS under mimalloc, 17.6 KiB with glibc.
const READ_CHUNK_IDLE: usize = 2 * 1024;
/// Replies buffered before they are written, even if more pipelined requests wait:
/// bounds a connection's output memory whatever the client pipelines.
const OUTPUT_FLUSH_BYTES: usize = 64 * 1024;
/// Most bytes of unanswered requests a connection may buffer (Redis's
/// client-query-buffer-limit, which is 1 GiB there). Every single limit of the parser
/// can hold while one request of many elements grows without bound; this caps it.
pub const QUERY_BUFFER_BYTES_MAX: usize = 64 * 1024 * 1024;

struct Session {
    id: u64,
    proto: Proto,
    authenticated: bool,
    quit: bool,
    /// Commands queued since MULTI, and whether queuing one failed (EXEC then aborts).
    multi: Option<Vec<(Command, Shape)>>,
    multi_failed: bool,
    /// Bytes of the arguments queued since MULTI (`MULTI_BYTES_MAX`).
    multi_bytes: usize,
    /// Messages for this connection's subscriptions (None until it first subscribes).
    messages: Option<crate::pubsub::Inbox>,
    channels: std::collections::BTreeSet<Bytes>,
    patterns: std::collections::BTreeSet<Bytes>,
    /// READONLY: reads answer from this replica without a read index (may be stale).
    stale_reads: bool,
    /// SESSION.BIND: the default session, kept alive while this connection is open.
    bound: Option<BoundSession>,
    /// OBSERVE was used since the last RESET (watches may be active).
    observing: bool,
    /// This connection's CLIENT LIST `cmd=` field.
    last_command: Arc<std::sync::Mutex<Bytes>>,
}

/// A session bound to a connection. Dropping it (unbind, RESET, the connection
/// closing) stops the keep-alives, so the session expires one TTL later: a client that
/// dies loses its ephemeral state, as a ZooKeeper client's does.
struct BoundSession {
    id: u64,
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for BoundSession {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Keeps `session` alive every third of its TTL until it ends or the task is aborted.
async fn keep_alive(server: Arc<Server>, session: u64, ttl_ms: u64) {
    let period = std::time::Duration::from_millis((ttl_ms / 3).max(10));
    loop {
        tokio::time::sleep(period).await;
        match server.node.write(Command::SessionKeepAlive { session, ttl_ms: None }).await {
            Ok(Err(Error::NoSuchSession(_))) => return,
            Ok(_) => {}
            // No leader for a moment: try again next period (a third of the TTL is
            // left for two more tries).
            Err(e) => tracing::debug!(session, "keep-alive failed: {e}"),
        }
    }
}

impl Session {
    fn subscriptions(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }
}

/// Most commands one MULTI may queue.
const MULTI_COMMANDS_MAX: usize = 10_000;
/// Most bytes of arguments one MULTI may queue: what one request may carry (the query
/// buffer bound). Its commands become one log entry, and each was answered QUEUED, so
/// nothing else bounds them: 10,000 DELs of 60 MiB each made an entry past the WAL's
/// record bound, which stopped the node.
const MULTI_BYTES_MAX: usize = QUERY_BUFFER_BYTES_MAX;
/// What a queued argument costs beyond its bytes, for `MULTI_BYTES_MAX`.
const ARG_OVERHEAD_BYTES: usize = 32;

/// The connection's `cmd=` cell in the client table (a fresh one if it is not listed).
fn last_command(server: &Server, id: u64) -> Arc<std::sync::Mutex<Bytes>> {
    let clients = server.clients.lock().expect("not poisoned");
    clients.get(&id).map(|c| Arc::clone(&c.last_command)).unwrap_or_default()
}

/// Serves one connection until it closes.
pub async fn serve(server: Arc<Server>, mut stream: TcpStream, id: u64) {
    let _ = stream.set_nodelay(true);
    let mut parser = RequestParser::new(server.config.request_limits);
    let mut input = BytesMut::with_capacity(READ_CHUNK_IDLE);
    // Grows with the first reply to what replies need.
    let mut output = BytesMut::new();
    let mut session = Session {
        id,
        proto: Proto::Resp2,
        authenticated: server.config.requirepass.is_none(),
        quit: false,
        multi: None,
        multi_failed: false,
        multi_bytes: 0,
        messages: None,
        channels: Default::default(),
        patterns: Default::default(),
        stale_reads: false,
        bound: None,
        observing: false,
        last_command: last_command(&server, id),
    };
    serve_session(&server, &mut stream, &mut session, &mut parser, &mut input, &mut output).await;
    server.node.sm.shared.pubsub.detach(id);
    server.node.sm.shared.watches.drop_conn(id);
}

/// Waits for the next pub/sub message, or forever if not subscribed.
async fn next_message(messages: &mut Option<crate::pubsub::Inbox>) -> Option<Wire> {
    match messages {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn serve_session(
    server: &Arc<Server>,
    stream: &mut TcpStream,
    session: &mut Session,
    parser: &mut RequestParser,
    input: &mut BytesMut,
    output: &mut BytesMut,
) {
    loop {
        // Answer every complete request already buffered (pipelining), then write.
        loop {
            match parser.parse(input) {
                Ok(Some(Parsed::Command(args))) => {
                    let reply = handle(server, session, args, stream, input).await;
                    match reply {
                        Some(reply) => reply.encode(session.proto, output),
                        None => return, // the client went away while blocked
                    }
                    server.stats.commands.fetch_add(1, Ordering::Relaxed);
                    if output.len() >= OUTPUT_FLUSH_BYTES {
                        if stream.write_all(output).await.is_err() {
                            return;
                        }
                        output.clear();
                    }
                    if session.quit {
                        let _ = stream.write_all(output).await;
                        return;
                    }
                }
                Ok(Some(Parsed::Refused(e))) => {
                    // A request refused inside MULTI fails the transaction, as any other
                    // error while queueing does: EXEC must not commit the rest without it.
                    if session.multi.is_some() {
                        session.multi_failed = true;
                    }
                    Wire::Error(format!("ERR {e}")).encode(session.proto, output)
                }
                Ok(None) => break,
                Err(e) => {
                    // The stream cannot be resynchronized: answer, then close (as Redis does).
                    Wire::Error(format!("ERR {e}")).encode(session.proto, output);
                    let _ = stream.write_all(output).await;
                    return;
                }
            }
        }
        if !output.is_empty() {
            if stream.write_all(output).await.is_err() {
                return;
            }
            output.clear();
        }
        if input.len() > QUERY_BUFFER_BYTES_MAX {
            let text = format!(
                "ERR query buffer of {} bytes exceeds the query-buffer limit ({QUERY_BUFFER_BYTES_MAX}); closing",
                input.len()
            );
            Wire::Error(text).encode(session.proto, output);
            let _ = stream.write_all(output).await;
            return;
        }
        input.reserve(if input.is_empty() { READ_CHUNK_IDLE } else { READ_CHUNK });
        tokio::select! {
            read = stream.read_buf(input) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            message = next_message(&mut session.messages) => match message {
                Some(message) => message.encode(session.proto, output),
                None => {
                    let text = server.node.sm.shared.pubsub.take_reason(session.id).unwrap_or_else(|| format!(
                        "ERR pub/sub queue limit ({} messages or {} MiB) reached: the subscriber or observer is too slow; closing",
                        crate::pubsub::SUBSCRIBER_QUEUE_MAX,
                        crate::pubsub::SUBSCRIBER_QUEUE_BYTES_MAX >> 20
                    ));
                    Wire::Error(text).encode(session.proto, output);
                    let _ = stream.write_all(output).await;
                    return;
                }
            },
        }
    }
}

/// Answers one request. `None` means the connection must close now.
async fn handle(
    server: &Arc<Server>,
    session: &mut Session,
    args: Vec<Bytes>,
    stream: &mut TcpStream,
    input: &mut BytesMut,
) -> Option<Wire> {
    *session.last_command.lock().expect("not poisoned") = args[0].clone();
    let first = args[0].clone();
    // Each argument counts its bytes and what holding it costs (a `Bytes`, 32 bytes):
    // a DEL of a million empty keys is 32 MB queued, not 0.
    let request_bytes: usize = args.iter().map(|a| a.len() + ARG_OVERHEAD_BYTES).sum();
    let request = match cmd::parse(args) {
        Ok(request) => request,
        Err(e) => {
            if session.multi.is_some() {
                session.multi_failed = true;
            }
            return Some(e.to_wire());
        }
    };
    // RESP2 subscribers may only manage subscriptions (RESP3 pushes need no such mode).
    // The same holds while a RESP2 connection observes.
    let pushing =
        session.subscriptions() > 0 || (session.observing && server.node.sm.shared.watches.count(session.id) > 0);
    if session.proto == Proto::Resp2 && pushing {
        let allowed = matches!(
            request,
            Request::Conn(
                Conn::Subscribe(..)
                    | Conn::Unsubscribe(..)
                    | Conn::Observe { .. }
                    | Conn::ObserveCancel(_)
                    | Conn::Ping(_)
                    | Conn::Quit
                    | Conn::Reset
            )
        );
        if !allowed {
            let command_name = String::from_utf8_lossy(&first).to_lowercase();
            return Some(Wire::Error(format!(
                "ERR Can't execute '{command_name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / OBSERVE / OBSERVE.CANCEL / PING / QUIT / RESET are allowed in this context"
            )));
        }
        if let Request::Conn(Conn::Ping(message)) = &request {
            return Some(Wire::Array(vec![Wire::text("pong"), Wire::Bulk(message.clone().unwrap_or_default())]));
        }
    }
    if session.authenticated && grows_past_maxmemory(server, &request) {
        // Inside MULTI the transaction is discarded at EXEC, as Redis does.
        if session.multi.is_some() {
            session.multi_failed = true;
        }
        return Some(Wire::Error(server.memory.refusal()));
    }
    if session.multi.is_some()
        && !matches!(request, Request::Conn(Conn::Exec | Conn::Discard | Conn::Multi | Conn::Quit | Conn::Reset))
    {
        return Some(queue(session, request, request_bytes));
    }
    if !session.authenticated
        && !matches!(request, Request::Conn(Conn::Auth { .. } | Conn::Hello { .. } | Conn::Quit | Conn::Reset))
    {
        return Some(Wire::error("NOAUTH Authentication required."));
    }
    let mut request = request;
    if let (Some(bound), Request::Acquire { command, .. }) = (&session.bound, &mut request) {
        match command {
            Command::Lock(r) if r.session.is_none() => r.session = Some(bound.id),
            Command::SemAcquire(r) if r.session.is_none() => r.session = Some(bound.id),
            Command::Campaign(r) if r.session.is_none() => r.session = Some(bound.id),
            _ => {}
        }
    }
    let reply = match request {
        Request::Wait { replicas, timeout_ms } => {
            return wait_replicas(server, replicas, timeout_ms, stream, input).await
        }
        Request::Conn(c) => conn_command(server, session, c).await,
        Request::Immediate(wire) => wire,
        Request::Core(command, shape) => {
            return core_command(server, command, shape, session.stale_reads, stream, input).await
        }
        Request::Acquire { command, token, ttl_ms, undo } => {
            return acquire(server, command, token, ttl_ms, undo, stream, input).await
        }
        Request::Scan { cursor, pattern, count, kind } => scan(server, session, cursor, pattern, count, kind).await,
        Request::Eval { source, keys, args } => eval(server, source, keys, args).await,
        Request::Script(admin) => script_admin(server, admin),
        Request::ServiceRegister(commands) => service_register(server, commands).await,
        Request::ServiceList(service) => service_list(server, &service).await,
        Request::Admin(op) => match server.node.admin(op).await {
            Ok(done) => {
                tracing::info!("{done}");
                Wire::Status("OK")
            }
            Err(e) => node_error(e),
        },
        Request::ClusterStatus => Wire::Bulk(Bytes::from(server.node.cluster_status().await)),
    };
    Some(reply)
}

/// Whether `request` may add data while this node is past `--maxmemory-mib`
/// (`memory`). Scripts are judged once their body is known (`eval`).
fn grows_past_maxmemory(server: &Server, request: &Request) -> bool {
    if !server.memory.over() {
        return false;
    }
    match request {
        Request::Core(command, _) | Request::Acquire { command, .. } => crate::memory::may_grow(command),
        Request::ServiceRegister(_) => true,
        _ => false,
    }
}

/// Queues a command inside MULTI. Only keyspace commands can run inside the
/// transaction's single log entry; anything else aborts it, as a bad command does.
fn queue(session: &mut Session, request: Request, request_bytes: usize) -> Wire {
    let queued = session.multi.as_mut().expect("in MULTI");
    // EXEC runs the queue as a script does: a command a script may not run would be
    // refused there while the rest committed, so it aborts the transaction here.
    let allowed = |command: &Command| !matches!(command, Command::BlockingPop { .. }) && command.allowed_in_scripts();
    let refusal = match request {
        Request::Core(command, _) if !allowed(&command) => {
            Wire::error("ERR this command cannot be used inside MULTI on fencelock (keyspace commands only)")
        }
        Request::Core(..) if queued.len() >= MULTI_COMMANDS_MAX => {
            Wire::Error(format!("ERR MULTI queue limit ({MULTI_COMMANDS_MAX} commands) exceeded"))
        }
        Request::Core(..) if session.multi_bytes + request_bytes > MULTI_BYTES_MAX => {
            Wire::Error(format!("LIMIT multi-bytes limit exceeded (max {MULTI_BYTES_MAX})"))
        }
        Request::Core(command, shape) => {
            queued.push((command, shape));
            session.multi_bytes += request_bytes;
            return Wire::Status("QUEUED");
        }
        _ => Wire::error("ERR this command cannot be used inside MULTI on fencelock (keyspace commands only)"),
    };
    session.multi_failed = true;
    refusal
}

fn node_error(e: NodeError) -> Wire {
    Wire::Error(e.to_string())
}

/// Runs a command: a read through a read index (or from this replica as it is, with
/// `stale` reads), a write through the log.
async fn run(server: &Server, command: Command, stale: bool) -> Result<fencelock_core::Result<Reply>, NodeError> {
    if command.is_read_only() && stale {
        Ok(server.node.read_local(&command))
    } else if command.is_read_only() {
        server.node.read(&command).await
    } else {
        server.node.write(command).await
    }
}

async fn core_command(
    server: &Arc<Server>,
    command: Command,
    shape: Shape,
    stale: bool,
    stream: &mut TcpStream,
    input: &mut BytesMut,
) -> Option<Wire> {
    let pop_left = match &command {
        Command::BlockingPop { left, .. } => *left,
        _ => true,
    };
    match run(server, command, stale).await {
        Err(e) => Some(node_error(e)),
        Ok(Err(e)) => Some(core_error(&e)),
        Ok(Ok(Reply::Queued(waiter))) => match wait_for(server, waiter, stream, input).await {
            Waited::Event(Event::Popped { value, .. }) if shape == Shape::QueuePop => Some(Wire::Bulk(value)),
            Waited::Event(Event::Popped { key, value, .. }) => {
                Some(Wire::Array(vec![Wire::Bulk(key), Wire::Bulk(value)]))
            }
            Waited::Event(Event::BarrierPassed { .. }) => Some(Wire::Status("OK")),
            Waited::Event(Event::WaitEnded { .. }) if server.node.is_shutting_down() => {
                Some(Wire::error(crate::node::SHUTTING_DOWN_WAIT))
            }
            Waited::Event(Event::WaitEnded { .. }) => Some(render::render(Reply::Nil, shape)),
            Waited::Event(other) => Some(Wire::Error(format!("ERR unexpected event {other:?}"))),
            Waited::Gone(Some(Event::Popped { key, value, priority, session, seq, .. })) => {
                // Popped for a client that is gone: put the element back, so an
                // acknowledged push is not lost.
                let to = if shape == Shape::QueuePop {
                    PutBackTo::Queue { priority, seq, session }
                } else {
                    PutBackTo::List { left: pop_left }
                };
                put_back(server, key, value, to).await;
                None
            }
            Waited::Gone(_) => None,
        },
        Ok(Ok(reply)) => Some(render::render(reply, shape)),
    }
}

/// Returns an element popped for a client that had gone to where it came from: a
/// queue item into its slot, with its priority and session (it goes if the session
/// has ended meanwhile, as it would have with the session), a list element to the end
/// it left. `Command::PutBack` does that past the length limit; while a member of the
/// cluster does not read it (`levels`), an ordinary push does the rest of it, which a
/// full queue or list refuses.
async fn put_back(server: &Arc<Server>, key: Bytes, value: Bytes, to: PutBackTo) {
    use crate::raft::levels::{LEVEL_REFUSED, OWNED_MEMBERS_FROM_LEVEL};
    if server.node.levels.cluster() >= OWNED_MEMBERS_FROM_LEVEL {
        let back = Command::PutBack { key: key.clone(), value: value.clone(), to: to.clone() };
        match server.node.write(back).await {
            // Refused before it was proposed (the level the leader knows is lower): push
            // it instead. Any other failure may have put it back already.
            Err(NodeError::Refused(text) | NodeError::Fatal(text)) if text.starts_with(LEVEL_REFUSED) => {}
            _ => return,
        }
    }
    let push = match to {
        PutBackTo::Queue { priority, session, .. } => {
            let session = (session != 0).then_some(session);
            Command::QueuePush { name: key, values: vec![value], priority, session }
        }
        PutBackTo::List { left } => Command::Push { key, values: vec![value], left },
    };
    let _ = server.node.write(push).await;
}

/// True if the peer has closed its side (EOF is readable now). Bytes that arrived are
/// kept in `input`.
fn peer_gone(stream: &TcpStream, input: &mut BytesMut) -> bool {
    // Bytes and the FIN can arrive together: read until the socket has nothing more,
    // so a FIN behind bytes the client sent last is seen too (a popped element written
    // to a socket that is gone would be lost). Bounded by the query-buffer limit.
    loop {
        input.reserve(READ_CHUNK);
        match stream.try_read_buf(input) {
            Ok(0) => return true,
            Ok(_) if input.len() > QUERY_BUFFER_BYTES_MAX => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// How a wait ended.
enum Waited {
    /// The event arrived while the client was there.
    Event(Event),
    /// The client went away. The wait was cancelled through the log; an event that was
    /// applied before the cancel (a grant, a pop) came with it and must be undone.
    Gone(Option<Event>),
}

/// Waits for a queued request's event. While waiting, bytes the client sends are
/// buffered (it is blocked, as in Redis). If it disconnects, the wait is cancelled
/// through the log; once the cancel is applied, every event for the waiter that was
/// applied before it is in the channel, so nothing granted to the dead client is missed.
async fn wait_for(server: &Arc<Server>, waiter: u64, stream: &mut TcpStream, input: &mut BytesMut) -> Waited {
    let Some(mut events) = server.node.sm.shared.waiters.take(waiter) else {
        return Waited::Event(Event::WaitEnded { waiter, reason: WaitEnd::Cancelled });
    };
    server.stats.blocked.fetch_add(1, Ordering::Relaxed);
    let outcome = match blocked_on(stream, input, &mut events).await {
        // The peer's FIN may have arrived in the same instant as the event.
        Some(Ok(event)) if peer_gone(stream, input) => {
            server.stats.blocked.fetch_sub(1, Ordering::Relaxed);
            let _ = server.node.write(Command::CancelWait { waiter }).await;
            return Waited::Gone(Some(event));
        }
        Some(Ok(event)) => Some(event),
        Some(Err(_)) | None => None,
    };
    server.stats.blocked.fetch_sub(1, Ordering::Relaxed);
    match outcome {
        Some(event) => Waited::Event(event),
        None => {
            let _ = server.node.write(Command::CancelWait { waiter }).await;
            Waited::Gone(events.try_recv().ok())
        }
    }
}

/// SVC.REGISTER: the metadata key first, then the address key, which makes the
/// instance visible to SVC.LIST and SVC.WATCH: an instance is never seen without its
/// metadata. (Session-owned writes are not allowed in one script entry, so these are
/// two entries; a metadata key left alone by a crash goes with the session.)
async fn service_register(server: &Arc<Server>, commands: Vec<Command>) -> Wire {
    for command in commands.into_iter().rev() {
        match server.node.write(command).await {
            Err(e) => return node_error(e),
            Ok(Err(e)) => return core_error(&e),
            Ok(Ok(_)) => {}
        }
    }
    Wire::Status("OK")
}

/// SVC.LIST: a map of instance → `[address, metadata]`, read linearizably (the key
/// list through a read index, then the values from the same replica).
async fn service_list(server: &Arc<Server>, service: &Bytes) -> Wire {
    use crate::cmd::coord::{service_key, SERVICE_META_PREFIX, SERVICE_PREFIX};
    let prefix = service_key(SERVICE_PREFIX, service, None);
    let mut pattern = Vec::with_capacity(prefix.len() + 1);
    for &byte in prefix.iter() {
        // Escape glob characters in the service name.
        if matches!(byte, b'*' | b'?' | b'[' | b']' | b'\\') {
            pattern.push(b'\\');
        }
        pattern.push(byte);
    }
    pattern.push(b'*');
    let keys = match server.node.read(&Command::Keys { pattern: Bytes::from(pattern) }).await {
        Err(e) => return node_error(e),
        Ok(Err(e)) => return core_error(&e),
        Ok(Ok(Reply::Array(keys))) => keys,
        Ok(Ok(_)) => Vec::new(),
    };
    let mut instances = Vec::with_capacity(keys.len());
    for key in keys {
        let Reply::Bulk(key) = key else { continue };
        let instance = key.slice(prefix.len()..);
        let meta_key = service_key(SERVICE_META_PREFIX, service, Some(&instance));
        let (Ok(Reply::Bulk(addr)), meta) = (
            server.node.read_local(&Command::Get { key: key.clone() }),
            server.node.read_local(&Command::Get { key: meta_key }),
        ) else {
            continue; // its session ended in between
        };
        let meta = match meta {
            Ok(Reply::Bulk(meta)) => Wire::Bulk(meta),
            _ => Wire::Null,
        };
        instances.push((Wire::Bulk(instance), Wire::Array(vec![Wire::Bulk(addr), meta])));
    }
    Wire::Map(instances)
}

/// LOCK, SEM.ACQUIRE, ELECT.CAMPAIGN: a grant now, null when held (without WAIT) or
/// when the wait bound passes, or a grant when the queued request's turn comes.
async fn acquire(
    server: &Arc<Server>,
    command: Command,
    token: Bytes,
    ttl_ms: u64,
    undo: Option<Box<Command>>,
    stream: &mut TcpStream,
    input: &mut BytesMut,
) -> Option<Wire> {
    match server.node.write(command).await {
        Err(e) => Some(node_error(e)),
        Ok(Err(Error::Locked)) => Some(Wire::Null),
        Ok(Err(e)) => Some(core_error(&e)),
        Ok(Ok(Reply::Grant(grant))) => Some(render::grant(grant, Some(token), Some(ttl_ms))),
        Ok(Ok(Reply::Queued(waiter))) => match wait_for(server, waiter, stream, input).await {
            Waited::Event(Event::Granted { grant, .. }) => Some(render::grant(grant, Some(token), Some(ttl_ms))),
            Waited::Event(Event::WaitEnded { reason: WaitEnd::SessionEnded, .. }) => {
                Some(Wire::error("NOSESSION the session ended while waiting"))
            }
            Waited::Event(Event::WaitEnded { .. }) if server.node.is_shutting_down() => {
                Some(Wire::error(crate::node::SHUTTING_DOWN_WAIT))
            }
            Waited::Event(Event::WaitEnded { .. }) => Some(Wire::Null),
            Waited::Event(other) => Some(Wire::Error(format!("ERR unexpected event {other:?}"))),
            Waited::Gone(Some(Event::Granted { .. })) => {
                // Granted to a client that is gone: give it back at once rather than
                // leaving it held for its whole TTL.
                if let Some(undo) = undo {
                    let _ = server.node.write(*undo).await;
                }
                None
            }
            Waited::Gone(_) => None,
        },
        Ok(Ok(other)) => Some(render::plain(other)),
    }
}

async fn eval(server: &Arc<Server>, source: Source, keys: Vec<Bytes>, args: Vec<Bytes>) -> Wire {
    let body = match source {
        Source::Body(body) => {
            server.scripts.lock().expect("not poisoned").insert(body.clone());
            body
        }
        Source::Sha(sha) => match server.scripts.lock().expect("not poisoned").get(&sha) {
            Some(body) => body,
            None => return Wire::error("NOSCRIPT No matching script. Please use EVAL."),
        },
    };
    // Past --maxmemory-mib a script runs only if all it can do is read, delete or
    // extend: one whose commands are named in its text and add nothing
    // (`memory::script_only_frees`, which the lock clients' release and extend scripts
    // pass), and node-redlock's extend, which SETs only keys it has just found holding
    // its value.
    if server.memory.over() {
        use crate::lua::known::{recognize, Known};
        if recognize(&body) != Some(Known::RedlockExtend) && !crate::memory::script_only_frees(&body) {
            return Wire::Error(server.memory.refusal());
        }
    }
    match server.node.eval(body, keys, args).await {
        Err(e) => node_error(e),
        Ok(Ok(reply)) => reply.into_wire(),
        Ok(Err(text)) => Wire::Error(text),
    }
}

fn script_admin(server: &Server, admin: ScriptAdmin) -> Wire {
    let mut scripts = server.scripts.lock().expect("not poisoned");
    match admin {
        ScriptAdmin::Load(body) => {
            // Compile errors surface on first use, as the VM lives in the state machine;
            // check the syntax here so SCRIPT LOAD refuses what EVAL would.
            if let Err(e) = crate::lua::check_syntax(&body) {
                return Wire::Error(e);
            }
            Wire::Bulk(Bytes::from(scripts.insert(body)))
        }
        ScriptAdmin::Exists(shas) => Wire::Array(
            shas.iter()
                .map(|sha| {
                    Wire::Int(i64::from(scripts.get(&String::from_utf8_lossy(sha).to_ascii_lowercase()).is_some()))
                })
                .collect(),
        ),
        ScriptAdmin::Flush => {
            scripts.clear();
            Wire::Status("OK")
        }
    }
}

async fn scan(
    server: &Arc<Server>,
    session: &mut Session,
    cursor: u64,
    pattern: Option<Bytes>,
    count: u64,
    kind: Option<Bytes>,
) -> Wire {
    let after = if cursor == 0 {
        None
    } else {
        match server.scan_cursors.lock().expect("not poisoned").resume(cursor) {
            Some(key) => Some(key),
            None => return CmdError::Other("ERR invalid cursor".into()).to_wire(),
        }
    };
    let command = Command::Scan { after, pattern, count, kind };
    let reply = match run(server, command, session.stale_reads).await {
        Err(e) => return node_error(e),
        Ok(Err(e)) => return core_error(&e),
        Ok(Ok(reply)) => reply,
    };
    let Reply::Array(mut parts) = reply else { return Wire::error("ERR unexpected SCAN reply") };
    let keys = render::plain(parts.pop().unwrap_or(Reply::Array(Vec::new())));
    let next = match parts.pop() {
        Some(Reply::Bulk(resume)) => server.scan_cursors.lock().expect("not poisoned").issue(resume),
        _ => 0,
    };
    Wire::Array(vec![Wire::Bulk(Bytes::from(next.to_string())), keys])
}

/// WAIT: how many replicas (followers and learners) hold everything this node has
/// applied, once `replicas` do or the timeout passes. Every acknowledged write is
/// already on a quorum. While it waits, bytes the client sends are buffered (it is
/// blocked, as in Redis), and a client that leaves ends the wait and the connection,
/// as a blocked BLPOP's does: `WAIT 9 0` on a smaller cluster would otherwise keep the
/// task and its socket for ever, and commands pipelined behind it would run for a
/// client that has gone. `None`: close now.
async fn wait_replicas(
    server: &Arc<Server>,
    replicas: i64,
    timeout_ms: i64,
    stream: &mut TcpStream,
    input: &mut BytesMut,
) -> Option<Wire> {
    let timeout = (timeout_ms > 0).then(|| std::time::Duration::from_millis(timeout_ms as u64));
    let count = blocked_on(stream, input, server.node.wait_replicas(replicas.max(0) as u64, timeout)).await?;
    Some(Wire::Int(count as i64))
}

/// Waits for `done` while the client is blocked: bytes it sends meanwhile are buffered
/// (as in Redis), and `None` means it left (or overflowed its query buffer) first. The
/// socket is polled first, so a client that left is never handed what `done` brings.
async fn blocked_on<F: std::future::Future>(
    stream: &mut TcpStream,
    input: &mut BytesMut,
    done: F,
) -> Option<F::Output> {
    tokio::pin!(done);
    loop {
        tokio::select! {
            biased;
            read = stream.read_buf(input) => match read {
                Ok(0) | Err(_) => return None,
                Ok(_) if input.len() > QUERY_BUFFER_BYTES_MAX => return None,
                Ok(_) => {}
            },
            output = &mut done => return Some(output),
        }
    }
}

async fn conn_command(server: &Arc<Server>, session: &mut Session, c: Conn) -> Wire {
    match c {
        Conn::Ping(None) => Wire::Status("PONG"),
        Conn::Ping(Some(message)) | Conn::Echo(message) => Wire::Bulk(message),
        Conn::Quit => {
            session.quit = true;
            Wire::Status("OK")
        }
        Conn::Reset => {
            server.node.sm.shared.pubsub.detach(session.id);
            server.node.sm.shared.watches.drop_conn(session.id);
            session.observing = false;
            session.messages = None;
            session.channels.clear();
            session.patterns.clear();
            session.multi = None;
            session.proto = Proto::Resp2;
            session.authenticated = server.config.requirepass.is_none();
            session.stale_reads = false;
            session.bound = None;
            server.update_client(session.id, |c| c.name = None);
            Wire::Status("RESET")
        }
        Conn::Auth { user, password } => authenticate(server, session, user.as_ref(), &password),
        Conn::Hello { proto, auth, name } => {
            if let Some((user, password)) = auth {
                let result = authenticate(server, session, Some(&user), &password);
                if matches!(result, Wire::Error(_)) {
                    return result;
                }
            }
            if !session.authenticated {
                return Wire::error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
            }
            if let Some(proto) = proto {
                session.proto = if proto == 3 { Proto::Resp3 } else { Proto::Resp2 };
            }
            if let Some(name) = name {
                server.update_client(session.id, |c| c.name = Some(name.clone()));
            }
            server.update_client(session.id, |c| c.resp = if session.proto == Proto::Resp3 { 3 } else { 2 });
            info::hello(server, session.id, session.proto)
        }
        Conn::Select(0) => Wire::Status("OK"),
        Conn::Select(_) => Wire::error("ERR DB index is out of range"),
        Conn::ClientSetName(name) => {
            server.update_client(session.id, |c| c.name = (!name.is_empty()).then_some(name.clone()));
            Wire::Status("OK")
        }
        Conn::ClientGetName => {
            let name = server.clients.lock().expect("not poisoned").get(&session.id).and_then(|c| c.name.clone());
            name.map_or(Wire::Null, Wire::Bulk)
        }
        Conn::ClientId => Wire::Int(session.id as i64),
        Conn::ClientSetInfo { attribute, value } => {
            let lib_name = attribute.eq_ignore_ascii_case(b"LIB-NAME");
            server.update_client(session.id, |c| {
                if lib_name {
                    c.lib_name = Some(value.clone());
                } else {
                    c.lib_ver = Some(value.clone());
                }
            });
            Wire::Status("OK")
        }
        Conn::ClientList { only_self } => {
            Wire::Bulk(Bytes::from(info::client_list(server, only_self.then_some(session.id))))
        }
        Conn::Info(sections) => Wire::Bulk(Bytes::from(info::info(server, &sections))),
        Conn::Command(sub, names) => info::command(&sub, &names),
        Conn::Time => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            Wire::Array(vec![
                Wire::Bulk(Bytes::from(now.as_secs().to_string())),
                Wire::Bulk(Bytes::from(now.subsec_micros().to_string())),
            ])
        }
        Conn::Observe { filter, from, once } => {
            let shared = &server.node.sm.shared;
            // A key or name longer than any can be never matches; a prefix that long
            // would cost every change a long comparison.
            let key_bytes_max = shared.limits.key_bytes_max;
            if filter.target.len() > key_bytes_max {
                return Wire::Error(format!("LIMIT key-bytes limit exceeded (max {key_bytes_max})"));
            }
            if shared.watches.count(session.id) >= crate::watch::WATCHES_PER_CONNECTION_MAX {
                let max = crate::watch::WATCHES_PER_CONNECTION_MAX;
                return Wire::Error(format!("LIMIT watches-per-connection limit exceeded (max {max})"));
            }
            if session.messages.is_none() {
                session.messages = Some(shared.pubsub.attach(session.id));
            }
            let Some(tx) = shared.pubsub.sender(session.id) else {
                return Wire::error("ERR this connection's notification queue is closed");
            };
            match shared.watches.register(session.id, filter, from, once, tx) {
                // The queue overflowed between taking its sender and registering (apply
                // may run on another thread): the watch would keep a dropped queue open.
                Ok(_) if shared.pubsub.sender(session.id).is_none() => {
                    shared.watches.drop_conn(session.id);
                    Wire::error("ERR this connection's notification queue is closed")
                }
                Ok((id, revision)) => {
                    session.observing = true;
                    Wire::Map(vec![
                        (Wire::text("id"), Wire::Int(id as i64)),
                        (Wire::text("revision"), Wire::Int(revision as i64)),
                    ])
                }
                Err(e @ crate::watch::WatchError::Overflowed) => {
                    // The queue overflowed: close the connection as pub/sub delivery
                    // does (its remaining senders go with the watches).
                    shared.watches.drop_conn(session.id);
                    shared.pubsub.detach(session.id);
                    Wire::Error(e.to_string())
                }
                Err(e) => Wire::Error(e.to_string()),
            }
        }
        Conn::ObserveCancel(id) => {
            let watches = &server.node.sm.shared.watches;
            let cancelled = Wire::Int(i64::from(watches.cancel(session.id, id)));
            // A RESP2 connection leaves push mode with its last watch (and no
            // subscription): events already queued go out before the reply, or the
            // client would take the next one for the reply to its next command (as
            // UNSUBSCRIBE does).
            if session.proto != Proto::Resp2 || session.subscriptions() > 0 || watches.count(session.id) > 0 {
                return cancelled;
            }
            let mut replies = session.messages.as_mut().map(crate::pubsub::Inbox::take_queued).unwrap_or_default();
            if replies.is_empty() {
                return cancelled;
            }
            replies.push(cancelled);
            Wire::Sequence(replies)
        }
        Conn::SessionBind(None) => {
            session.bound = None;
            Wire::Status("OK")
        }
        Conn::SessionBind(Some(id)) => {
            match server.node.write(Command::SessionKeepAlive { session: id, ttl_ms: None }).await {
                Err(e) => node_error(e),
                Ok(Err(e)) => core_error(&e),
                Ok(Ok(reply)) => {
                    let ttl_ms = match reply {
                        Reply::Int(ttl) => ttl.max(0) as u64,
                        _ => 0,
                    };
                    let keeper = tokio::spawn(keep_alive(Arc::clone(server), id, ttl_ms));
                    session.bound = Some(BoundSession { id, keeper });
                    Wire::Status("OK")
                }
            }
        }
        Conn::ReadOnly(stale) => {
            session.stale_reads = stale;
            Wire::Status("OK")
        }
        Conn::Subscribe(names, pattern) => {
            let hub = &server.node.sm.shared.pubsub;
            let held = if pattern { &session.patterns } else { &session.channels };
            let adding = names.iter().filter(|n| !held.contains(*n)).collect::<std::collections::BTreeSet<_>>().len();
            if session.subscriptions() + adding > crate::pubsub::SUBSCRIPTIONS_PER_CONNECTION_MAX {
                let max = crate::pubsub::SUBSCRIPTIONS_PER_CONNECTION_MAX;
                return Wire::Error(format!("LIMIT subscriptions-per-connection limit exceeded (max {max})"));
            }
            if session.messages.is_none() {
                session.messages = Some(hub.attach(session.id));
            }
            let mut replies = Vec::with_capacity(names.len());
            for name in names {
                hub.subscribe(session.id, name.clone(), pattern);
                if pattern {
                    session.patterns.insert(name.clone());
                } else {
                    session.channels.insert(name.clone());
                }
                let kind = if pattern { "psubscribe" } else { "subscribe" };
                replies.push(Wire::Push(vec![
                    Wire::text(kind),
                    Wire::Bulk(name),
                    Wire::Int(session.subscriptions() as i64),
                ]));
            }
            Wire::Sequence(replies)
        }
        Conn::Unsubscribe(names, pattern) => {
            let hub = &server.node.sm.shared.pubsub;
            let names: Vec<Bytes> = if names.is_empty() {
                if pattern {
                    session.patterns.iter().cloned().collect()
                } else {
                    session.channels.iter().cloned().collect()
                }
            } else {
                names
            };
            let kind = if pattern { "punsubscribe" } else { "unsubscribe" };
            if names.is_empty() {
                return Wire::Push(vec![Wire::text(kind), Wire::Null, Wire::Int(session.subscriptions() as i64)]);
            }
            for name in &names {
                hub.unsubscribe(session.id, name, pattern);
            }
            // Messages already queued go out before the confirmations, as in Redis: once
            // the count reaches 0 a RESP2 client leaves subscriber mode, and a message
            // after the confirmation would be taken for the reply to its next command.
            let mut replies = Vec::with_capacity(names.len());
            if let Some(messages) = session.messages.as_mut() {
                replies.extend(messages.take_queued());
            }
            for name in names {
                if pattern {
                    session.patterns.remove(&name);
                } else {
                    session.channels.remove(&name);
                }
                replies.push(Wire::Push(vec![
                    Wire::text(kind),
                    Wire::Bulk(name),
                    Wire::Int(session.subscriptions() as i64),
                ]));
            }
            Wire::Sequence(replies)
        }
        Conn::Multi if session.multi.is_some() => Wire::error("ERR MULTI calls can not be nested"),
        Conn::Multi => {
            session.multi = Some(Vec::new());
            session.multi_bytes = 0;
            session.multi_failed = false;
            Wire::Status("OK")
        }
        Conn::Discard => match session.multi.take() {
            Some(_) => Wire::Status("OK"),
            None => Wire::error("ERR DISCARD without MULTI"),
        },
        Conn::Exec => {
            let Some(queued) = session.multi.take() else { return Wire::error("ERR EXEC without MULTI") };
            if std::mem::take(&mut session.multi_failed) {
                return Wire::error("EXECABORT Transaction discarded because of previous errors.");
            }
            let (commands, shapes): (Vec<Command>, Vec<Shape>) = queued.into_iter().unzip();
            match server.node.multi(commands).await {
                Err(e) => node_error(e),
                Ok(replies) => Wire::Array(
                    replies
                        .into_iter()
                        .zip(shapes)
                        .map(|(reply, shape)| match reply {
                            Ok(reply) => render::render(reply, shape),
                            Err(e) => core_error(&e),
                        })
                        .collect(),
                ),
            }
        }
    }
}

fn authenticate(server: &Server, session: &mut Session, user: Option<&Bytes>, password: &[u8]) -> Wire {
    let Some(expected) = &server.config.requirepass else {
        // Like Redis's default user with nopass: a user+password AUTH (and HELLO AUTH)
        // succeeds; a password-only AUTH is a configuration mistake worth reporting.
        if user.is_some() {
            session.authenticated = true;
            return Wire::Status("OK");
        }
        return Wire::error(
            "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        );
    };
    let user_ok = user.is_none_or(|u| u.as_ref() == b"default");
    if user_ok && constant_time_eq(expected.as_bytes(), password) {
        session.authenticated = true;
        Wire::Status("OK")
    } else {
        Wire::error("WRONGPASS invalid username-password pair or user is disabled.")
    }
}

/// Compares secrets without an early exit on the first different byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Server {
    /// Updates this connection's entry in the client table.
    pub fn update_client(&self, id: u64, f: impl FnOnce(&mut ClientInfo)) {
        if let Some(client) = self.clients.lock().expect("not poisoned").get_mut(&id) {
            f(client);
        }
    }
}
