//! Connection budgets: how many connections may be in the TLS handshake,
//! how many a single source may have there, and how many may be admitted.
//!
//! A connection first needs a *handshake permit*: a slot of its lane's
//! budget (`--max-handshakes`) and of its source's bucket
//! (`--max-handshakes-per-source`). It holds the permit until the handshake
//! ends; only an admitted connection then takes a *connection slot*
//! (`--max-connections`). So clients stalling in the handshake can never
//! take the slots of admitted ones, and admitted ones can never keep new
//! handshakes out.
//!
//! There are two lanes, each with its own budget and its own per-source
//! buckets: the *control plane* (the source addresses of the master and the
//! master candidates, from ssconf) and the *general* lane (every other
//! address). A flood from any number of other addresses fills the general
//! lane only, so the master and the candidates always find handshake slots.
//! The lane is chosen by the TCP source address, which a peer cannot forge
//! without completing the TCP handshake from it; the lane grants a slot,
//! never a right: authorization happens in the TLS handshake as for anyone.
//!
//! Everything here is lock-free: counters are atomics, the control-plane
//! addresses an [`ArcSwap`], and a source's bucket is picked by SipHash with
//! this process's random key, so a flood cannot aim at a victim's bucket.
//! Two sources sharing a bucket only make the cap stricter for both.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// Per-source buckets of each lane: 16 KiB of counters per lane.
const SOURCE_BUCKETS: usize = 4096;

/// The lane a connection's handshake runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Any source that is not the master's or a candidate's address.
    General,
    /// The addresses of the master and the master candidates.
    ControlPlane,
}

impl Lane {
    /// The `lane` label of the metrics.
    pub fn label(self) -> &'static str {
        match self {
            Lane::General => "general",
            Lane::ControlPlane => "control_plane",
        }
    }
}

/// Which budget was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// The lane's handshake budget.
    Handshakes { lane: Lane, limit: u32 },
    /// The source's share of its lane.
    HandshakesFromSource { limit: u32 },
    /// The admitted connections' budget.
    Connections { limit: u32 },
}

impl fmt::Display for Exhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exhausted::Handshakes {
                lane: Lane::General,
                limit,
            } => write!(f, "handshake limit of {limit} reached"),
            Exhausted::Handshakes {
                lane: Lane::ControlPlane,
                limit,
            } => write!(f, "control-plane handshake limit of {limit} reached"),
            Exhausted::HandshakesFromSource { limit } => {
                write!(f, "limit of {limit} pending handshakes per source reached")
            }
            Exhausted::Connections { limit } => write!(f, "connection limit of {limit} reached"),
        }
    }
}

/// Adds one to `counter` unless it is at `limit`.
fn try_increment(counter: &AtomicU32, limit: u32) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

/// One lane: its pending handshakes and its per-source buckets.
#[derive(Debug)]
struct HandshakeLane {
    lane: Lane,
    pending: AtomicU32,
    limit: u32,
    per_source: Box<[AtomicU32]>,
    per_source_limit: u32,
    key: RandomState,
}

impl HandshakeLane {
    fn new(lane: Lane, limit: u32, per_source_limit: u32) -> Self {
        HandshakeLane {
            lane,
            pending: AtomicU32::new(0),
            limit,
            per_source: (0..SOURCE_BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            per_source_limit,
            key: RandomState::new(),
        }
    }

    fn bucket(&self, source: IpAddr) -> usize {
        // An IPv6 host usually owns a whole /64: key on that, so one host
        // is one source whatever address of its /64 it picks.
        let key: u128 = match source {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => (u128::from(v6) >> 64) | (1 << 127),
        };
        (self.key.hash_one(key) as usize) % self.per_source.len()
    }
}

/// A connection's right to be in the handshake; released on drop.
#[derive(Debug)]
pub struct HandshakePermit {
    lane: Arc<HandshakeLane>,
    bucket: usize,
}

impl HandshakePermit {
    pub fn lane(&self) -> Lane {
        self.lane.lane
    }
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        if let Some(b) = self.lane.per_source.get(self.bucket) {
            b.fetch_sub(1, Ordering::AcqRel);
        }
        self.lane.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An admitted connection's slot; released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    open: Arc<AtomicU32>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The daemon's budgets and the control-plane addresses.
#[derive(Debug)]
pub struct Budgets {
    general: Arc<HandshakeLane>,
    control_plane: Arc<HandshakeLane>,
    control_plane_addresses: ArcSwap<Vec<IpAddr>>,
    open: Arc<AtomicU32>,
    max_connections: u32,
}

impl Budgets {
    /// Budgets of `max_handshakes` per lane, `per_source` per source and
    /// lane, and `max_connections` admitted connections.
    pub fn new(max_handshakes: u32, per_source: u32, max_connections: u32) -> Self {
        Budgets {
            general: Arc::new(HandshakeLane::new(
                Lane::General,
                max_handshakes,
                per_source,
            )),
            control_plane: Arc::new(HandshakeLane::new(
                Lane::ControlPlane,
                max_handshakes,
                per_source,
            )),
            control_plane_addresses: ArcSwap::from_pointee(Vec::new()),
            open: Arc::new(AtomicU32::new(0)),
            max_connections,
        }
    }

    /// The lane of a connection from `source`.
    pub fn lane_of(&self, source: IpAddr) -> Lane {
        if self
            .control_plane_addresses
            .load()
            .contains(&source.to_canonical())
        {
            Lane::ControlPlane
        } else {
            Lane::General
        }
    }

    /// A handshake permit for a connection from `source`, or the budget
    /// that is full.
    pub fn start_handshake(&self, source: IpAddr) -> Result<HandshakePermit, Exhausted> {
        let source = source.to_canonical();
        let lane = match self.lane_of(source) {
            Lane::General => &self.general,
            Lane::ControlPlane => &self.control_plane,
        };
        let bucket = lane.bucket(source);
        let Some(counter) = lane.per_source.get(bucket) else {
            return Err(Exhausted::HandshakesFromSource { limit: 0 });
        };
        if !try_increment(counter, lane.per_source_limit) {
            return Err(Exhausted::HandshakesFromSource {
                limit: lane.per_source_limit,
            });
        }
        if !try_increment(&lane.pending, lane.limit) {
            counter.fetch_sub(1, Ordering::AcqRel);
            return Err(Exhausted::Handshakes {
                lane: lane.lane,
                limit: lane.limit,
            });
        }
        Ok(HandshakePermit {
            lane: lane.clone(),
            bucket,
        })
    }

    /// A slot for a connection that completed its handshake.
    pub fn admit(&self) -> Result<ConnectionSlot, Exhausted> {
        if try_increment(&self.open, self.max_connections) {
            Ok(ConnectionSlot {
                open: self.open.clone(),
            })
        } else {
            Err(Exhausted::Connections {
                limit: self.max_connections,
            })
        }
    }

    /// Replaces the control-plane addresses.
    pub fn set_control_plane(&self, addresses: Vec<IpAddr>) {
        let mut addresses: Vec<IpAddr> = addresses.iter().map(IpAddr::to_canonical).collect();
        addresses.sort_unstable();
        addresses.dedup();
        self.control_plane_addresses.store(Arc::new(addresses));
    }

    /// The control-plane addresses in force.
    pub fn control_plane(&self) -> Arc<Vec<IpAddr>> {
        self.control_plane_addresses.load_full()
    }

    /// Handshakes in progress in `lane`.
    pub fn pending(&self, lane: Lane) -> u32 {
        match lane {
            Lane::General => self.general.pending.load(Ordering::Relaxed),
            Lane::ControlPlane => self.control_plane.pending.load(Ordering::Relaxed),
        }
    }

    /// Admitted connections open now.
    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_source_cap_then_lane_budget() {
        let b = Budgets::new(3, 2, 1);
        let a1 = b.start_handshake(ip("10.0.0.1")).unwrap();
        let _a2 = b.start_handshake(ip("10.0.0.1")).unwrap();
        assert_eq!(
            b.start_handshake(ip("10.0.0.1")).unwrap_err(),
            Exhausted::HandshakesFromSource { limit: 2 }
        );
        // A refused source takes nothing from the lane.
        assert_eq!(b.pending(Lane::General), 2);
        let _b1 = b.start_handshake(ip("10.0.0.2")).unwrap();
        let full = b.start_handshake(ip("10.0.0.3")).unwrap_err();
        assert_eq!(
            full,
            Exhausted::Handshakes {
                lane: Lane::General,
                limit: 3
            }
        );
        drop(a1);
        assert_eq!(b.pending(Lane::General), 2);
        let _c = b.start_handshake(ip("10.0.0.3")).unwrap();
    }

    #[test]
    fn control_plane_has_its_own_lane() {
        let b = Budgets::new(2, 2, 4);
        b.set_control_plane(vec![ip("10.0.0.9"), ip("::ffff:10.0.0.8")]);
        let _flood: Vec<_> = ["10.1.0.1", "10.1.0.2"]
            .iter()
            .map(|a| b.start_handshake(ip(a)).unwrap())
            .collect();
        assert!(b.start_handshake(ip("10.1.0.3")).is_err());
        let mc = b.start_handshake(ip("10.0.0.9")).unwrap();
        assert_eq!(mc.lane(), Lane::ControlPlane);
        // IPv4-mapped IPv6 is the same source as its IPv4 address.
        let mapped = b.start_handshake(ip("::ffff:10.0.0.9")).unwrap();
        assert_eq!(mapped.lane(), Lane::ControlPlane);
        assert_eq!(b.lane_of(ip("10.0.0.8")), Lane::ControlPlane);
        assert_eq!(b.pending(Lane::ControlPlane), 2);
        b.set_control_plane(Vec::new());
        assert_eq!(b.lane_of(ip("10.0.0.9")), Lane::General);
    }

    #[test]
    fn connection_slots() {
        let b = Budgets::new(1, 1, 2);
        let s1 = b.admit().unwrap();
        let _s2 = b.admit().unwrap();
        assert_eq!(b.admit().unwrap_err(), Exhausted::Connections { limit: 2 });
        drop(s1);
        assert_eq!(b.open(), 1);
        assert!(b.admit().is_ok());
    }

    #[test]
    fn one_ipv6_host_is_one_source() {
        let b = Budgets::new(10, 1, 1);
        let _p = b.start_handshake(ip("2001:db8::1")).unwrap();
        assert_eq!(
            b.start_handshake(ip("2001:db8::2")).unwrap_err(),
            Exhausted::HandshakesFromSource { limit: 1 }
        );
    }
}
