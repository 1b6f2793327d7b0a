//! Cluster administration commands. Any node accepts them; membership changes run on
//! the leader (forwarded there).
//!
//! ```text
//! CLUSTER.STATUS                  this node's role, term, indexes; one line per member
//! CLUSTER.JOIN id host:peer-port  add as learner, wait for it to catch up, promote
//! CLUSTER.ADDLEARNER id host:peer-port
//! CLUSTER.PROMOTE id              learner -> voter
//! CLUSTER.REMOVE id               voter or learner out; the id is never reused
//! CLUSTER.TRANSFER [id]           hand leadership to id (or the most up-to-date voter)
//! ```

use super::args::{Args, CmdError};
use super::Request;
use crate::cluster::AdminOp;
use crate::raft::NodeId;

fn node_id(a: &mut Args) -> Result<NodeId, CmdError> {
    let id = a.i64()?;
    u64::try_from(id)
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| CmdError::Other(format!("ERR node id must be a positive integer, got {id}")))
}

fn peer_addr(a: &mut Args) -> Result<String, CmdError> {
    let addr = a.bytes()?;
    let text = std::str::from_utf8(&addr)
        .ok()
        .filter(|t| t.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0)));
    text.map(str::to_string).ok_or_else(|| {
        CmdError::Other(format!("ERR peer address must be host:port, got '{}'", String::from_utf8_lossy(&addr)))
    })
}

/// Parses a cluster command; `None` if `name` is not one.
pub fn parse(name: &[u8], a: &mut Args) -> Result<Option<Request>, CmdError> {
    let op = match name {
        b"CLUSTER.STATUS" => {
            a.arity_max(0)?;
            return Ok(Some(Request::ClusterStatus));
        }
        b"CLUSTER.JOIN" | b"CLUSTER.ADDLEARNER" => {
            a.arity_min(2)?;
            a.arity_max(2)?;
            let (id, addr) = (node_id(a)?, peer_addr(a)?);
            if name == b"CLUSTER.JOIN" {
                AdminOp::Join { id, addr }
            } else {
                AdminOp::AddLearner { id, addr }
            }
        }
        b"CLUSTER.PROMOTE" | b"CLUSTER.REMOVE" => {
            a.arity_min(1)?;
            a.arity_max(1)?;
            let id = node_id(a)?;
            if name == b"CLUSTER.PROMOTE" {
                AdminOp::Promote { id }
            } else {
                AdminOp::Remove { id }
            }
        }
        b"CLUSTER.TRANSFER" => {
            a.arity_max(1)?;
            let to = if a.remaining() == 1 { Some(node_id(a)?) } else { None };
            AdminOp::Transfer { to }
        }
        _ => return Ok(None),
    };
    Ok(Some(Request::Admin(op)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn p(line: &str) -> Result<Option<Request>, CmdError> {
        let args: Vec<Bytes> = line.split(' ').map(|s| Bytes::from(s.to_string())).collect();
        let name = args[0].to_ascii_uppercase();
        parse(&name, &mut Args::new(args))
    }

    #[test]
    fn parses_each_command_and_refuses_bad_ids_and_addresses() {
        assert_eq!(p("CLUSTER.STATUS").unwrap(), Some(Request::ClusterStatus));
        assert_eq!(
            p("cluster.join 4 127.0.0.1:16382").unwrap(),
            Some(Request::Admin(AdminOp::Join { id: 4, addr: "127.0.0.1:16382".into() }))
        );
        assert_eq!(p("CLUSTER.REMOVE 2").unwrap(), Some(Request::Admin(AdminOp::Remove { id: 2 })));
        assert_eq!(p("CLUSTER.TRANSFER").unwrap(), Some(Request::Admin(AdminOp::Transfer { to: None })));
        assert_eq!(p("CLUSTER.TRANSFER 3").unwrap(), Some(Request::Admin(AdminOp::Transfer { to: Some(3) })));
        assert_eq!(p("CLUSTER.PROMOTE 0").unwrap_err().to_string(), "ERR node id must be a positive integer, got 0");
        assert_eq!(p("CLUSTER.PROMOTE x").unwrap_err(), CmdError::NotInteger);
        assert!(p("CLUSTER.JOIN 4 nowhere").unwrap_err().to_string().contains("host:port"));
        assert!(p("CLUSTER.JOIN 4 h:0").unwrap_err().to_string().contains("host:port"));
        assert_eq!(p("CLUSTER.JOIN 4").unwrap_err(), CmdError::Arity("cluster.join".into()));
        assert_eq!(p("CLUSTER.STATUS x").unwrap_err(), CmdError::Arity("cluster.status".into()));
        assert_eq!(p("GET").unwrap(), None);
    }
}
