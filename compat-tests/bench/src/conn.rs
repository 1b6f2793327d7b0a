//! One RESP connection driven closed-loop: a request (or a pipelined batch) is written,
//! then its replies are read, before the next one goes out.

use bytes::BytesMut;
use fencelock_client::resp::{self, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A RESP connection to one node.
pub struct Conn {
    stream: TcpStream,
    input: BytesMut,
    out: Vec<u8>,
}

impl Conn {
    /// Connects to 127.0.0.1:`port` with Nagle off (every request is a small write).
    pub async fn open(port: u16) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream, input: BytesMut::with_capacity(4096), out: Vec::with_capacity(256) })
    }

    /// Sends one command and waits for its reply.
    pub async fn call(&mut self, args: &[&[u8]]) -> std::io::Result<Value> {
        self.out.clear();
        resp::encode(args, &mut self.out);
        self.stream.write_all(&self.out).await?;
        self.out.clear();
        self.read_one().await
    }

    /// Queues a command for [`Conn::flush_and_read`] (pipelining).
    pub fn queue(&mut self, args: &[&[u8]]) {
        resp::encode(args, &mut self.out);
    }

    /// Writes every queued command in one write and reads `n` replies into `replies`.
    pub async fn flush_and_read(&mut self, n: usize, replies: &mut Vec<Value>) -> std::io::Result<()> {
        self.stream.write_all(&self.out).await?;
        self.out.clear();
        replies.clear();
        for _ in 0..n {
            replies.push(self.read_one().await?);
        }
        Ok(())
    }

    async fn read_one(&mut self) -> std::io::Result<Value> {
        loop {
            match resp::parse(&mut self.input) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e.0)),
            }
            if self.stream.read_buf(&mut self.input).await? == 0 {
                return Err(std::io::Error::other("connection closed"));
            }
        }
    }
}
