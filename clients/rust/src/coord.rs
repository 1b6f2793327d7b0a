//! Semaphores and leader election: guards like [`crate::Lock`]'s, over SEM.* and ELECT.*.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::client::{push_wait, random_token, unexpected, Client, GiveBack, Retry};
use crate::error::{Error, Result};
use crate::lease::{renew_if_late, spawn_keepalive, LeaseState, LostSignal, Renewal};
use crate::lock::Held;
use crate::resp::Value;

/// A permit of a counting semaphore; released on drop (best effort).
pub struct Permit {
    held: Held,
}

/// Leadership of an election; resigned on drop (best effort).
pub struct Leadership {
    held: Held,
}

/// Who leads an election now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The candidate's name.
    pub candidate: Bytes,
    /// Its fence (term): strictly greater than every earlier leader's.
    pub fence: u64,
    /// The value it proclaimed.
    pub value: Bytes,
}

macro_rules! guard_accessors {
    ($t:ty) => {
        impl $t {
            /// The fencing token of this grant.
            pub fn fence(&self) -> u64 {
                self.held.fence
            }
            /// The secret that renews and releases it.
            pub fn token(&self) -> &Bytes {
                &self.held.token
            }
            /// Still valid by the client's conservative clock, and not known lost.
            pub fn is_valid(&self) -> bool {
                self.held.state.is_valid()
            }
            /// The signal that fires when it is lost.
            pub fn lost_signal(&self) -> LostSignal {
                LostSignal::new(&self.held.state)
            }
            /// Lets go: true if it was still held.
            pub async fn release(mut self) -> Result<bool> {
                self.held.release().await
            }
        }
    };
}
guard_accessors!(Permit);
guard_accessors!(Leadership);

impl Leadership {
    /// Publishes a new value as the leader (ELECT.PROCLAIM).
    pub async fn proclaim(&self, value: impl Into<Bytes>) -> Result<()> {
        self.proclaimer().proclaim(value).await
    }

    /// What proclaiming takes, apart from the leadership: a binding that keeps the
    /// leadership behind a lock takes this out and proclaims without holding the lock
    /// across the round trip (which may retry through a failover for seconds).
    pub fn proclaimer(&self) -> Proclaimer {
        Proclaimer {
            client: self.held.client.clone(),
            name: self.held.names[0].clone(),
            token: self.held.token.clone(),
        }
    }
}

/// Proclaims as a leader (see [`Leadership::proclaimer`]); the server refuses it once
/// that leadership has ended.
#[derive(Clone)]
pub struct Proclaimer {
    client: Client,
    name: Bytes,
    token: Bytes,
}

impl Proclaimer {
    /// Publishes a new value as the leader (ELECT.PROCLAIM).
    pub async fn proclaim(&self, value: impl Into<Bytes>) -> Result<()> {
        let value = value.into();
        let args: [&[u8]; 4] = [b"ELECT.PROCLAIM", &self.name, &self.token, &value];
        self.client.call(&args, Retry::Safe, Duration::ZERO).await.map(drop)
    }
}

struct Acquire {
    args: Vec<Bytes>,
    name: Bytes,
    token: Bytes,
    ttl: Duration,
    wait: Option<Duration>,
    renew: &'static str,
    release: Vec<Bytes>,
}

impl Client {
    async fn acquire_held(&self, mut a: Acquire) -> Result<Option<Held>> {
        let server_wait = push_wait(&mut a.args, a.wait);
        let refs: Vec<&[u8]> = a.args.iter().map(|x| x.as_ref()).collect();
        let sent = Instant::now();
        // Not idempotent on the server: a lost answer is Unknown, and the grant it may
        // have made is given back (as it is if this future is dropped from here on).
        let give_back = GiveBack::arm(self, a.release.clone());
        let reply = match self.call(&refs, Retry::Unsafe, server_wait).await {
            Ok(reply) => reply,
            Err(e) => {
                if !matches!(e, Error::Unknown(_) | Error::Unavailable(_)) {
                    give_back.disarm();
                }
                return Err(e);
            }
        };
        let fence = match reply.int("fence") {
            Some(f) => f as u64,
            None if reply == Value::Nil => {
                give_back.disarm();
                return Ok(None);
            }
            None => return Err(unexpected("acquire", &reply)),
        };
        let state = LeaseState::new(sent + a.ttl.mul_f64(1.0 - self.options().drift));
        let renewal = Renewal {
            args: vec![a.renew.into(), a.name.clone(), a.token.clone(), a.ttl.as_millis().max(1).to_string().into()],
            ok: |v| v.int("fence").is_some(),
            ttl: a.ttl,
        };
        renew_if_late(self, &state, &renewal).await;
        let keepalive = Some(spawn_keepalive(self.clone(), Arc::clone(&state), renewal));
        // From here the guard releases it on drop.
        give_back.disarm();
        Ok(Some(Held {
            client: self.clone(),
            names: vec![a.name],
            token: a.token,
            fence,
            state,
            keepalive,
            release: a.release,
            released: false,
            runtime: tokio::runtime::Handle::current(),
        }))
    }

    /// Takes one permit of semaphore `name` (at most `limit` held at once), queueing up
    /// to `wait` (`None`: only if one is free now). `Ok(None)` when none was free in time.
    pub async fn acquire_permit(
        &self,
        name: impl Into<Bytes>,
        limit: u32,
        ttl: Duration,
        wait: Option<Duration>,
    ) -> Result<Option<Permit>> {
        let name = name.into();
        let token = random_token();
        let ttl_ms = ttl.as_millis().max(1).to_string();
        let args: Vec<Bytes> = vec![
            "SEM.ACQUIRE".into(),
            name.clone(),
            limit.to_string().into(),
            ttl_ms.into(),
            "TOKEN".into(),
            token.clone(),
        ];
        let release = vec!["SEM.RELEASE".into(), name.clone(), token.clone()];
        let a = Acquire { args, name, token, ttl, wait, renew: "SEM.RENEW", release };
        Ok(self.acquire_held(a).await?.map(|held| Permit { held }))
    }

    /// Campaigns to lead election `name` as `candidate` with `value`, queueing up to
    /// `wait` (`Some(Duration::MAX)`: as long as it takes). `Ok(None)` when another
    /// candidate still leads when the wait runs out.
    pub async fn campaign(
        &self,
        name: impl Into<Bytes>,
        candidate: impl Into<Bytes>,
        value: impl Into<Bytes>,
        ttl: Duration,
        wait: Option<Duration>,
    ) -> Result<Option<Leadership>> {
        let name = name.into();
        let token = random_token();
        let args: Vec<Bytes> = vec![
            "ELECT.CAMPAIGN".into(),
            name.clone(),
            candidate.into(),
            ttl.as_millis().max(1).to_string().into(),
            "VALUE".into(),
            value.into(),
            "TOKEN".into(),
            token.clone(),
        ];
        let release = vec!["ELECT.RESIGN".into(), name.clone(), token.clone()];
        let a = Acquire { args, name, token, ttl, wait, renew: "ELECT.RENEW", release };
        Ok(self.acquire_held(a).await?.map(|held| Leadership { held }))
    }

    /// The current leader of election `name`, if any.
    pub async fn leader(&self, name: &[u8]) -> Result<Option<Leader>> {
        match self.call(&[b"ELECT.LEADER", name], Retry::Safe, Duration::ZERO).await? {
            Value::Nil => Ok(None),
            reply => Ok(Some(Leader {
                candidate: reply.bytes("candidate").ok_or_else(|| unexpected("ELECT.LEADER", &reply))?,
                fence: reply.int("fence").ok_or_else(|| unexpected("ELECT.LEADER", &reply))? as u64,
                value: reply.bytes("value").unwrap_or_default(),
            })),
        }
    }
}
