//! INFO, HELLO, CLIENT LIST and COMMAND replies.

use openraft::async_runtime::WatchReceiver;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::resp::{Proto, Wire};
use crate::server::Server;

/// The Redis version fencelock answers as: the command set and replies follow Redis 7.2.
pub const REDIS_COMPAT_VERSION: &str = "7.2.0";

/// HELLO's reply map.
pub fn hello(server: &Server, client_id: u64, proto: Proto) -> Wire {
    let role = if server.node.status().leader { "master" } else { "replica" };
    Wire::Map(vec![
        (Wire::text("server"), Wire::text("redis")),
        (Wire::text("version"), Wire::text(REDIS_COMPAT_VERSION)),
        (Wire::text("proto"), Wire::Int(if proto == Proto::Resp3 { 3 } else { 2 })),
        (Wire::text("id"), Wire::Int(client_id as i64)),
        (Wire::text("mode"), Wire::text("standalone")),
        (Wire::text("role"), Wire::text(role)),
        (Wire::text("modules"), Wire::Array(Vec::new())),
        (Wire::text("fencelock_version"), Wire::text(env!("CARGO_PKG_VERSION"))),
    ])
}

/// INFO's replication section, worded as Redis words it (monitoring tools parse
/// `role:` and the `slaveN:` lines), then the Raft figures.
fn replication(server: &Server, status: &crate::node::NodeStatus) -> String {
    let mut out = String::from("# Replication\r\n");
    if status.leader {
        let view = server.node.local_view();
        let metrics = server.node.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        // Connected, as Redis counts replicas: heard from within the last second
        // (openraft keeps a replication entry for a follower that is down, too, so an
        // alert on connected_slaves would never fire).
        let connected: Vec<(&u64, &u64)> =
            view.matched.iter().filter(|(id, _)| crate::cluster::heard_lately(&metrics, id)).collect();
        out += &format!("role:master\r\nconnected_slaves:{}\r\n", connected.len());
        for (n, (id, matched)) in connected.into_iter().enumerate() {
            let addr = membership.get_node(id).map(|m| m.addr.clone()).unwrap_or_default();
            let (ip, port) = addr.rsplit_once(':').unwrap_or((&addr, "0"));
            out += &format!("slave{n}:ip={ip},port={port},state=online,offset={matched},raft_node_id={id}\r\n");
        }
    } else {
        let link = if status.leader_id.is_some() { "up" } else { "down" };
        out += &format!("role:slave\r\nmaster_link_status:{link}\r\nconnected_slaves:0\r\n");
    }
    out += &format!(
        "raft_node_id:{}\r\nraft_leader_id:{}\r\nraft_term:{}\r\nraft_last_log_index:{}\r\nraft_commit_index:{}\r\nraft_applied_index:{}\r\nraft_snapshot_index:{}\r\nraft_log_bytes:{}\r\nraft_snapshot_bytes:{}\r\nprotocol_level:{}\r\ncluster_protocol_level:{}\r\ncluster_id:{}\r\n\r\n",
        server.node.id,
        status.leader_id.map_or(0, |l| l),
        status.term,
        status.last_log_index,
        status.commit_index,
        status.applied_index,
        status.snapshot_index,
        server.node.log_size.held(),
        server.node.sm.snapshot_bytes(),
        server.node.levels.own(),
        server.node.levels.cluster(),
        // Empty until drawn or learned (a cluster formed before this field existed).
        server.node.cluster_id.get().map(crate::raft::cluster_id::show).unwrap_or_default()
    );
    out
}

/// INFO [section ...]: server, clients, memory, persistence, stats, replication, keyspace.
pub fn info(server: &Server, sections: &[Bytes]) -> String {
    let wanted = |name: &str| {
        sections.is_empty()
            || sections.iter().any(|s| {
                s.eq_ignore_ascii_case(name.as_bytes())
                    || s.eq_ignore_ascii_case(b"all")
                    || s.eq_ignore_ascii_case(b"everything")
                    || s.eq_ignore_ascii_case(b"default")
            })
    };
    let status = server.node.status();
    let mut out = String::new();
    if wanted("server") {
        out += &format!(
            "# Server\r\nredis_version:{REDIS_COMPAT_VERSION}\r\nfencelock_version:{}\r\nredis_mode:standalone\r\nos:{}\r\narch_bits:{}\r\nprocess_id:{}\r\nrun_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            usize::BITS,
            std::process::id(),
            server.run_id,
            server.port,
            server.started.elapsed().as_secs()
        );
    }
    if wanted("clients") {
        let connected = server.clients.lock().expect("not poisoned").len();
        out += &format!(
            "# Clients\r\nconnected_clients:{connected}\r\nblocked_clients:{}\r\nmaxclients:{}\r\n\r\n",
            server.stats.blocked.load(Ordering::Relaxed),
            server.config.connections_max
        );
    }
    if wanted("memory") {
        // The resident size is what `--maxmemory-mib` is checked against (`memory`);
        // used_memory reports it too, for tools that read only that field.
        let (rss, max) = (server.memory.rss_bytes(), server.memory.max_bytes());
        out += &format!(
            "# Memory\r\nused_memory:{rss}\r\nused_memory_rss:{rss}\r\nmaxmemory:{max}\r\nmaxmemory_policy:noeviction\r\n\r\n"
        );
    }
    if wanted("persistence") {
        // Clients (ioredis) wait while this says loading:1; a node answers only once
        // its log is recovered and it leads, so it is always 0 here.
        out += "# Persistence\r\nloading:0\r\naof_enabled:1\r\nfencelock_fsync:always\r\n\r\n";
    }
    if wanted("stats") {
        // Scripts applied on this node (every replica applies every script entry):
        // natively for the lock clients' well-known scripts, or in the Lua VM.
        let runs = server.node.sm.shared.inner.lock().expect("not poisoned").lua.runs();
        // Concurrent writes this node proposed together in one log entry (`write_group`).
        let groups = server.node.groups().counts();
        out += &format!(
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\nfencelock_scripts_native:{}\r\nfencelock_scripts_vm:{}\r\nfencelock_write_groups:{}\r\nfencelock_grouped_writes:{}\r\nfencelock_grouped_scripts:{}\r\nfencelock_refused_groups:{}\r\nfencelock_config_deleted_keys:{}\r\n\r\n",
            server.stats.connections.load(Ordering::Relaxed),
            server.stats.commands.load(Ordering::Relaxed),
            runs.native,
            runs.vm,
            groups.entries,
            groups.writes,
            groups.scripts,
            groups.refused,
            server.node.sm.shared.inner.lock().expect("not poisoned").core.config_deletes_held()
        );
    }
    if wanted("replication") {
        out += &replication(server, &status);
    }
    if wanted("keyspace") {
        let (keys, expires, avg_ttl) = server.node.sm.shared.inner.lock().expect("not poisoned").core.keyspace_stats();
        out += "# Keyspace\r\n";
        if keys > 0 {
            out += &format!("db0:keys={keys},expires={expires},avg_ttl={avg_ttl}\r\n");
        }
        out += "\r\n";
    }
    out
}

/// CLIENT LIST (all) or CLIENT INFO (one).
pub fn client_list(server: &Server, only: Option<u64>) -> String {
    let clients = server.clients.lock().expect("not poisoned");
    let mut out = String::new();
    for (id, c) in clients.iter().filter(|(id, _)| only.is_none_or(|o| o == **id)) {
        let text = |b: &Option<Bytes>| b.as_ref().map_or(String::new(), |b| String::from_utf8_lossy(b).into_owned());
        out += &format!(
            "id={id} addr={} name={} age={} db=0 resp={} lib-name={} lib-ver={} cmd={}\n",
            c.addr,
            text(&c.name),
            c.since.elapsed().as_secs(),
            c.resp,
            text(&c.lib_name),
            text(&c.lib_ver),
            String::from_utf8_lossy(&c.last_command.lock().expect("not poisoned")).to_lowercase()
        );
    }
    out
}

/// Commands fencelock answers, with Redis's arity (negative: at least) and first/last
/// key positions, for COMMAND (redis-cli and cluster-aware clients read this).
const COMMANDS: &[(&str, i64, i64, i64)] = &[
    ("get", 2, 1, 1),
    ("set", -3, 1, 1),
    ("del", -2, 1, -1),
    ("unlink", -2, 1, -1),
    ("exists", -2, 1, -1),
    ("expire", -3, 1, 1),
    ("pexpire", -3, 1, 1),
    ("ttl", 2, 1, 1),
    ("pttl", 2, 1, 1),
    ("persist", 2, 1, 1),
    ("incr", 2, 1, 1),
    ("incrby", 3, 1, 1),
    ("decr", 2, 1, 1),
    ("decrby", 3, 1, 1),
    ("keys", 2, 0, 0),
    ("scan", -2, 0, 0),
    ("type", 2, 1, 1),
    ("dbsize", 1, 0, 0),
    ("hset", -4, 1, 1),
    ("hmset", -4, 1, 1),
    ("hget", 3, 1, 1),
    ("hdel", -3, 1, 1),
    ("hexists", 3, 1, 1),
    ("hincrby", 4, 1, 1),
    ("hgetall", 2, 1, 1),
    ("lpush", -3, 1, 1),
    ("rpush", -3, 1, 1),
    ("lpop", -2, 1, 1),
    ("rpop", -2, 1, 1),
    ("blpop", -3, 1, -2),
    ("brpop", -3, 1, -2),
    ("ping", -1, 0, 0),
    ("echo", 2, 0, 0),
    ("quit", -1, 0, 0),
    ("reset", 1, 0, 0),
    ("hello", -1, 0, 0),
    ("auth", -2, 0, 0),
    ("select", 2, 0, 0),
    ("client", -2, 0, 0),
    ("info", -1, 0, 0),
    ("command", -1, 0, 0),
    ("time", 1, 0, 0),
    ("wait", 3, 0, 0),
    ("readonly", 1, 0, 0),
    ("readwrite", 1, 0, 0),
    ("lock", -3, 1, 1),
    ("unlock", -3, 1, 1),
    ("lock.withdraw", -3, 1, 1),
    ("renew", -4, 1, 1),
    ("fence", 2, 1, 1),
    ("lock.info", 2, 1, 1),
    ("session.open", 2, 0, 0),
    ("session.keepalive", -2, 0, 0),
    ("session.close", 2, 0, 0),
    ("session.info", 2, 0, 0),
];

/// COMMAND, COMMAND COUNT, COMMAND DOCS, COMMAND INFO.
pub fn command(sub: &[u8], names: &[Bytes]) -> Wire {
    if sub.eq_ignore_ascii_case(b"COUNT") {
        return Wire::Int(COMMANDS.len() as i64);
    }
    if sub.eq_ignore_ascii_case(b"DOCS") {
        // redis-cli falls back to its built-in hints when docs are empty.
        return Wire::Map(Vec::new());
    }
    if sub.eq_ignore_ascii_case(b"INFO") {
        // COMMAND INFO name ...: only the names asked for (unknown ones are nil).
        return Wire::Array(
            names
                .iter()
                .map(|n| {
                    let n = String::from_utf8_lossy(n).to_lowercase();
                    COMMANDS.iter().find(|c| c.0 == n).map_or(Wire::Null, command_entry)
                })
                .collect(),
        );
    }
    if !sub.is_empty() {
        let sub = String::from_utf8_lossy(sub).to_lowercase();
        return Wire::Error(format!("ERR unknown subcommand '{sub}'. Try COMMAND HELP."));
    }
    Wire::Array(COMMANDS.iter().map(command_entry).collect())
}

fn command_entry(&(name, arity, first, last): &(&'static str, i64, i64, i64)) -> Wire {
    Wire::Array(vec![
        Wire::text(name),
        Wire::Int(arity),
        Wire::Array(Vec::new()),
        Wire::Int(first),
        Wire::Int(last),
        Wire::Int(i64::from(first != 0)),
    ])
}
