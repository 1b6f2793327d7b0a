//! Connection-level commands: the handshakes Redis clients send (HELLO, AUTH, SELECT,
//! CLIENT ...), introspection (INFO, COMMAND, TIME) and PING / ECHO / QUIT / RESET.

use bytes::Bytes;

use super::args::{parse_i64, Args, CmdError};
use super::Request;

/// Connection-level commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conn {
    /// PING `[message]`.
    Ping(Option<Bytes>),
    /// ECHO message.
    Echo(Bytes),
    /// QUIT.
    Quit,
    /// RESET.
    Reset,
    /// HELLO [2|3] [AUTH user pass] [SETNAME name].
    Hello {
        /// Protocol asked for (None: keep).
        proto: Option<u8>,
        /// AUTH user pass.
        auth: Option<(Bytes, Bytes)>,
        /// SETNAME.
        name: Option<Bytes>,
    },
    /// `AUTH [user] pass`.
    Auth {
        /// The user (`default` when omitted).
        user: Option<Bytes>,
        /// The password.
        password: Bytes,
    },
    /// SELECT db.
    Select(i64),
    /// CLIENT SETNAME.
    ClientSetName(Bytes),
    /// CLIENT GETNAME.
    ClientGetName,
    /// CLIENT ID.
    ClientId,
    /// CLIENT LIST / CLIENT INFO.
    ClientList {
        /// CLIENT INFO: only this connection.
        only_self: bool,
    },
    /// CLIENT SETINFO LIB-NAME / LIB-VER: recorded, shown by CLIENT LIST.
    ClientSetInfo {
        /// LIB-NAME or LIB-VER.
        attribute: Bytes,
        /// Its value.
        value: Bytes,
    },
    /// INFO [section ...].
    Info(Vec<Bytes>),
    /// COMMAND, COMMAND COUNT, COMMAND DOCS, COMMAND INFO (with its names).
    Command(Bytes, Vec<Bytes>),
    /// TIME.
    Time,
    /// READONLY / READWRITE (Redis Cluster's opt-in to stale replica reads).
    ReadOnly(bool),
    /// SUBSCRIBE / PSUBSCRIBE (`true`: patterns).
    Subscribe(Vec<Bytes>, bool),
    /// UNSUBSCRIBE / PUNSUBSCRIBE; empty means all.
    Unsubscribe(Vec<Bytes>, bool),
    /// SESSION.BIND id / SESSION.UNBIND: the connection's default session for LOCK,
    /// SEM.ACQUIRE and ELECT.CAMPAIGN, kept alive while the connection is open.
    SessionBind(Option<u64>),
    /// OBSERVE: a watch, with the revision to replay from.
    Observe {
        /// What it selects.
        filter: crate::watch::Filter,
        /// Replay retained changes from this revision first.
        from: Option<u64>,
        /// End after the first change.
        once: bool,
    },
    /// OBSERVE.CANCEL id.
    ObserveCancel(u64),
    /// MULTI.
    Multi,
    /// EXEC.
    Exec,
    /// DISCARD.
    Discard,
}

/// `[FROM revision] [ONCE] [EVENTS kind[,kind...]]` after OBSERVE's target.
fn parse_observe(
    a: &mut Args,
    class: crate::watch::Class,
    target: Bytes,
    prefix: bool,
) -> Result<Option<Request>, CmdError> {
    let (mut from, mut once, mut kinds) = (None, false, 0u8);
    while let Some(option) = a.keyword() {
        match option.as_slice() {
            b"FROM" => {
                let rev = a.optional().ok_or(CmdError::Syntax)?;
                let rev = parse_i64(&rev)
                    .filter(|r| *r >= 0)
                    .ok_or(CmdError::Other("ERR FROM must be a non-negative revision".into()))?;
                from = Some(rev as u64);
            }
            b"ONCE" => once = true,
            b"EVENTS" => {
                let list = a.optional().ok_or(CmdError::Syntax)?;
                let known: &[&str] = match class {
                    crate::watch::Class::Key => &["set", "del", "expired"],
                    crate::watch::Class::Lock => &["released", "expired", "revoked"],
                    crate::watch::Class::Election => &["leader"],
                    crate::watch::Class::Config => &["set", "del"],
                };
                // A bit per kind: a list of millions of names is a few bits, and
                // matching a change costs the same whatever the list said.
                let mut listed = 0u8;
                for kind in list.split(|b| *b == b',').filter(|k| !k.is_empty()) {
                    let bit = known
                        .iter()
                        .find(|k| k.as_bytes().eq_ignore_ascii_case(kind))
                        .and_then(|k| crate::watch::kind_bit(k.as_bytes()));
                    let Some(bit) = bit else {
                        let shown = &kind[..kind.len().min(64)];
                        return Err(CmdError::Other(format!(
                            "ERR unknown event '{}' for this watch",
                            String::from_utf8_lossy(shown)
                        )));
                    };
                    listed |= bit;
                }
                if listed == 0 {
                    return Err(CmdError::Other("ERR EVENTS needs at least one event".into()));
                }
                kinds |= listed;
            }
            _ => return Err(CmdError::Syntax),
        }
    }
    let filter = crate::watch::Filter { class, target, prefix, kinds };
    conn(Conn::Observe { filter, from, once })
}

fn conn(c: Conn) -> Result<Option<Request>, CmdError> {
    Ok(Some(Request::Conn(c)))
}

/// Parses a connection-level command; `None` if `name` is not one.
pub fn parse(name: &[u8], a: &mut Args) -> Result<Option<Request>, CmdError> {
    match name {
        b"PING" => {
            a.arity_max(1)?;
            conn(Conn::Ping(a.optional()))
        }
        b"ECHO" => {
            let message = a.bytes()?;
            a.finish().map_err(|_| a.arity())?;
            conn(Conn::Echo(message))
        }
        b"QUIT" => conn(Conn::Quit),
        b"RESET" => {
            a.finish().map_err(|_| a.arity())?;
            conn(Conn::Reset)
        }
        b"HELLO" => parse_hello(a),
        b"AUTH" => {
            a.arity_min(1)?;
            a.arity_max(2)?;
            let first = a.bytes()?;
            match a.optional() {
                Some(password) => conn(Conn::Auth { user: Some(first), password }),
                None => conn(Conn::Auth { user: None, password: first }),
            }
        }
        b"SELECT" => {
            let db = a.bytes()?;
            a.finish().map_err(|_| a.arity())?;
            let db = parse_i64(&db).ok_or(CmdError::Other("ERR invalid DB index".into()))?;
            conn(Conn::Select(db))
        }
        b"CLIENT" => parse_client(a),
        b"INFO" => conn(Conn::Info(a.rest())),
        b"COMMAND" => {
            let sub = a.optional().unwrap_or_default();
            let names = a.rest();
            if sub.eq_ignore_ascii_case(b"COUNT") && !names.is_empty() {
                return Err(CmdError::Other("ERR wrong number of arguments for 'command|count' command".into()));
            }
            conn(Conn::Command(sub, names))
        }
        b"SESSION.BIND" => {
            let id = a.bytes()?;
            a.finish().map_err(|_| a.arity())?;
            let id = parse_i64(&id)
                .filter(|id| *id >= 0)
                .ok_or(CmdError::Other("ERR session id must be a non-negative integer".into()))?;
            conn(Conn::SessionBind(Some(id as u64)))
        }
        b"SESSION.UNBIND" => {
            a.finish().map_err(|_| a.arity())?;
            conn(Conn::SessionBind(None))
        }
        b"OBSERVE" => {
            let class = a.keyword().ok_or_else(|| a.arity())?;
            let target = a.bytes()?;
            let (class, prefix) = match class.as_slice() {
                b"KEY" => (crate::watch::Class::Key, false),
                b"PREFIX" => (crate::watch::Class::Key, true),
                b"LOCK" => (crate::watch::Class::Lock, false),
                b"ELECTION" => (crate::watch::Class::Election, false),
                b"CONFIG" => (crate::watch::Class::Config, false),
                b"CONFIGPREFIX" => (crate::watch::Class::Config, true),
                _ => {
                    return Err(CmdError::Other(
                        "ERR OBSERVE takes KEY, PREFIX, LOCK, ELECTION, CONFIG or CONFIGPREFIX".into(),
                    ))
                }
            };
            parse_observe(a, class, target, prefix)
        }
        b"SVC.WATCH" => {
            let service = super::coord::service_name(a.bytes()?)?;
            let prefix = super::coord::service_key(super::coord::SERVICE_PREFIX, &service, None);
            parse_observe(a, crate::watch::Class::Key, prefix, true)
        }
        b"ELECT.OBSERVE" => {
            let target = a.bytes()?;
            parse_observe(a, crate::watch::Class::Election, target, false)
        }
        b"OBSERVE.CANCEL" => {
            let id = a.i64()?;
            a.finish().map_err(|_| a.arity())?;
            conn(Conn::ObserveCancel(id.max(0) as u64))
        }
        b"TIME" => {
            a.finish().map_err(|_| a.arity())?;
            conn(Conn::Time)
        }
        b"WAIT" => {
            let replicas = a.i64()?;
            let timeout_ms = a.i64()?;
            a.finish().map_err(|_| a.arity())?;
            if timeout_ms < 0 {
                return Err(CmdError::Other("ERR timeout is negative".into()));
            }
            Ok(Some(Request::Wait { replicas, timeout_ms }))
        }
        b"SUBSCRIBE" | b"PSUBSCRIBE" => {
            a.arity_min(1)?;
            let names = a.rest();
            for n in &names {
                super::args::check_pattern(n)?;
            }
            conn(Conn::Subscribe(names, name == b"PSUBSCRIBE"))
        }
        b"UNSUBSCRIBE" | b"PUNSUBSCRIBE" => conn(Conn::Unsubscribe(a.rest(), name == b"PUNSUBSCRIBE")),
        b"MULTI" | b"EXEC" | b"DISCARD" => {
            a.finish().map_err(|_| a.arity())?;
            conn(match name {
                b"MULTI" => Conn::Multi,
                b"EXEC" => Conn::Exec,
                _ => Conn::Discard,
            })
        }
        b"READONLY" | b"READWRITE" => {
            a.finish().map_err(|_| a.arity())?;
            conn(Conn::ReadOnly(name == b"READONLY"))
        }
        _ => Ok(None),
    }
}

fn parse_hello(a: &mut Args) -> Result<Option<Request>, CmdError> {
    let proto = match a.optional() {
        None => None,
        Some(p) => match parse_i64(&p) {
            Some(2) => Some(2),
            Some(3) => Some(3),
            Some(_) => return Err(CmdError::Other("NOPROTO unsupported protocol version".into())),
            None => return Err(CmdError::Other("ERR Protocol version is not an integer or out of range".into())),
        },
    };
    let mut auth = None;
    let mut name = None;
    while let Some(option) = a.keyword() {
        match option.as_slice() {
            b"AUTH" if a.remaining() >= 2 => auth = Some((a.bytes()?, a.bytes()?)),
            b"SETNAME" if a.remaining() >= 1 => {
                let given = a.bytes()?;
                check_client_name(&given)?;
                name = Some(given)
            }
            _ => {
                let option = String::from_utf8_lossy(&option).into_owned();
                return Err(CmdError::Other(format!("ERR Syntax error in HELLO option '{}'", option.to_lowercase())));
            }
        }
    }
    conn(Conn::Hello { proto, auth, name })
}

/// Printable ASCII without spaces: what CLIENT LIST can show as one field.
fn printable(value: &[u8]) -> bool {
    value.iter().all(|&b| b > b' ' && b <= b'~')
}

/// A client name, from CLIENT SETNAME or HELLO ... SETNAME (Redis checks both alike).
fn check_client_name(name: &[u8]) -> Result<(), CmdError> {
    if !printable(name) {
        return Err(CmdError::Other("ERR Client names cannot contain spaces, newlines or special characters.".into()));
    }
    Ok(())
}

fn parse_client(a: &mut Args) -> Result<Option<Request>, CmdError> {
    let sub = a.keyword().ok_or_else(|| a.arity())?;
    let c = match sub.as_slice() {
        b"SETNAME" => {
            let name = a.bytes()?;
            a.finish().map_err(|_| a.arity())?;
            check_client_name(&name)?;
            Conn::ClientSetName(name)
        }
        b"GETNAME" => Conn::ClientGetName,
        b"ID" => Conn::ClientId,
        b"LIST" => Conn::ClientList { only_self: false },
        b"INFO" => Conn::ClientList { only_self: true },
        b"SETINFO" => {
            let attribute = a.bytes()?;
            let value = a.bytes()?;
            a.finish().map_err(|_| a.arity())?;
            if !attribute.eq_ignore_ascii_case(b"LIB-NAME") && !attribute.eq_ignore_ascii_case(b"LIB-VER") {
                let attribute = String::from_utf8_lossy(&attribute).into_owned();
                return Err(CmdError::Other(format!("ERR Unrecognized option '{attribute}'")));
            }
            // As Redis: CLIENT LIST prints them as space-separated fields, one client a
            // line, so a space or a newline would forge fields or clients.
            if !printable(&value) {
                let attribute = String::from_utf8_lossy(&attribute).to_lowercase();
                return Err(CmdError::Other(format!(
                    "ERR {attribute} cannot contain spaces, newlines or special characters."
                )));
            }
            Conn::ClientSetInfo { attribute, value }
        }
        _ => {
            // CLIENT TRACKING, CAPA, MAINT_NOTIFICATIONS, ...: clients ignore this error.
            let sub = String::from_utf8_lossy(&sub).into_owned();
            return Err(CmdError::Other(format!("ERR unknown subcommand '{}'. Try CLIENT HELP.", sub.to_lowercase())));
        }
    };
    conn(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::keyspace::words;
    use crate::cmd::parse_at;

    fn c(line: &str) -> Result<Request, CmdError> {
        parse_at(words(line), 0)
    }

    #[test]
    fn handshakes() {
        assert_eq!(c("HELLO 3"), Ok(Request::Conn(Conn::Hello { proto: Some(3), auth: None, name: None })));
        assert!(matches!(
            c("hello 2 auth default pw setname app"),
            Ok(Request::Conn(Conn::Hello { proto: Some(2), auth: Some(_), name: Some(_) }))
        ));
        assert_eq!(c("HELLO 4").unwrap_err().to_string(), "NOPROTO unsupported protocol version");
        assert_eq!(c("HELLO 3 AUTH x").unwrap_err().to_string(), "ERR Syntax error in HELLO option 'auth'");
        assert!(matches!(c("AUTH pw"), Ok(Request::Conn(Conn::Auth { user: None, .. }))));
        assert!(matches!(c("AUTH user pw"), Ok(Request::Conn(Conn::Auth { user: Some(_), .. }))));
        assert_eq!(c("SELECT 0"), Ok(Request::Conn(Conn::Select(0))));
        assert!(matches!(c("CLIENT SETINFO LIB-NAME redis-py"), Ok(Request::Conn(Conn::ClientSetInfo { .. }))));
        assert!(c("CLIENT SETINFO BOGUS x").is_err());
        assert_eq!(
            c("CLIENT MAINT_NOTIFICATIONS ON").unwrap_err().to_string(),
            "ERR unknown subcommand 'maint_notifications'. Try CLIENT HELP."
        );
        assert!(c("CLIENT SETNAME has space").is_err());
        // HELLO's SETNAME and CLIENT SETINFO's values are checked alike: CLIENT LIST
        // prints them as space-separated fields, one client a line.
        assert!(c("HELLO 3 SETNAME ok-name").is_ok());
        let mut args: Vec<Bytes> = ["HELLO", "3", "SETNAME"].iter().map(|s| Bytes::from(*s)).collect();
        args.push(Bytes::from_static(b"forged\nid=1"));
        assert_eq!(
            parse_at(args, 0).err().map(|e| e.to_string()).as_deref(),
            Some("ERR Client names cannot contain spaces, newlines or special characters.")
        );
        let mut args: Vec<Bytes> = ["CLIENT", "SETINFO", "LIB-NAME"].iter().map(|s| Bytes::from(*s)).collect();
        args.push(Bytes::from_static(b"redis-py addr=1.2.3.4"));
        assert_eq!(
            parse_at(args, 0).err().map(|e| e.to_string()).as_deref(),
            Some("ERR lib-name cannot contain spaces, newlines or special characters.")
        );
        assert_eq!(c("PING a b").unwrap_err().to_string(), "ERR wrong number of arguments for 'ping' command");
        assert_eq!(c("WAIT 1 -1").unwrap_err().to_string(), "ERR timeout is negative");
    }
}
