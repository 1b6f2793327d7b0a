//! RESP3 on the client side: commands out as arrays of bulk strings, replies in as
//! [`Value`]s. The parser is bounded (depth, element count, bulk length) so a broken or
//! hostile peer cannot make the client allocate without limit.

use bytes::{Buf, Bytes, BytesMut};

/// The deepest nesting of aggregates a reply may have.
const DEPTH_MAX: usize = 32;
/// The most elements one aggregate may announce.
const ELEMENTS_MAX: usize = 16 * 1024 * 1024;
/// The longest bulk string accepted (Redis's proto-max-bulk-len).
const BULK_BYTES_MAX: usize = 512 * 1024 * 1024;

/// A reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `_`, `$-1`, `*-1`.
    Nil,
    /// `+...`.
    Simple(String),
    /// `-...` (also `!` blob errors).
    Error(String),
    /// `:n`.
    Int(i64),
    /// `,d`.
    Double(f64),
    /// `#t` / `#f`.
    Bool(bool),
    /// `$n`, `=n` (verbatim, format prefix kept), `(` big numbers as text.
    Bulk(Bytes),
    /// `*n` and `~n` (sets).
    Array(Vec<Value>),
    /// `%n` (and `|n` attributes, which are otherwise skipped).
    Map(Vec<(Value, Value)>),
    /// `>n`: out-of-band data (watch events, pub/sub).
    Push(Vec<Value>),
}

impl Value {
    /// The value of `field` in a map reply (or a flat RESP2-style array of pairs).
    pub fn field(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Map(pairs) => pairs.iter().find(|(k, _)| k.is_text(name)).map(|(_, v)| v),
            Value::Array(items) => items.chunks(2).find(|p| p.len() == 2 && p[0].is_text(name)).map(|p| &p[1]),
            _ => None,
        }
    }

    /// An integer field.
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.field(name)? {
            Value::Int(i) => Some(*i),
            Value::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    /// A byte-string field.
    pub fn bytes(&self, name: &str) -> Option<Bytes> {
        match self.field(name)? {
            Value::Bulk(b) => Some(b.clone()),
            Value::Simple(s) => Some(Bytes::from(s.clone())),
            _ => None,
        }
    }

    fn is_text(&self, text: &str) -> bool {
        match self {
            Value::Bulk(b) => b.as_ref() == text.as_bytes(),
            Value::Simple(s) => s == text,
            _ => false,
        }
    }
}

/// Appends a command as an array of bulk strings.
pub fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// A reply the peer sent that is not RESP (or breaks a bound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

/// Parses one complete reply from the front of `buf` and consumes it; `Ok(None)` when
/// more bytes are needed (nothing consumed).
pub fn parse(buf: &mut BytesMut) -> Result<Option<Value>, ProtocolError> {
    let mut at = 0;
    match value(buf, &mut at, 0)? {
        None => Ok(None),
        Some(v) => {
            buf.advance(at);
            Ok(Some(v))
        }
    }
}

fn line<'a>(buf: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let rest = &buf[*at..];
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    *at += end + 2;
    Some(&rest[..end])
}

fn number(text: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| ProtocolError(format!("bad number {:?}", String::from_utf8_lossy(text))))
}

fn value(buf: &[u8], at: &mut usize, depth: usize) -> Result<Option<Value>, ProtocolError> {
    if depth > DEPTH_MAX {
        return Err(ProtocolError(format!("reply nested deeper than {DEPTH_MAX}")));
    }
    let Some(&kind) = buf.get(*at) else { return Ok(None) };
    *at += 1;
    let Some(head) = line(buf, at) else { return Ok(None) };
    let text = || String::from_utf8_lossy(head).into_owned();
    Ok(Some(match kind {
        b'+' => Value::Simple(text()),
        b'-' => Value::Error(text()),
        b':' => Value::Int(number(head)?),
        b'_' => Value::Nil,
        b',' => Value::Double(text().parse().map_err(|_| ProtocolError(format!("bad double {}", text())))?),
        b'#' => Value::Bool(head == b"t"),
        b'(' => Value::Bulk(Bytes::copy_from_slice(head)),
        b'$' | b'=' | b'!' => {
            let n = number(head)?;
            if n < 0 {
                return Ok(Some(Value::Nil));
            }
            let n = n as usize;
            if n > BULK_BYTES_MAX {
                return Err(ProtocolError(format!("bulk of {n} bytes is over {BULK_BYTES_MAX}")));
            }
            if buf.len() < *at + n + 2 {
                return Ok(None);
            }
            let data = Bytes::copy_from_slice(&buf[*at..*at + n]);
            *at += n + 2;
            if kind == b'!' {
                Value::Error(String::from_utf8_lossy(&data).into_owned())
            } else {
                Value::Bulk(data)
            }
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n = number(head)?;
            if n < 0 {
                return Ok(Some(Value::Nil));
            }
            let n = n as usize;
            if n > ELEMENTS_MAX {
                return Err(ProtocolError(format!("aggregate of {n} elements is over {ELEMENTS_MAX}")));
            }
            let pairs = matches!(kind, b'%' | b'|');
            let count = if pairs { n * 2 } else { n };
            let mut items = Vec::with_capacity(count.min(1024));
            for _ in 0..count {
                match value(buf, at, depth + 1)? {
                    None => return Ok(None),
                    Some(v) => items.push(v),
                }
            }
            match kind {
                b'>' => Value::Push(items),
                b'%' => Value::Map(pairs_of(items)),
                // An attribute annotates the reply that follows it: skip to that one,
                // one level deeper, so a run of attributes meets the depth bound rather
                // than the end of the stack.
                b'|' => return value(buf, at, depth + 1),
                _ => Value::Array(items),
            }
        }
        other => return Err(ProtocolError(format!("unknown reply type byte {other:#04x}"))),
    }))
}

fn pairs_of(items: Vec<Value>) -> Vec<(Value, Value)> {
    let mut pairs = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        pairs.push((k, v));
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &[u8]) -> Value {
        let mut buf = BytesMut::from(text);
        let v = parse(&mut buf).unwrap().expect("complete");
        assert!(buf.is_empty(), "all consumed");
        v
    }

    #[test]
    fn parses_every_reply_type() {
        assert_eq!(one(b"+OK\r\n"), Value::Simple("OK".into()));
        assert_eq!(one(b"-ERR no\r\n"), Value::Error("ERR no".into()));
        assert_eq!(one(b":-7\r\n"), Value::Int(-7));
        assert_eq!(one(b"_\r\n"), Value::Nil);
        assert_eq!(one(b"$-1\r\n"), Value::Nil);
        assert_eq!(one(b"$3\r\na\r\n\r\n"), Value::Bulk(Bytes::from_static(b"a\r\n")));
        assert_eq!(one(b"#t\r\n"), Value::Bool(true));
        assert_eq!(one(b",1.5\r\n"), Value::Double(1.5));
        let map = one(b"%2\r\n$5\r\nfence\r\n:9\r\n$5\r\ntoken\r\n$1\r\nt\r\n");
        assert_eq!(map.int("fence"), Some(9));
        assert_eq!(map.bytes("token"), Some(Bytes::from_static(b"t")));
        let flat = one(b"*2\r\n$5\r\nfence\r\n:9\r\n");
        assert_eq!(flat.int("fence"), Some(9), "RESP2 flat pairs read the same");
        assert_eq!(one(b">2\r\n+a\r\n:1\r\n"), Value::Push(vec![Value::Simple("a".into()), Value::Int(1)]));
        assert_eq!(one(b"|1\r\n+k\r\n+v\r\n:5\r\n"), Value::Int(5), "attributes are skipped");
    }

    #[test]
    fn partial_input_waits_and_garbage_is_refused() {
        let mut buf = BytesMut::from(&b"*2\r\n:1\r\n"[..]);
        assert_eq!(parse(&mut buf), Ok(None));
        assert_eq!(buf.len(), 8, "nothing consumed");
        buf.extend_from_slice(b":2\r\n");
        assert_eq!(parse(&mut buf), Ok(Some(Value::Array(vec![Value::Int(1), Value::Int(2)]))));
        assert!(parse(&mut BytesMut::from(&b"?x\r\n"[..])).is_err());
        let deep = "*1\r\n".repeat(40) + ":1\r\n";
        assert!(parse(&mut BytesMut::from(deep.as_bytes())).is_err(), "depth is bounded");
        // A long run of attributes (each annotating the next) is bounded the same way,
        // not by the stack.
        let attributes = format!("{}:1\r\n", "|0\r\n".repeat(200_000));
        assert!(parse(&mut BytesMut::from(attributes.as_bytes())).is_err(), "a run of attributes is bounded");
        assert_eq!(one(b"|1\r\n+ttl\r\n:3\r\n:1\r\n"), Value::Int(1), "one attribute is skipped");
        assert!(parse(&mut BytesMut::from(&b"$999999999999\r\n"[..])).is_err(), "bulk length is bounded");
    }

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        let mut out = Vec::new();
        encode(&[b"LOCK", b"a b"], &mut out);
        assert_eq!(out, b"*2\r\n$4\r\nLOCK\r\n$3\r\na b\r\n");
    }
}
