//! The command parser never panics: any argument vector (known command names in any
//! case, hostile arguments) parses to a request or to an error whose text is a valid
//! RESP error line.

use bytes::Bytes;
use fencelock_server::cmd::{self, Request};
use proptest::prelude::*;

const NAMES: &[&str] = &[
    "SET",
    "CFG.SET",
    "CFG.GET",
    "CFG.LIST",
    "SVC.REGISTER",
    "SVC.LIST",
    "SVC.WATCH",
    "OBSERVE",
    "OBSERVE.CANCEL",
    "ELECT.OBSERVE",
    "SESSION.BIND",
    "SESSION.UNBIND",
    "SEM.ACQUIRE",
    "SEM.RELEASE",
    "SEM.INFO",
    "COUNTER.ADD",
    "QUEUE.PUSH",
    "QUEUE.POP",
    "BARRIER.WAIT",
    "BARRIER.LEAVE",
    "ELECT.CAMPAIGN",
    "ELECT.LEADER",
    "ELECT.TRANSFER",
    "CLUSTER.JOIN",
    "CLUSTER.ADDLEARNER",
    "CLUSTER.PROMOTE",
    "CLUSTER.REMOVE",
    "CLUSTER.TRANSFER",
    "CLUSTER.STATUS",
    "GET",
    "DEL",
    "EXISTS",
    "EXPIRE",
    "PEXPIRE",
    "TTL",
    "PTTL",
    "PERSIST",
    "INCR",
    "INCRBY",
    "DECR",
    "DECRBY",
    "KEYS",
    "SCAN",
    "TYPE",
    "DBSIZE",
    "HSET",
    "HMSET",
    "HGET",
    "HDEL",
    "HEXISTS",
    "HINCRBY",
    "HGETALL",
    "LPUSH",
    "RPUSH",
    "LPOP",
    "RPOP",
    "BLPOP",
    "BRPOP",
    "PUBLISH",
    "SUBSCRIBE",
    "PSUBSCRIBE",
    "UNSUBSCRIBE",
    "PING",
    "ECHO",
    "QUIT",
    "RESET",
    "HELLO",
    "AUTH",
    "SELECT",
    "CLIENT",
    "INFO",
    "COMMAND",
    "TIME",
    "WAIT",
    "MULTI",
    "EXEC",
    "DISCARD",
    "EVAL",
    "EVALSHA",
    "SCRIPT",
    "LOCK",
    "UNLOCK",
    "RENEW",
    "FENCE",
    "LOCK.INFO",
    "SESSION.OPEN",
    "SESSION.KEEPALIVE",
    "SESSION.CLOSE",
    "SESSION.INFO",
    "READONLY",
];

const WORDS: &[&str] = &[
    "NX",
    "XX",
    "GET",
    "EX",
    "PX",
    "EXAT",
    "PXAT",
    "KEEPTTL",
    "MATCH",
    "COUNT",
    "TYPE",
    "TOKEN",
    "OWNER",
    "SHARED",
    "WAIT",
    "FOREVER",
    "PRIORITY",
    "SESSION",
    "META",
    "ALSO",
    "IFVALUE",
    "IFABSENT",
    "IFFENCE",
    "AUTH",
    "SETNAME",
    "SETINFO",
    "LIB-NAME",
    "LOAD",
    "EXISTS",
    "FLUSH",
    "ASYNC",
    "0",
    "1",
    "-1",
    "3",
    "2",
    "9223372036854775807",
    "-9223372036854775808",
    "99999999999999999999",
    "1.5",
    "-0",
    "+1",
    "",
    "0.001",
    "nan",
    "inf",
];

fn arg() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        prop::sample::select(WORDS).prop_map(|w| Bytes::from_static(w.as_bytes())),
        prop::collection::vec(any::<u8>(), 0..12).prop_map(Bytes::from),
        any::<i64>().prop_map(|n| Bytes::from(n.to_string())),
    ]
}

fn name() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        4 => (prop::sample::select(NAMES), any::<bool>())
            .prop_map(|(n, lower)| Bytes::from(if lower { n.to_lowercase() } else { n.to_string() })),
        1 => prop::collection::vec(any::<u8>(), 1..10).prop_map(Bytes::from),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4_000, ..ProptestConfig::default() })]

    #[test]
    fn any_argument_vector_parses_or_is_refused_cleanly(name in name(), rest in prop::collection::vec(arg(), 0..10)) {
        let mut args = vec![name];
        args.extend(rest);
        match cmd::parse(args) {
            Ok(Request::Core(..) | Request::Conn(_) | Request::Acquire { .. } | Request::Scan { .. }
                | Request::Eval { .. } | Request::Script(_) | Request::Immediate(_)
                | Request::Admin(_) | Request::ClusterStatus | Request::Wait { .. } | Request::ServiceRegister(_)
                | Request::ServiceList(_)) => {}
            Err(e) => {
                let text = e.to_string();
                prop_assert!(!text.is_empty());
                // Errors become one RESP line; the encoder replaces CR/LF, but the
                // parser's own texts should start with an error code word.
                let first = text.split(' ').next().unwrap_or("");
                prop_assert!(first.chars().all(|c| c.is_ascii_uppercase()), "error code word {first:?} in {text:?}");
            }
        }
    }
}
