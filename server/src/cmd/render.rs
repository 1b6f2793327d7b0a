//! Core replies → Redis replies, per command shape.

use fencelock_core::{HolderInfo, LockInfo, LockMode, Reply};

use super::Shape;
use crate::resp::Wire;

/// Renders a core reply for a command of this shape. `Queued` never reaches here: the
/// connection waits for the waiter's event instead.
pub fn render(reply: Reply, shape: Shape) -> Wire {
    match (reply, shape) {
        (Reply::Int(ms), Shape::Seconds) if ms >= 0 => Wire::Int((ms + 500) / 1000),
        (Reply::Bulk(name), Shape::Status) => Wire::StatusOwned(String::from_utf8_lossy(&name).into_owned()),
        (Reply::Nil, Shape::BlockingPop | Shape::NullArray) => Wire::NullArray,
        (_, Shape::Ok) => Wire::Status("OK"),
        (Reply::Array(flat), Shape::Map) => {
            let mut items = flat.into_iter().map(plain);
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                pairs.push((k, v));
            }
            Wire::Map(pairs)
        }
        (Reply::Grant(g), Shape::Grant(ttl_ms)) => grant(g, None, Some(ttl_ms)),
        (Reply::Array(items), Shape::Fields(names)) if items.len() == names.len() => {
            Wire::Map(names.iter().copied().map(Wire::text).zip(items.into_iter().map(plain)).collect())
        }
        (Reply::Ok, Shape::Barrier) => Wire::Status("OK"),
        (Reply::Info(info), Shape::Leader) => match info.holders.into_iter().next() {
            None => Wire::Null,
            Some(h) => {
                let ttl = h.ttl_ms.map_or(-1, |t| t as i64);
                let session = h.session.map_or(Wire::Null, |s| Wire::Int(s as i64));
                Wire::Map(vec![
                    (Wire::text("candidate"), Wire::Bulk(h.owner)),
                    (Wire::text("fence"), Wire::Int(h.fence as i64)),
                    (Wire::text("ttl"), Wire::Int(ttl)),
                    (Wire::text("value"), Wire::Bulk(h.metadata)),
                    (Wire::text("session"), session),
                ])
            }
        },
        (reply, _) => plain(reply),
    }
}

/// A grant as LOCK and RENEW answer it: `fence`, `token` (LOCK only), `holds`, and
/// `ttl`: the lease length the request asked for, in ms (-1: session-bound). The
/// deadline itself is on the replicated clock, which means nothing to a client.
pub fn grant(g: fencelock_core::Grant, token: Option<bytes::Bytes>, ttl_ms: Option<u64>) -> Wire {
    let ttl = if g.deadline_ms == u64::MAX { -1 } else { ttl_ms.map_or(-1, |t| t as i64) };
    let mut fields = vec![(Wire::text("fence"), Wire::Int(g.fence as i64))];
    if let Some(token) = token {
        fields.push((Wire::text("token"), Wire::Bulk(token)));
    }
    fields.push((Wire::text("holds"), Wire::Int(i64::from(g.holds))));
    fields.push((Wire::text("ttl"), Wire::Int(ttl)));
    Wire::Map(fields)
}

/// The shape-independent rendering.
pub fn plain(reply: Reply) -> Wire {
    match reply {
        Reply::Ok => Wire::Status("OK"),
        Reply::Nil => Wire::Null,
        Reply::Int(i) => Wire::Int(i),
        Reply::Bulk(b) => Wire::Bulk(b),
        Reply::Array(items) => Wire::Array(items.into_iter().map(plain).collect()),
        Reply::Grant(g) => Wire::Int(g.fence as i64),
        Reply::Queued(id) => Wire::Int(id as i64),
        Reply::Info(info) => lock_info(info),
        other => Wire::Error(format!("ERR unexpected reply {other:?}")),
    }
}

/// Lock info as a map: mode, waiters, holders (each a map).
pub fn lock_info(info: LockInfo) -> Wire {
    let mode = match info.mode {
        None => Wire::Null,
        Some(LockMode::Exclusive) => Wire::text("exclusive"),
        Some(LockMode::Shared) => Wire::text("shared"),
    };
    Wire::Map(vec![
        (Wire::text("mode"), mode),
        (Wire::text("waiters"), Wire::Int(info.waiters as i64)),
        (Wire::text("holders"), Wire::Array(info.holders.into_iter().map(holder).collect())),
    ])
}

fn holder(h: HolderInfo) -> Wire {
    Wire::Map(vec![
        (Wire::text("owner"), Wire::Bulk(h.owner)),
        (Wire::text("fence"), Wire::Int(h.fence as i64)),
        (Wire::text("holds"), Wire::Int(i64::from(h.holds))),
        (Wire::text("ttl"), h.ttl_ms.map_or(Wire::Int(-1), |ms| Wire::Int(ms as i64))),
        (Wire::text("session"), h.session.map_or(Wire::Null, |s| Wire::Int(s as i64))),
        (Wire::text("metadata"), Wire::Bulk(h.metadata)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn ttl_rounds_like_redis_and_keeps_negative_codes() {
        assert_eq!(render(Reply::Int(1_499), Shape::Seconds), Wire::Int(1));
        assert_eq!(render(Reply::Int(1_500), Shape::Seconds), Wire::Int(2));
        assert_eq!(render(Reply::Int(-2), Shape::Seconds), Wire::Int(-2));
        assert_eq!(render(Reply::Int(-1), Shape::Seconds), Wire::Int(-1));
    }

    #[test]
    fn type_is_a_status_and_blpop_timeout_is_a_null_array() {
        assert_eq!(
            render(Reply::Bulk(Bytes::from_static(b"string")), Shape::Status),
            Wire::StatusOwned("string".into())
        );
        assert_eq!(render(Reply::Nil, Shape::BlockingPop), Wire::NullArray);
        assert_eq!(render(Reply::Int(2), Shape::Ok), Wire::Status("OK"));
    }
}
