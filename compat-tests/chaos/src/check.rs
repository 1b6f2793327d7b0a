//! The checkers. Each returns a verdict and, for a violation, the smallest slice of
//! history that shows it.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::history::{Deliveries, ExpiringRead, FencedWrite, Grant, PushOutcome, RegCall, RegOp};

/// A check's outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Holds on this history.
    Pass,
    /// Broken; the evidence.
    Fail(String),
    /// Could not be decided (search budget); why.
    Unknown(String),
}

impl Verdict {
    /// True for `Fail`.
    pub fn failed(&self) -> bool {
        matches!(self, Verdict::Fail(_))
    }
}

fn show(g: &Grant) -> String {
    format!(
        "worker {} {} {:?} token {} fence {:?}: sent {:.1} granted {:.1} valid until {:.1}",
        g.worker, g.kind, g.name, g.token, g.fence, g.invoked_ms, g.granted_ms, g.valid_until_ms
    )
}

/// Which table a grant's name lives in: locks held by a session are native locks
/// (the same names, checked together with TTL-held ones).
fn class(kind: &str) -> &str {
    if kind == "session" {
        "native"
    } else {
        kind
    }
}

/// Mutual exclusion: at no instant do more than `capacity(kind)` grants of one name
/// consider themselves valid. A window is `[granted, valid_until)`.
pub fn mutual_exclusion(grants: &[Grant], capacity: impl Fn(&str) -> usize) -> Verdict {
    let mut by_name: BTreeMap<(&str, &str), Vec<&Grant>> = BTreeMap::new();
    for g in grants.iter().filter(|g| g.valid_until_ms > g.granted_ms) {
        by_name.entry((class(g.kind), g.name.as_str())).or_default().push(g);
    }
    for ((kind, _), windows) in by_name {
        let limit = capacity(kind);
        // Sweep over start and end points; ends sort before starts at the same time.
        let mut points: Vec<(f64, i32, usize)> = Vec::new();
        for (i, w) in windows.iter().enumerate() {
            points.push((w.granted_ms, 1, i));
            points.push((w.valid_until_ms, -1, i));
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut open: Vec<usize> = Vec::new();
        for (_, delta, i) in points {
            if delta < 0 {
                open.retain(|o| *o != i);
                continue;
            }
            open.push(i);
            if open.len() > limit {
                let evidence: Vec<String> = open.iter().map(|o| show(windows[*o])).collect();
                return Verdict::Fail(format!(
                    "{} holders of a {kind} with capacity {limit} at once:\n  {}",
                    open.len(),
                    evidence.join("\n  ")
                ));
            }
        }
    }
    Verdict::Pass
}

/// Fences follow real time: a grant whose answer arrived before another grant was
/// even requested has the lower fence (fences come from one sequence, so this holds
/// across names), and no two grants share a fence. The server gives one fence to two
/// grants only for one request (several names at once) or a repeat under the same
/// token; the workers send one name per request and a fresh token per attempt, so a
/// shared fence here is two holders who could both write to a resource with it (one
/// answered by a deposed leader, say), which the real-time order cannot see when the
/// two overlap.
pub fn fences_increase(grants: &[Grant]) -> Verdict {
    let mut fenced: Vec<&Grant> = grants.iter().filter(|g| g.fence.is_some()).collect();
    let mut by_fence: HashMap<u64, &Grant> = HashMap::with_capacity(fenced.len());
    for g in &fenced {
        let fence = g.fence.expect("filtered");
        if let Some(first) = by_fence.insert(fence, g) {
            if first.token != g.token {
                return Verdict::Fail(format!("two grants share fence {fence}:\n  {}\n  {}", show(first), show(g)));
            }
        }
    }
    fenced.sort_by(|a, b| a.invoked_ms.total_cmp(&b.invoked_ms));
    let mut by_answer: Vec<&Grant> = fenced.clone();
    by_answer.sort_by(|a, b| a.granted_ms.total_cmp(&b.granted_ms));
    let mut best: Option<&Grant> = None;
    let mut next = 0;
    for g in &fenced {
        while next < by_answer.len() && by_answer[next].granted_ms < g.invoked_ms {
            let candidate = by_answer[next];
            if best.is_none_or(|b| candidate.fence > b.fence) {
                best = Some(candidate);
            }
            next += 1;
        }
        if let Some(b) = best {
            if b.fence >= g.fence {
                return Verdict::Fail(format!(
                    "a later grant has a fence no higher than an earlier one:\n  earlier {}\n  later   {}",
                    show(b),
                    show(g)
                ));
            }
        }
    }
    Verdict::Pass
}

/// The protected resource: it never accepted a fence lower than one it had seen, and
/// no holder that still believed itself valid was fenced out (that would mean a newer
/// holder was granted while its lease was still running).
pub fn resource_fencing(writes: &[FencedWrite]) -> Verdict {
    for w in writes {
        if w.accepted && w.fence < w.highest_before {
            return Verdict::Fail(format!(
                "the resource accepted stale fence {} after seeing {}: {w:?}",
                w.fence, w.highest_before
            ));
        }
        if !w.accepted && w.within_validity {
            return Verdict::Fail(format!(
                "worker {} was fenced out of {:?} (fence {} < {}) at {:.1} ms while its lease was still valid",
                w.worker, w.name, w.fence, w.highest_before, w.at_ms
            ));
        }
    }
    Verdict::Pass
}

/// Linearizability of each register key's operations (Wing & Gong's search with
/// Lowe's memoization): some order of the operations, consistent with real time,
/// explains every result. Operations with unknown outcomes may or may not have taken
/// effect. `budget` bounds the states explored per key.
pub fn linearizable(calls: &[RegCall], budget: usize) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&RegCall>> = BTreeMap::new();
    for c in calls {
        // A read whose answer never came tells nothing.
        if c.completed_ms.is_none() && c.op == RegOp::Read {
            continue;
        }
        by_key.entry(c.key.as_str()).or_default().push(c);
    }
    let mut unknown = Vec::new();
    for (key, ops) in by_key {
        match check_key(&ops, budget) {
            Some(true) => {}
            Some(false) => {
                let slice = minimal_slice(&ops, budget);
                let shown: Vec<String> = slice.iter().rev().take(SLICE_SHOWN).rev().map(show_call).collect();
                let omitted = slice.len().saturating_sub(SLICE_SHOWN);
                return Verdict::Fail(format!(
                    "no linearization of key {key:?} ({} ops); a slice of {} ops that has none{}:\n  {}",
                    ops.len(),
                    slice.len(),
                    if omitted > 0 {
                        format!(" (its first {omitted}, writes that set the state, not shown)")
                    } else {
                        String::new()
                    },
                    shown.join("\n  ")
                ));
            }
            None => unknown.push(key.to_string()),
        }
    }
    if unknown.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Unknown(format!("search budget exceeded on keys {unknown:?}"))
    }
}

/// How many operations of a violating slice the report shows (the last ones).
const SLICE_SHOWN: usize = 24;

fn show_call(c: &RegCall) -> String {
    format!(
        "worker {} {:?} sent {:.1} done {} -> {:?} (port {})",
        c.worker,
        c.op,
        c.invoked_ms,
        c.completed_ms.map_or("unknown".into(), |t| format!("{t:.1}")),
        c.result,
        c.port
    )
}

/// Narrows a non-linearizable history of one key to a small one that is still not
/// linearizable, using only cuts that keep it evidence (if the whole history were
/// linearizable, so would the slice be):
/// - the shortest failing prefix in invocation order; an operation left out that began
///   before the prefix's last answer is kept as one whose outcome is unknown (it may have
///   taken effect in between), except reads, which change nothing and go;
/// - then reads are dropped, in halving chunks, while the rest still fails.
///
/// Writes and INCRs before the failure cannot go: they set the state the failure is
/// judged against.
pub fn minimal_slice(ops: &[&RegCall], budget: usize) -> Vec<RegCall> {
    let mut sorted: Vec<RegCall> = ops.iter().map(|c| (*c).clone()).collect();
    sorted.sort_by(|a, b| a.invoked_ms.total_cmp(&b.invoked_ms));
    let fails = |slice: &[RegCall]| check_key(&slice.iter().collect::<Vec<_>>(), budget) == Some(false);
    let prefix = |k: usize| -> Vec<RegCall> {
        let last_answer = sorted[..k]
            .iter()
            .map(|c| c.completed_ms.unwrap_or(c.invoked_ms + UNKNOWN_WINDOW_MS))
            .fold(f64::NEG_INFINITY, f64::max);
        let mut slice = sorted[..k].to_vec();
        for c in &sorted[k..] {
            if c.invoked_ms < last_answer && c.op != RegOp::Read {
                slice.push(RegCall { completed_ms: None, result: None, ..c.clone() });
            }
        }
        slice
    };
    // Failing is not monotone in the prefix length in general, so the search's answer is
    // checked and the whole history kept if it does not fail.
    let (mut lo, mut hi) = (1, sorted.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fails(&prefix(mid)) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let mut slice = prefix(hi);
    if !fails(&slice) {
        slice = sorted.clone();
    }
    let mut chunk = slice.iter().filter(|c| c.op == RegOp::Read).count().max(1);
    while chunk >= 1 {
        let mut start = 0;
        loop {
            let reads: Vec<usize> = (0..slice.len()).filter(|i| slice[*i].op == RegOp::Read).collect();
            if start >= reads.len() {
                break;
            }
            let drop: HashSet<usize> = reads[start..(start + chunk).min(reads.len())].iter().copied().collect();
            let candidate: Vec<RegCall> =
                slice.iter().enumerate().filter(|(i, _)| !drop.contains(i)).map(|(_, c)| c.clone()).collect();
            if fails(&candidate) {
                slice = candidate;
            } else {
                start += chunk;
            }
        }
        if chunk == 1 {
            break;
        }
        chunk /= 2;
    }
    slice
}

/// How long after it was sent an operation with an unknown outcome may still take
/// effect. An unanswered write can commit later only through an election that keeps its
/// entry; the harness's faults last at most 4 s, a leader gives up on a quorum after 3 s
/// and clients after 4 s, so 10 s is comfortable. It is an assumption of the checker
/// (Raft bounds nothing here): a violation reported near an unknown write deserves a
/// second look.
pub const UNKNOWN_WINDOW_MS: f64 = 10_000.0;

/// Which operations (in invocation order) are linearized: every one before `base`, and
/// those whose bit is set in `bits` (bit k is operation `base + k`). Operation `base`
/// itself never is (the set is kept normalized), so the representation stays as small
/// as the run of concurrent operations, not the whole history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct Done {
    base: usize,
    bits: Vec<u64>,
}

impl Done {
    fn contains(&self, i: usize) -> bool {
        i < self.base || {
            let k = i - self.base;
            self.bits.get(k / 64).is_some_and(|w| w & (1 << (k % 64)) != 0)
        }
    }

    /// This set with operation `i` added (normalized: base moves past every done one).
    fn with(&self, i: usize) -> Done {
        assert!(i >= self.base, "a linearized operation is linearized once");
        let mut next = self.clone();
        let k = i - next.base;
        if next.bits.len() <= k / 64 {
            next.bits.resize(k / 64 + 1, 0);
        }
        next.bits[k / 64] |= 1 << (k % 64);
        // Shift out the done prefix: whole words first, then bits.
        let full = next.bits.iter().take_while(|w| **w == u64::MAX).count();
        next.bits.drain(..full);
        next.base += full * 64;
        let shift = next.bits.first().map_or(0, |w| w.trailing_ones() as usize);
        if shift > 0 {
            next.base += shift;
            for j in 0..next.bits.len() {
                let high = next.bits.get(j + 1).copied().unwrap_or(0);
                next.bits[j] = (next.bits[j] >> shift) | if shift < 64 { high << (64 - shift) } else { 0 };
            }
        }
        while next.bits.last() == Some(&0) {
            next.bits.pop();
        }
        next
    }
}

/// Some(true): linearizable; Some(false): not; None: budget exceeded.
fn check_key(ops: &[&RegCall], budget: usize) -> Option<bool> {
    // Sorted by invocation, so the operations that may go next are always a short run
    // after the first one not yet linearized.
    let mut ops: Vec<&RegCall> = ops.to_vec();
    ops.sort_by(|a, b| a.invoked_ms.total_cmp(&b.invoked_ms));
    let n = ops.len();
    let end: Vec<f64> = ops.iter().map(|o| o.completed_ms.unwrap_or(f64::INFINITY)).collect();
    let known = ops.iter().filter(|o| o.completed_ms.is_some()).count();
    let mut seen: HashSet<(Done, i64)> = HashSet::new();
    // Depth-first: (linearized set, how many known ops it holds, state).
    let mut stack: Vec<(Done, usize, i64)> = vec![(Done::default(), 0, 0)];
    let mut explored = 0usize;
    while let Some((done, known_done, state)) = stack.pop() {
        if known_done == known {
            return Some(true);
        }
        explored += 1;
        if explored > budget {
            return None;
        }
        let is_done = |i: usize| done.contains(i);
        let first = done.base.min(n);
        // An operation with an unknown outcome that was sent more than
        // UNKNOWN_WINDOW_MS before every remaining answered operation must be decided
        // now: it took effect here, or never. Deciding it at once (two branches) keeps
        // such operations from staying pending, and multiplying states, to the end.
        let first_known = (first..n).find(|i| !is_done(*i) && ops[*i].completed_ms.is_some());
        let expired = first_known.and_then(|k| {
            (first..k).find(|i| {
                !is_done(*i)
                    && ops[*i].completed_ms.is_none()
                    && ops[*i].invoked_ms + UNKNOWN_WINDOW_MS < ops[k].invoked_ms
            })
        });
        if let Some(u) = expired {
            let next = done.with(u);
            let took_effect = match ops[u].op {
                RegOp::Write(v) => Some(v),
                RegOp::Incr => Some(state + 1),
                RegOp::Read => None,
            };
            // Never happened (pushed first, so tried last), or happened now.
            for next_state in [Some(state), took_effect].into_iter().flatten() {
                if seen.insert((next.clone(), next_state)) {
                    stack.push((next.clone(), known_done, next_state));
                }
            }
            continue;
        }
        // The earliest answer among the rest bounds what can go next; operations are
        // in invocation order, so the scan stops once one starts after that bound.
        let mut horizon = f64::INFINITY;
        let mut candidates = Vec::new();
        for i in first..n {
            if ops[i].invoked_ms > horizon {
                break;
            }
            if is_done(i) {
                continue;
            }
            candidates.push(i);
            horizon = horizon.min(end[i]);
        }
        // Depth-first tries the operation that answered first before the others (the
        // stack pops the last pushed): most histories then linearize without
        // backtracking. Operations with unknown outcomes come last: they may never
        // have happened.
        candidates.retain(|i| ops[*i].invoked_ms <= horizon);
        candidates.sort_by(|a, b| end[*b].total_cmp(&end[*a]));
        for i in candidates {
            let next_state = match (ops[i].op, ops[i].result) {
                (RegOp::Write(v), _) => v,
                (RegOp::Read, Some(r)) if r == state => state,
                (RegOp::Read, _) => continue,
                (RegOp::Incr, Some(r)) if r == state + 1 => r,
                (RegOp::Incr, None) => state + 1,
                (RegOp::Incr, _) => continue,
            };
            let next = done.with(i);
            if seen.insert((next.clone(), next_state)) {
                stack.push((next, known_done + usize::from(ops[i].completed_ms.is_some()), next_state));
            }
        }
    }
    Some(false)
}

/// No acknowledged write lost: every acknowledged key reads back with its value.
/// `read` answers the value now in the cluster.
pub fn no_lost_writes(acked: &[(String, String)], mut read: impl FnMut(&str) -> Option<String>) -> Verdict {
    let lost: Vec<&(String, String)> = acked.iter().filter(|(k, v)| read(k).as_deref() != Some(v.as_str())).collect();
    match lost.first() {
        None => Verdict::Pass,
        Some(first) => {
            Verdict::Fail(format!("{} of {} acknowledged writes lost, e.g. {first:?}", lost.len(), acked.len()))
        }
    }
}

/// Queues and lists deliver each item at most once and lose none that was acknowledged:
/// per key, no value comes out twice (two pops, or a pop and the final drain), none
/// comes out that was never pushed or whose push was refused, and the acknowledged
/// values that never came out number no more than the pops whose answer was lost (each
/// of those may have taken one item and died with it).
pub fn queue_delivery(d: &Deliveries) -> Verdict {
    let mut attempts: HashMap<(&str, &str), PushOutcome> = HashMap::new();
    for (key, value, outcome) in &d.pushed {
        attempts.insert((key, value), *outcome);
    }
    let mut seen: HashMap<(&str, &str), &str> = HashMap::new();
    let came_out = d.popped.iter().map(|p| (p, "a pop")).chain(d.remaining.iter().map(|r| (r, "the final drain")));
    for ((key, value), how) in came_out {
        if let Some(first) = seen.insert((key, value), how) {
            return Verdict::Fail(format!("{key:?} delivered {value:?} twice: by {first} and by {how}"));
        }
        match attempts.get(&(key.as_str(), value.as_str())) {
            None => return Verdict::Fail(format!("{how} of {key:?} returned {value:?}, which nobody pushed")),
            Some(PushOutcome::Refused) => {
                return Verdict::Fail(format!("{how} of {key:?} returned {value:?}, whose push was refused"))
            }
            Some(_) => {}
        }
    }
    let mut lost: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (key, value, outcome) in &d.pushed {
        if *outcome == PushOutcome::Acked && !seen.contains_key(&(key.as_str(), value.as_str())) {
            lost.entry(key).or_default().push(value);
        }
    }
    for (key, values) in lost {
        let allowed = d.unknown_pops.get(key).copied().unwrap_or(0);
        if values.len() as u64 > allowed {
            let shown: Vec<&str> = values.iter().take(10).copied().collect();
            return Verdict::Fail(format!(
                "{key:?} lost {} acknowledged items, more than the {allowed} pops whose answer was lost: {shown:?}{}",
                values.len(),
                if values.len() > 10 { " ..." } else { "" }
            ));
        }
    }
    Verdict::Pass
}

/// Keys written with a TTL expire neither early nor twice: no read finds the key gone
/// before the TTL could have run out (counted from the SET's send time, less the drift
/// allowance: Redlock's validity rule), and once a read has found it gone, no read sent
/// later finds it again. A read that reported an expiry the log did not hold yet would
/// be followed by reads on other nodes, or on the next leader, that see the key alive.
pub fn expiry_is_linearizable(reads: &[ExpiringRead], drift: f64) -> Verdict {
    let show = |r: &ExpiringRead| {
        format!(
            "worker {} GET {:?} (value {:?}, SET sent {:.1} with PX {}) sent {:.1} answered {:.1} -> {} (port {})",
            r.worker,
            r.key,
            r.value,
            r.set_invoked_ms,
            r.ttl_ms,
            r.invoked_ms,
            r.completed_ms,
            if r.present { "present" } else { "nil" },
            r.port
        )
    };
    let mut by_value: BTreeMap<(&str, &str), Vec<&ExpiringRead>> = BTreeMap::new();
    for r in reads {
        if !r.present && r.completed_ms < r.set_invoked_ms + r.ttl_ms as f64 * (1.0 - drift) {
            return Verdict::Fail(format!("a key expired before its TTL could have run out:\n  {}", show(r)));
        }
        by_value.entry((&r.key, &r.value)).or_default().push(r);
    }
    for reads in by_value.values() {
        let first_gone = reads.iter().filter(|r| !r.present).min_by(|a, b| a.completed_ms.total_cmp(&b.completed_ms));
        let Some(gone) = first_gone else { continue };
        if let Some(back) = reads.iter().find(|r| r.present && r.invoked_ms > gone.completed_ms) {
            return Verdict::Fail(format!(
                "a key read as expired was read alive again afterwards:\n  {}\n  {}",
                show(gone),
                show(back)
            ));
        }
    }
    Verdict::Pass
}

/// The run did what it is meant to check: every operation named succeeded at least
/// `floor` times. A server that refused everything (or a harness that never reached
/// it) would otherwise pass every other check.
pub fn progress(outcomes: &BTreeMap<String, [u64; 3]>, required: &[&str], floor: u64) -> Verdict {
    let short: Vec<String> = required
        .iter()
        .filter_map(|what| {
            let ok = outcomes.get(*what).map_or(0, |c| c[0]);
            (ok < floor).then(|| format!("{what}: {ok}"))
        })
        .collect();
    if short.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(format!("fewer than {floor} successes: {}", short.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(worker: usize, token: &str, fence: u64, from: f64, to: f64) -> Grant {
        Grant {
            worker,
            kind: "native",
            name: "L".into(),
            token: token.into(),
            fence: Some(fence),
            invoked_ms: from - 1.0,
            granted_ms: from,
            valid_until_ms: to,
        }
    }

    fn reg(worker: usize, op: RegOp, from: f64, to: Option<f64>, result: Option<i64>) -> RegCall {
        RegCall { worker, key: "k".into(), op, invoked_ms: from, completed_ms: to, result, port: 0 }
    }

    #[test]
    fn a_double_grant_fails_and_back_to_back_grants_pass() {
        let fine = [grant(1, "a", 5, 0.0, 100.0), grant(2, "b", 9, 100.0, 200.0)];
        assert_eq!(mutual_exclusion(&fine, |_| 1), Verdict::Pass);
        let double = [grant(1, "a", 5, 0.0, 100.0), grant(2, "b", 9, 50.0, 200.0)];
        let Verdict::Fail(why) = mutual_exclusion(&double, |_| 1) else { panic!("a double grant passed") };
        assert!(why.contains("2 holders"), "{why}");
        // A lock held by a session and one held by a TTL share one table.
        let mixed = [grant(1, "a", 5, 0.0, 100.0), Grant { kind: "session", ..grant(2, "b", 9, 50.0, 200.0) }];
        assert!(mutual_exclusion(&mixed, |_| 1).failed());
        // Two permits of a semaphore of two may overlap; three may not.
        let permits: Vec<Grant> =
            (0..3).map(|i| Grant { kind: "permit", ..grant(i, "p", 0, i as f64, 100.0) }).collect();
        assert_eq!(mutual_exclusion(&permits[..2], |_| 2), Verdict::Pass);
        assert!(mutual_exclusion(&permits, |_| 2).failed());
    }

    #[test]
    fn a_fence_that_goes_backwards_in_real_time_fails() {
        let ok = [grant(1, "a", 5, 0.0, 10.0), grant(2, "b", 9, 20.0, 30.0)];
        assert_eq!(fences_increase(&ok), Verdict::Pass);
        let backwards = [grant(1, "a", 9, 0.0, 10.0), grant(2, "b", 5, 20.0, 30.0)];
        assert!(fences_increase(&backwards).failed());
        // Concurrent requests may be granted in either order.
        let mut concurrent = [grant(1, "a", 9, 0.0, 10.0), grant(2, "b", 5, 0.5, 30.0)];
        concurrent[1].invoked_ms = -2.0;
        assert_eq!(fences_increase(&concurrent), Verdict::Pass);
    }

    #[test]
    fn two_overlapping_grants_with_one_fence_fail() {
        // Overlapping in real time, so the order check says nothing; the shared fence does.
        let shared = [grant(1, "a", 7, 0.0, 10.0), grant(2, "b", 7, 5.0, 30.0)];
        let verdict = fences_increase(&shared);
        assert!(matches!(&verdict, Verdict::Fail(why) if why.contains("share fence 7")), "{verdict:?}");
        let distinct = [grant(1, "a", 7, 0.0, 10.0), grant(2, "b", 8, 5.0, 30.0)];
        assert_eq!(fences_increase(&distinct), Verdict::Pass);
    }

    fn deliveries(
        pushed: &[(&str, PushOutcome)],
        popped: &[&str],
        unknown_pops: u64,
        remaining: &[&str],
    ) -> Deliveries {
        let pair = |v: &&str| ("q".to_string(), v.to_string());
        Deliveries {
            pushed: pushed.iter().map(|(v, o)| ("q".to_string(), v.to_string(), *o)).collect(),
            popped: popped.iter().map(pair).collect(),
            unknown_pops: [("q".to_string(), unknown_pops)].into_iter().filter(|(_, n)| *n > 0).collect(),
            remaining: remaining.iter().map(pair).collect(),
        }
    }

    #[test]
    fn a_queue_item_delivered_twice_invented_or_lost_fails() {
        use PushOutcome::{Acked, Refused, Unknown};
        let pushed = [("a", Acked), ("b", Acked), ("c", Unknown), ("d", Refused)];
        // Every acknowledged item out once; an unknown push may or may not appear.
        assert_eq!(queue_delivery(&deliveries(&pushed, &["a"], 0, &["b"])), Verdict::Pass);
        assert_eq!(queue_delivery(&deliveries(&pushed, &["a", "c"], 0, &["b"])), Verdict::Pass);
        // Twice: two pops, or a pop and the drain.
        assert!(queue_delivery(&deliveries(&pushed, &["a", "a"], 0, &["b"])).failed());
        assert!(queue_delivery(&deliveries(&pushed, &["a"], 0, &["a", "b"])).failed());
        // Nobody pushed it, or its push was refused.
        assert!(queue_delivery(&deliveries(&pushed, &["a", "z"], 0, &["b"])).failed());
        assert!(queue_delivery(&deliveries(&pushed, &["a", "d"], 0, &["b"])).failed());
        // Lost: allowed only as many as pops whose answer was lost.
        assert!(queue_delivery(&deliveries(&pushed, &["a"], 0, &[])).failed());
        assert_eq!(queue_delivery(&deliveries(&pushed, &["a"], 1, &[])), Verdict::Pass);
        assert!(queue_delivery(&deliveries(&pushed, &[], 1, &[])).failed());
    }

    #[test]
    fn an_expiry_read_early_or_undone_fails() {
        let read = |invoked_ms: f64, completed_ms: f64, present: bool| ExpiringRead {
            worker: 1,
            key: "k".into(),
            value: "v1".into(),
            set_invoked_ms: 0.0,
            ttl_ms: 200,
            invoked_ms,
            completed_ms,
            present,
            port: 0,
        };
        // Present, then gone after the TTL, then gone: fine.
        let ok = [read(10.0, 11.0, true), read(250.0, 251.0, false), read(260.0, 261.0, false)];
        assert_eq!(expiry_is_linearizable(&ok, 0.01), Verdict::Pass);
        // Concurrent reads may disagree: the second was sent before the first answered.
        let racing = [read(250.0, 255.0, false), read(254.0, 256.0, true)];
        assert_eq!(expiry_is_linearizable(&racing, 0.01), Verdict::Pass);
        // Gone, then alive again in a read sent afterwards.
        let undone = [read(250.0, 251.0, false), read(252.0, 253.0, true)];
        assert!(expiry_is_linearizable(&undone, 0.01).failed());
        // Gone before 200 ms × (1 − drift) after the SET was sent.
        let early = [read(150.0, 190.0, false)];
        assert!(expiry_is_linearizable(&early, 0.01).failed());
    }

    #[test]
    fn a_run_without_progress_fails() {
        let mut outcomes = BTreeMap::new();
        outcomes.insert("lock".to_string(), [120, 3, 4]);
        outcomes.insert("permit".to_string(), [0, 500, 0]);
        assert_eq!(progress(&outcomes, &["lock"], 50), Verdict::Pass);
        assert!(progress(&outcomes, &["lock", "permit"], 50).failed());
        assert!(progress(&outcomes, &["queue-pop"], 50).failed(), "an operation never tried fails too");
    }

    #[test]
    fn a_stale_fence_accepted_or_a_valid_holder_fenced_out_fails() {
        let w = FencedWrite {
            worker: 1,
            name: "L".into(),
            fence: 3,
            at_ms: 1.0,
            accepted: true,
            within_validity: true,
            highest_before: 2,
        };
        assert_eq!(resource_fencing(std::slice::from_ref(&w)), Verdict::Pass);
        assert!(resource_fencing(&[FencedWrite { highest_before: 7, ..w.clone() }]).failed());
        assert!(resource_fencing(&[FencedWrite { accepted: false, highest_before: 7, ..w.clone() }]).failed());
        let late = FencedWrite { accepted: false, within_validity: false, highest_before: 7, ..w };
        assert_eq!(resource_fencing(&[late]), Verdict::Pass, "a holder past its lease may be fenced out");
    }

    #[test]
    fn a_non_linearizable_read_fails_and_unknown_writes_may_land_late() {
        // w(1) completes, then a read that starts afterwards sees 0: stale.
        let stale = [reg(1, RegOp::Write(1), 0.0, Some(1.0), None), reg(2, RegOp::Read, 2.0, Some(3.0), Some(0))];
        assert!(linearizable(&stale, 100_000).failed());
        // Overlapping: the read may come first.
        let overlap = [reg(1, RegOp::Write(1), 0.0, Some(5.0), None), reg(2, RegOp::Read, 1.0, Some(2.0), Some(0))];
        assert_eq!(linearizable(&overlap, 100_000), Verdict::Pass);
        // A write with an unknown outcome may take effect long after it was sent...
        let late = [
            reg(1, RegOp::Write(7), 0.0, None, None),
            reg(2, RegOp::Read, 10.0, Some(11.0), Some(0)),
            reg(2, RegOp::Read, 20.0, Some(21.0), Some(7)),
        ];
        assert_eq!(linearizable(&late, 100_000), Verdict::Pass);
        // ...but not be undone: 7 then 0 again is impossible.
        let undone = [
            reg(1, RegOp::Write(7), 0.0, None, None),
            reg(2, RegOp::Read, 10.0, Some(11.0), Some(7)),
            reg(2, RegOp::Read, 20.0, Some(21.0), Some(0)),
        ];
        assert!(linearizable(&undone, 100_000).failed());
        // ...nor land after its window: 7 read back 20 s after it was sent is refused.
        let too_late = [
            reg(1, RegOp::Write(7), 0.0, None, None),
            reg(2, RegOp::Read, 20_000.0, Some(20_001.0), Some(0)),
            reg(2, RegOp::Read, 25_000.0, Some(25_001.0), Some(7)),
        ];
        assert!(linearizable(&too_late, 100_000).failed());
        // INCR results must count up from the state.
        let incr = [reg(1, RegOp::Incr, 0.0, Some(1.0), Some(1)), reg(2, RegOp::Incr, 2.0, Some(3.0), Some(1))];
        assert!(linearizable(&incr, 100_000).failed());
    }

    #[test]
    fn the_violation_slice_is_small_and_still_fails() {
        // 40 sequential write/read pairs, one stale read at pair 20, then 40 more pairs.
        let mut calls = Vec::new();
        let mut t = 0.0;
        for i in 0..80i64 {
            calls.push(reg(1, RegOp::Write(i + 1), t, Some(t + 1.0), None));
            let seen = if i == 20 { i } else { i + 1 };
            calls.push(reg(2, RegOp::Read, t + 2.0, Some(t + 3.0), Some(seen)));
            t += 10.0;
        }
        let Verdict::Fail(why) = linearizable(&calls, 100_000) else { panic!("a stale read passed") };
        let refs: Vec<&RegCall> = calls.iter().collect();
        let slice = minimal_slice(&refs, 100_000);
        let slice_refs: Vec<&RegCall> = slice.iter().collect();
        assert_eq!(check_key(&slice_refs, 100_000), Some(false), "the slice still has no linearization");
        // Everything after the stale read is cut, and every read but the stale one dropped:
        // the 21 writes up to it and the read that saw 20 after 21 was written.
        let reads: Vec<&RegCall> = slice.iter().filter(|c| c.op == RegOp::Read).collect();
        assert_eq!(reads.len(), 1, "{slice:?}");
        assert_eq!(reads[0].result, Some(20));
        assert_eq!(slice.len(), 22, "{slice:?}");
        assert!(why.contains("a slice of 22 ops"), "{why}");
    }

    #[test]
    fn the_compact_done_set_agrees_with_a_plain_one() {
        let mut rng = crate::workload::Rng::new(9);
        for _ in 0..200 {
            let n = 1 + rng.below(300) as usize;
            let mut plain = vec![false; n];
            let mut done = Done::default();
            for _ in 0..n {
                let i = rng.below(n as u64) as usize;
                if plain[i] {
                    continue;
                }
                plain[i] = true;
                done = done.with(i);
                for (j, p) in plain.iter().enumerate() {
                    assert_eq!(done.contains(j), *p, "op {j}");
                }
                assert_eq!(done.base, plain.iter().position(|p| !p).unwrap_or(n), "normalized");
            }
        }
    }

    #[test]
    fn a_lost_write_fails() {
        let acked = vec![("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())];
        assert_eq!(no_lost_writes(&acked, |k| Some(if k == "a" { "1" } else { "2" }.to_string())), Verdict::Pass);
        assert!(no_lost_writes(&acked, |k| (k == "a").then(|| "1".to_string())).failed());
    }
}
