//! A minimal RESP2 client: one command, one reply, within a deadline.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+...`
    Simple(String),
    /// `-...`
    Error(String),
    /// `:n`
    Int(i64),
    /// `$n` data.
    Bulk(String),
    /// `$-1` / `*-1`.
    Nil,
    /// `*n`.
    Array(Vec<Reply>),
}

impl Reply {
    /// A field of a flat `[key, value, ...]` map reply.
    pub fn field(&self, name: &str) -> Option<&Reply> {
        let Reply::Array(items) = self else { return None };
        items.chunks(2).find(|p| p[0] == Reply::Bulk(name.into())).map(|p| &p[1])
    }

    /// An integer field.
    pub fn int_field(&self, name: &str) -> Option<i64> {
        match self.field(name) {
            Some(Reply::Int(i)) => Some(*i),
            _ => None,
        }
    }
}

/// Why a call has no reply.
#[derive(Debug)]
pub enum CallError {
    /// Nothing was sent (could not connect): the command certainly did not apply.
    NotSent,
    /// Sent, no answer (timeout, closed): it may or may not have applied.
    Unknown,
}

/// A connection to one node.
pub struct Conn {
    stream: BufReader<TcpStream>,
    /// The node's client port.
    pub port: u16,
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl Conn {
    /// Connects within `timeout`.
    pub async fn connect(port: u16, timeout: Duration) -> Option<Conn> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(("127.0.0.1", port))).await.ok()?.ok()?;
        stream.set_nodelay(true).ok()?;
        Some(Conn { stream: BufReader::new(stream), port })
    }

    /// Sends a command and reads its reply within `timeout`. After an error the
    /// connection must be dropped.
    pub async fn call(&mut self, args: &[&str], timeout: Duration) -> Result<Reply, CallError> {
        if self.stream.get_mut().write_all(&encode(args)).await.is_err() {
            return Err(CallError::Unknown);
        }
        match tokio::time::timeout(timeout, read_reply(&mut self.stream)).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => Err(CallError::Unknown),
        }
    }
}

async fn read_reply(r: &mut BufReader<TcpStream>) -> std::io::Result<Reply> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches(['\r', '\n']);
    if line.is_empty() {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    let (kind, rest) = line.split_at(1);
    let number = || rest.parse::<i64>().map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData));
    Ok(match kind {
        "+" => Reply::Simple(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Int(number()?),
        "$" => {
            let n = number()?;
            if n < 0 {
                return Ok(Reply::Nil);
            }
            let mut buf = vec![0u8; n as usize + 2];
            r.read_exact(&mut buf).await?;
            buf.truncate(n as usize);
            Reply::Bulk(String::from_utf8_lossy(&buf).into_owned())
        }
        "*" => {
            let n = number()?;
            if n < 0 {
                return Ok(Reply::Nil);
            }
            let mut items = Vec::with_capacity(n as usize);
            for _ in 0..n {
                items.push(Box::pin(read_reply(r)).await?);
            }
            Reply::Array(items)
        }
        _ => return Err(std::io::ErrorKind::InvalidData.into()),
    })
}
