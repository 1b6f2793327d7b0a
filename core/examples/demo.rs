//! A walk through the state machine as a server would drive it: every step is one
//! committed log entry with the leader's clock stamp. Run with
//! `cargo run -p fencelock-core --example demo`.

use bytes::Bytes;
use fencelock_core::{Command, LockMode, LockRequest, Output, StateMachine, Wait};

struct Log {
    sm: StateMachine,
    index: u64,
}

impl Log {
    fn commit(&mut self, at_ms: u64, what: &str, command: Command) -> Output {
        self.index += 1;
        let out = self.sm.apply(self.index, at_ms, command);
        println!("#{:<2} t={:>6}ms  {:<44} -> {:?}", self.index, at_ms, what, out.reply);
        for event in &out.events {
            println!("{:>20}event: {:?}", "", event);
        }
        out
    }
}

fn lock(owner: &str, ttl_ms: u64, wait: Wait, session: Option<u64>) -> Command {
    Command::Lock(LockRequest {
        names: vec![Bytes::from_static(b"orders:1")],
        owner: Bytes::copy_from_slice(owner.as_bytes()),
        token: Bytes::copy_from_slice(format!("{owner}-secret").as_bytes()),
        mode: LockMode::Exclusive,
        ttl_ms,
        session,
        metadata: Bytes::copy_from_slice(format!("held by {owner}").as_bytes()),
        wait,
        condition: None,
        idempotent: false,
    })
}

fn main() {
    println!("fencelock-core demo: the deterministic state machine every replica runs.");
    println!("(The network server is the next milestone; this shows the core it will drive.)\n");
    let mut log = Log { sm: StateMachine::default(), index: 0 };
    let queue = Wait::Queue { wait_ms: Some(60_000), priority: 0 };
    log.commit(1_000, "alice: LOCK orders:1 ttl=5s", lock("alice", 5_000, Wait::Try, None));
    log.commit(1_100, "bob: LOCK orders:1 (try)", lock("bob", 5_000, Wait::Try, None));
    log.commit(1_200, "bob: LOCK orders:1 (wait up to 60s)", lock("bob", 5_000, queue, None));
    log.commit(6_000, "tick: alice's lease ends, bob is granted", Command::Tick);
    let s = log.commit(6_100, "carol: SESSION.OPEN ttl=2s", Command::SessionOpen { ttl_ms: 2_000 });
    let session = match s.reply {
        Ok(fencelock_core::Reply::Int(id)) => id as u64,
        other => panic!("{other:?}"),
    };
    log.commit(6_200, "carol: LOCK orders:1 in her session (wait)", lock("carol", 0, queue, Some(session)));
    log.commit(
        7_000,
        "bob: UNLOCK orders:1",
        Command::Unlock { names: vec![Bytes::from_static(b"orders:1")], token: Bytes::from_static(b"bob-secret") },
    );
    log.commit(9_000, "tick: carol stopped keeping her session alive", Command::Tick);
    log.commit(9_100, "FENCE orders:1", Command::Fence { name: Bytes::from_static(b"orders:1") });
    println!("\nfences granted: strictly increasing, never reused; last fence = {}", log.sm.last_fence());
    println!("state hash after {} entries: {:016x} (identical on every replica)", log.index, log.sm.state_hash());
}
