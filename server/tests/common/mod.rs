//! Shared helpers for the black-box tests: a `fencelock` process on an ephemeral port
//! with its own temporary data directory (killed and removed on drop, even when the
//! test panics), and a raw RESP client over a blocking `TcpStream` that reads exactly
//! one complete reply at a time.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod cluster;

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a server may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default socket read/write timeout of a test client.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// The `fencelock` binary cargo built for this package.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_fencelock")
}

/// A running `fencelock` process. Drop kills it (SIGKILL) and removes its directory.
pub struct Server {
    child: Option<Child>,
    port: u16,
    extra: Vec<String>,
    starts: usize,
    // Declared last: dropped after the process is gone.
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts a server with default flags.
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts a server with extra flags (`--requirepass x`, `--snapshot-every n`).
    pub fn start_with(extra: &[&str]) -> Server {
        let dir = tempfile::Builder::new().prefix("fencelock-test-").tempdir().expect("create a temp dir");
        let mut server =
            Server { child: None, port: 0, extra: extra.iter().map(|s| s.to_string()).collect(), starts: 0, dir };
        server.spawn();
        server
    }

    /// The client port the server printed in its ready line.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (stable across restarts).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A new client connection.
    pub fn connect(&self) -> Client {
        Client::connect(self.port)
    }

    /// Process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    /// SIGKILL the process and reap it. No graceful shutdown: this is a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").args([&format!("-{name}"), &self.pid().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{name} failed");
    }

    /// Waits up to `timeout` for the process to exit by itself; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Some(status.code().unwrap_or(-1));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Crash (SIGKILL) and start again on the same data directory with these flags
    /// instead of the first start's (another build's settings, in upgrade tests).
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self.restart();
    }

    /// Crash (SIGKILL) and start again on the same data directory. The port changes.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn log_path(&self, start: usize) -> PathBuf {
        self.dir.path().join(format!("server-{start}.log"))
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log_path = self.log_path(self.starts);
        let log = File::create(&log_path).expect("create the server log");
        let data_dir = self.data_dir();
        let mut command = Command::new(binary());
        // Settings from the environment would change what the tests see.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("FENCELOCK_") {
                command.env_remove(name);
            }
        }
        command
            .args(["--port", "0", "--bind", "127.0.0.1", "--data-dir"])
            .arg(&data_dir)
            .args(&self.extra)
            .env("FENCELOCK_LOG", "info,openraft=warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", binary()));
        let stdout = child.stdout.take().expect("stdout is piped");
        self.child = Some(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Read until the ready line, then keep draining so the server never blocks
            // on a full pipe; ends at EOF (the process exited).
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = parse_ready_line(&line) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(port);
                    }
                }
            }
        });
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(port) => self.port = port,
            Err(e) => {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                self.kill();
                panic!("fencelock did not print its ready line ({e:?}); its log:\n{log}");
            }
        }
    }

    /// The tail of the current process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

fn parse_ready_line(line: &str) -> Option<u16> {
    // fencelock ready on 127.0.0.1:PORT (node 1, data in ...)
    let rest = line.strip_prefix("fencelock ready on ")?;
    let address = rest.split(' ').next()?;
    address.rsplit(':').next()?.parse().ok()
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!("--- fencelock log (last 40 lines) ---\n{}\n---", self.log_tail(40));
        }
        self.kill();
    }
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One RESP2 or RESP3 reply.
#[derive(Clone, PartialEq)]
pub enum Reply {
    /// `+...`
    Simple(String),
    /// `-...`
    Error(String),
    /// `:n`
    Int(i64),
    /// `$n` with data.
    Bulk(Vec<u8>),
    /// `$-1`
    NullBulk,
    /// `*n`
    Array(Vec<Reply>),
    /// `*-1`
    NullArray,
    /// RESP3 `_`
    Null,
    /// RESP3 `%n`
    Map(Vec<(Reply, Reply)>),
    /// RESP3 `~n`
    Set(Vec<Reply>),
    /// RESP3 `>n`
    Push(Vec<Reply>),
    /// RESP3 `#t` / `#f`
    Bool(bool),
    /// RESP3 `,` (kept as text)
    Double(String),
    /// RESP3 `(` (kept as text)
    BigNumber(String),
    /// RESP3 `=n` verbatim string: format and data.
    Verbatim(String, Vec<u8>),
    /// RESP3 `!n` blob error.
    BlobError(Vec<u8>),
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Simple(s) => write!(f, "+{s}"),
            Reply::Error(s) => write!(f, "-{s}"),
            Reply::Int(i) => write!(f, ":{i}"),
            Reply::Bulk(b) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            Reply::NullBulk => write!(f, "$-1"),
            Reply::NullArray => write!(f, "*-1"),
            Reply::Null => write!(f, "_"),
            Reply::Array(items) => f.debug_list().entries(items).finish(),
            Reply::Set(items) => write!(f, "~{items:?}"),
            Reply::Push(items) => write!(f, ">{items:?}"),
            Reply::Map(pairs) => f.debug_map().entries(pairs.iter().map(|(k, v)| (k, v))).finish(),
            Reply::Bool(b) => write!(f, "#{}", if *b { 't' } else { 'f' }),
            Reply::Double(d) => write!(f, ",{d}"),
            Reply::BigNumber(n) => write!(f, "({n}"),
            Reply::Verbatim(format, b) => write!(f, "={format}:{:?}", String::from_utf8_lossy(b)),
            Reply::BlobError(b) => write!(f, "!{:?}", String::from_utf8_lossy(b)),
        }
    }
}

impl Reply {
    /// The integer, or panic.
    pub fn int(&self) -> i64 {
        match self {
            Reply::Int(i) => *i,
            other => panic!("expected an integer, got {other:?}"),
        }
    }

    /// A bulk or simple string as text, or panic.
    pub fn text(&self) -> String {
        match self {
            Reply::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            Reply::Simple(s) => s.clone(),
            Reply::Verbatim(_, b) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("expected a string, got {other:?}"),
        }
    }

    /// Any null (`$-1`, `*-1`, `_`).
    pub fn is_null(&self) -> bool {
        matches!(self, Reply::NullBulk | Reply::NullArray | Reply::Null)
    }

    /// An error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_) | Reply::BlobError(_))
    }

    /// Array (or set / push) items, or panic.
    pub fn items(&self) -> &[Reply] {
        match self {
            Reply::Array(items) | Reply::Set(items) | Reply::Push(items) => items,
            other => panic!("expected an array, got {other:?}"),
        }
    }

    /// The value under a string key of a map: a RESP3 map or a RESP2 flat
    /// key-value array.
    pub fn get(&self, key: &str) -> Option<&Reply> {
        match self {
            Reply::Map(pairs) => pairs.iter().find(|(k, _)| k.is_text(key)).map(|(_, v)| v),
            Reply::Array(items) if items.len() % 2 == 0 => {
                items.chunks(2).find(|pair| pair[0].is_text(key)).map(|pair| &pair[1])
            }
            _ => None,
        }
    }

    /// `get`, or panic naming the key.
    pub fn field(&self, key: &str) -> &Reply {
        self.get(key).unwrap_or_else(|| panic!("no field {key:?} in {self:?}"))
    }

    /// The keys of a map (RESP3 map or RESP2 flat array), as text.
    pub fn keys(&self) -> Vec<String> {
        match self {
            Reply::Map(pairs) => pairs.iter().map(|(k, _)| k.text()).collect(),
            Reply::Array(items) => items.chunks(2).map(|pair| pair[0].text()).collect(),
            other => panic!("expected a map, got {other:?}"),
        }
    }

    fn is_text(&self, s: &str) -> bool {
        match self {
            Reply::Bulk(b) => b == s.as_bytes(),
            Reply::Simple(t) => t == s,
            _ => false,
        }
    }
}

/// Encodes a command as a RESP multibulk request.
pub fn encode<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A raw RESP client: write any bytes, read one complete reply at a time.
pub struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    /// Connects to 127.0.0.1:`port` with read and write timeouts.
    pub fn connect(port: u16) -> Client {
        Client::try_connect(port).unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
    }

    /// Connects, returning the error.
    pub fn try_connect(port: u16) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let reader = BufReader::with_capacity(64 * 1024, stream.try_clone()?);
        Ok(Client { writer: stream, reader })
    }

    /// The port this client's end of the connection has.
    pub fn local_port(&self) -> u16 {
        self.writer.local_addr().expect("a connected socket").port()
    }

    /// Changes the read timeout.
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.writer.set_read_timeout(Some(timeout)).expect("set the read timeout");
    }

    /// Reads everything until the server closes the connection or `limit` passes.
    /// Returns the last `tail` bytes read and whether it closed.
    pub fn read_to_close(&mut self, limit: Duration, tail: usize) -> (Vec<u8>, bool) {
        let deadline = std::time::Instant::now() + limit;
        let mut last = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        while std::time::Instant::now() < deadline {
            match self.reader.read(&mut chunk) {
                Ok(0) => return (last, true),
                Ok(n) => {
                    last.extend_from_slice(&chunk[..n]);
                    let excess = last.len().saturating_sub(tail);
                    last.drain(..excess);
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (last, true),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        (last, false)
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).expect("write to the server");
    }

    /// Writes raw bytes, returning the error.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)?;
        self.writer.flush()
    }

    /// Writes one command without reading its reply.
    pub fn send_cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) {
        self.send(&encode(args));
    }

    /// Reads one reply, or panics.
    pub fn read(&mut self) -> Reply {
        self.try_read().expect("read a reply")
    }

    /// Reads one reply with its exact bytes, or panics.
    pub fn read_raw(&mut self) -> (Reply, Vec<u8>) {
        let mut raw = Vec::new();
        let reply = read_reply(&mut self.reader, &mut raw).expect("read a reply");
        (reply, raw)
    }

    /// Reads one reply.
    pub fn try_read(&mut self) -> io::Result<Reply> {
        read_reply(&mut self.reader, &mut Vec::new())
    }

    /// Sends a command and reads its reply.
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Reply {
        self.send_cmd(args);
        self.read()
    }

    /// Sends a command and reads its reply, returning I/O errors (a dead server).
    pub fn try_cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> io::Result<Reply> {
        self.try_send(&encode(args))?;
        self.try_read()
    }

    /// Sends a command; its reply's exact bytes as (lossy) text.
    pub fn raw<A: AsRef<[u8]>>(&mut self, args: &[A]) -> String {
        self.send_cmd(args);
        let (_, raw) = self.read_raw();
        String::from_utf8_lossy(&raw).into_owned()
    }

    /// Sends raw bytes; the next reply's exact bytes as (lossy) text.
    pub fn raw_bytes(&mut self, bytes: &[u8]) -> String {
        self.send(bytes);
        let (_, raw) = self.read_raw();
        String::from_utf8_lossy(&raw).into_owned()
    }

    /// Asserts `PING` answers `+PONG` on this connection.
    pub fn assert_alive(&mut self) {
        assert_eq!(self.raw(&["PING"]), "+PONG\r\n", "the connection must still work");
    }

    /// Asserts the server closed the connection (EOF, nothing more to read).
    pub fn assert_closed(&mut self) {
        let mut byte = [0u8; 1];
        match self.reader.read(&mut byte) {
            Ok(0) => {}
            Ok(_) => panic!("expected the connection to be closed, got byte {:?}", byte[0] as char),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected the connection to be closed, got {e}"),
        }
    }

    /// Closes both directions at once.
    pub fn shutdown(&self) {
        let _ = self.writer.shutdown(Shutdown::Both);
    }
}

fn read_line(reader: &mut impl BufRead, raw: &mut Vec<u8>) -> io::Result<String> {
    let start = raw.len();
    let n = reader.read_until(b'\n', raw)?;
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    let line = &raw[start..];
    if !line.ends_with(b"\r\n") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("line without CRLF: {:?}", String::from_utf8_lossy(line)),
        ));
    }
    Ok(String::from_utf8_lossy(&line[..line.len() - 2]).into_owned())
}

fn bad(what: &str, line: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("bad {what}: {line:?}"))
}

fn read_len(line: &str, what: &str) -> io::Result<i64> {
    line.parse().map_err(|_| bad(what, line))
}

fn read_blob(reader: &mut impl BufRead, raw: &mut Vec<u8>, len: usize) -> io::Result<Vec<u8>> {
    let mut data = vec![0u8; len + 2];
    reader.read_exact(&mut data)?;
    raw.extend_from_slice(&data);
    if &data[len..] != b"\r\n" {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "blob without CRLF"));
    }
    data.truncate(len);
    Ok(data)
}

fn read_items(reader: &mut impl BufRead, raw: &mut Vec<u8>, n: i64) -> io::Result<Vec<Reply>> {
    (0..n).map(|_| read_reply(reader, raw)).collect()
}

/// Reads exactly one complete reply of any RESP2 / RESP3 type, appending its bytes
/// to `raw`. Attributes (`|`) are read and skipped, as clients do.
pub fn read_reply(reader: &mut impl BufRead, raw: &mut Vec<u8>) -> io::Result<Reply> {
    let line = read_line(reader, raw)?;
    let Some(kind) = line.chars().next() else { return Err(bad("reply", &line)) };
    let rest = &line[kind.len_utf8()..];
    Ok(match kind {
        '+' => Reply::Simple(rest.to_string()),
        '-' => Reply::Error(rest.to_string()),
        ':' => Reply::Int(read_len(rest, "integer")?),
        '$' => match read_len(rest, "bulk length")? {
            -1 => Reply::NullBulk,
            n if n >= 0 => Reply::Bulk(read_blob(reader, raw, n as usize)?),
            _ => return Err(bad("bulk length", rest)),
        },
        '*' => match read_len(rest, "array length")? {
            -1 => Reply::NullArray,
            n if n >= 0 => Reply::Array(read_items(reader, raw, n)?),
            _ => return Err(bad("array length", rest)),
        },
        '~' => Reply::Set(read_items(reader, raw, read_len(rest, "set length")?)?),
        '>' => Reply::Push(read_items(reader, raw, read_len(rest, "push length")?)?),
        '%' => {
            let n = read_len(rest, "map length")?;
            let mut pairs = Vec::new();
            for _ in 0..n {
                let key = read_reply(reader, raw)?;
                let value = read_reply(reader, raw)?;
                pairs.push((key, value));
            }
            Reply::Map(pairs)
        }
        '|' => {
            let n = read_len(rest, "attribute length")?;
            for _ in 0..2 * n {
                read_reply(reader, raw)?;
            }
            return read_reply(reader, raw);
        }
        '_' if rest.is_empty() => Reply::Null,
        '#' if rest == "t" => Reply::Bool(true),
        '#' if rest == "f" => Reply::Bool(false),
        ',' => Reply::Double(rest.to_string()),
        '(' => Reply::BigNumber(rest.to_string()),
        '=' => {
            let n = read_len(rest, "verbatim length")?;
            let data = read_blob(reader, raw, usize::try_from(n).map_err(|_| bad("verbatim length", rest))?)?;
            if data.len() < 4 || data[3] != b':' {
                return Err(bad("verbatim string", &String::from_utf8_lossy(&data)));
            }
            Reply::Verbatim(String::from_utf8_lossy(&data[..3]).into_owned(), data[4..].to_vec())
        }
        '!' => {
            let n = read_len(rest, "blob error length")?;
            Reply::BlobError(read_blob(reader, raw, usize::try_from(n).map_err(|_| bad("blob error length", rest))?)?)
        }
        _ => return Err(bad("reply type", &line)),
    })
}

/// Test of the reply reader itself on canned bytes (every type, nesting).
pub fn parse_all(bytes: &[u8]) -> Vec<Reply> {
    let mut reader = BufReader::new(bytes);
    let mut out = Vec::new();
    while !reader.fill_buf().expect("in memory").is_empty() {
        out.push(read_reply(&mut reader, &mut Vec::new()).expect("valid reply"));
    }
    out
}
