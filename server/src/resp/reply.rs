//! Reply values and their RESP2 / RESP3 encoding.
//!
//! Hand-written rather than redis-protocol's encoders: a reply is written straight into
//! the connection's output buffer with no intermediate frame tree, and maps keep their
//! order (redis-protocol's RESP3 map is a `HashMap` by default), so replies are
//! byte-for-byte reproducible in tests.

use bytes::{BufMut, Bytes, BytesMut};

/// The protocol a connection speaks (HELLO switches it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// RESP2, the default.
    Resp2,
    /// RESP3, after `HELLO 3`.
    Resp3,
}

/// A reply as the wire sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Wire {
    /// `+OK`-style status.
    Status(&'static str),
    /// A status built at run time (TYPE's answer, say).
    StatusOwned(String),
    /// `-ERR ...`: the text includes its prefix (`ERR`, `WRONGTYPE`, `NOSCRIPT`, ...).
    Error(String),
    /// `:n`.
    Int(i64),
    /// `$n` bulk string.
    Bulk(Bytes),
    /// Null bulk (`$-1` / `_`).
    Null,
    /// Null array (`*-1` / `_`): BLPOP's timeout reply in RESP2.
    NullArray,
    /// `*n`.
    Array(Vec<Wire>),
    /// RESP3 map; a flat array in RESP2.
    Map(Vec<(Wire, Wire)>),
    /// RESP3 push (pub/sub, watches); an array in RESP2.
    Push(Vec<Wire>),
    /// RESP3 boolean; 1 / 0 in RESP2.
    Bool(bool),
    /// RESP3 double; a bulk string in RESP2.
    Double(f64),
    /// Several replies to one command, one after another (SUBSCRIBE a b answers twice).
    Sequence(Vec<Wire>),
}

impl Wire {
    /// An error reply from text that already carries its prefix.
    pub fn error(text: impl Into<String>) -> Wire {
        Wire::Error(text.into())
    }

    /// A bulk string from a `&'static str`.
    pub fn text(s: &'static str) -> Wire {
        Wire::Bulk(Bytes::from_static(s.as_bytes()))
    }

    /// Appends the encoding of this reply to `out`.
    pub fn encode(&self, proto: Proto, out: &mut BytesMut) {
        // Iterative over an explicit stack: replies can nest (SCAN, HELLO), and
        // encoding must not recurse on data a client controls.
        let mut stack: Vec<&Wire> = vec![self];
        while let Some(wire) = stack.pop() {
            match wire {
                // Status lines are cleaned as errors are: a script can return any text
                // as a status ({ok = ...}), and a line break in it would be read as
                // a second reply, putting every later reply off by one.
                Wire::Status(s) => line(out, b'+', sanitize(s).as_bytes()),
                Wire::StatusOwned(s) => line(out, b'+', sanitize(s).as_bytes()),
                Wire::Error(e) => line(out, b'-', sanitize(e).as_bytes()),
                Wire::Int(i) => line(out, b':', itoa(*i, &mut [0; 20])),
                Wire::Bulk(b) => bulk(out, b),
                Wire::Null | Wire::NullArray if proto == Proto::Resp3 => out.put_slice(b"_\r\n"),
                Wire::Null => out.put_slice(b"$-1\r\n"),
                Wire::NullArray => out.put_slice(b"*-1\r\n"),
                Wire::Array(items) => {
                    line(out, b'*', itoa(items.len() as i64, &mut [0; 20]));
                    stack.extend(items.iter().rev());
                }
                Wire::Sequence(items) => stack.extend(items.iter().rev()),
                Wire::Push(items) => {
                    let kind = if proto == Proto::Resp3 { b'>' } else { b'*' };
                    line(out, kind, itoa(items.len() as i64, &mut [0; 20]));
                    stack.extend(items.iter().rev());
                }
                Wire::Map(pairs) => {
                    match proto {
                        Proto::Resp3 => line(out, b'%', itoa(pairs.len() as i64, &mut [0; 20])),
                        Proto::Resp2 => line(out, b'*', itoa(2 * pairs.len() as i64, &mut [0; 20])),
                    }
                    for (k, v) in pairs.iter().rev() {
                        stack.push(v);
                        stack.push(k);
                    }
                }
                Wire::Bool(b) => match proto {
                    Proto::Resp3 => out.put_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
                    Proto::Resp2 => out.put_slice(if *b { b":1\r\n" } else { b":0\r\n" }),
                },
                Wire::Double(d) => match proto {
                    Proto::Resp3 => line(out, b',', d.to_string().as_bytes()),
                    Proto::Resp2 => bulk(out, d.to_string().as_bytes()),
                },
            }
        }
    }
}

/// The decimal text of `i`, written at the end of `buf` (20 bytes hold `i64::MIN`):
/// every reply's length and count prefixes pass through here, and `to_string` allocated
/// a `String` for each.
fn itoa(i: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut rest = i.unsigned_abs();
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if i < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

fn line(out: &mut BytesMut, kind: u8, text: &[u8]) {
    out.reserve(text.len() + 3);
    out.put_u8(kind);
    out.put_slice(text);
    out.put_slice(b"\r\n");
}

fn bulk(out: &mut BytesMut, data: &[u8]) {
    line(out, b'$', itoa(data.len() as i64, &mut [0; 20]));
    out.reserve(data.len() + 2);
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// Error and status lines cannot carry CR or LF; Redis replaces them with spaces too.
fn sanitize(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains(['\r', '\n']) {
        std::borrow::Cow::Owned(text.replace(['\r', '\n'], " "))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(w: &Wire, proto: Proto) -> String {
        let mut out = BytesMut::new();
        w.encode(proto, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn integers_are_written_as_to_string_writes_them() {
        for i in [0, 1, -1, 9, 10, -10, 99, 1_000_000_007, i64::MAX, i64::MIN, i64::MIN + 1] {
            assert_eq!(itoa(i, &mut [0; 20]), i.to_string().as_bytes(), "{i}");
        }
    }

    #[test]
    fn scalars() {
        assert_eq!(enc(&Wire::Status("OK"), Proto::Resp2), "+OK\r\n");
        assert_eq!(enc(&Wire::error("ERR bad\r\nthing"), Proto::Resp2), "-ERR bad  thing\r\n");
        // A script's status reply ({ok = ...}) is any text: one line on the wire.
        assert_eq!(enc(&Wire::StatusOwned("a\r\n:1".into()), Proto::Resp2), "+a  :1\r\n");
        assert_eq!(enc(&Wire::Int(-3), Proto::Resp2), ":-3\r\n");
        assert_eq!(enc(&Wire::Bulk(Bytes::from_static(b"a\r\nb")), Proto::Resp2), "$4\r\na\r\nb\r\n");
        assert_eq!(enc(&Wire::Null, Proto::Resp2), "$-1\r\n");
        assert_eq!(enc(&Wire::NullArray, Proto::Resp2), "*-1\r\n");
        assert_eq!(enc(&Wire::Null, Proto::Resp3), "_\r\n");
        assert_eq!(enc(&Wire::Bool(true), Proto::Resp3), "#t\r\n");
        assert_eq!(enc(&Wire::Bool(false), Proto::Resp2), ":0\r\n");
        assert_eq!(enc(&Wire::Double(1.5), Proto::Resp3), ",1.5\r\n");
        assert_eq!(enc(&Wire::Double(1.5), Proto::Resp2), "$3\r\n1.5\r\n");
    }

    #[test]
    fn nested_in_order() {
        let w = Wire::Array(vec![Wire::Int(1), Wire::Array(vec![Wire::text("a"), Wire::Null]), Wire::Status("OK")]);
        assert_eq!(enc(&w, Proto::Resp2), "*3\r\n:1\r\n*2\r\n$1\r\na\r\n$-1\r\n+OK\r\n");
        let m = Wire::Map(vec![(Wire::text("proto"), Wire::Int(3)), (Wire::text("id"), Wire::Int(7))]);
        assert_eq!(enc(&m, Proto::Resp3), "%2\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:7\r\n");
        assert_eq!(enc(&m, Proto::Resp2), "*4\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:7\r\n");
        let p = Wire::Push(vec![Wire::text("message"), Wire::text("ch"), Wire::text("hi")]);
        assert!(enc(&p, Proto::Resp3).starts_with(">3\r\n"));
        assert!(enc(&p, Proto::Resp2).starts_with("*3\r\n"));
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        let mut w = Wire::Int(0);
        for _ in 0..100_000 {
            w = Wire::Array(vec![w]);
        }
        let mut out = BytesMut::new();
        w.encode(Proto::Resp2, &mut out);
        assert_eq!(out.len(), 100_000 * 4 + 4);
        // Dropping a deeply nested value recursively would overflow the stack; unwrap it.
        let mut cur = w;
        while let Wire::Array(mut items) = cur {
            cur = items.pop().unwrap_or(Wire::Null);
        }
    }
}
