//! The sandbox's name table for transparent egress: each name its DNS is
//! asked for gets an address from a reserved range (routed to the
//! sandbox's `lo`), and a connection to that address means that name.
//! Guards against unbounded memory (a fixed number of entries, each name
//! at most 253 bytes) and against an address meaning two names to a client
//! that still holds an old answer: an address is reused only when its name
//! has been neither asked for nor connected to for `REUSE_AFTER`, far past
//! the answers' TTL; a table full of younger entries answers nothing new.
#![forbid(unsafe_code)]
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The reserved range (RFC 2544's benchmarking block, never routed on the
/// Internet): all of it is local inside the sandbox.
pub const RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 15);
/// The address `lo` holds for the range (never handed out).
pub const RANGE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The first address handed out; the rest follow it.
const FIRST: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
/// Names one sandbox holds at once.
pub const MAX_NAMES: usize = 16384;
/// The TTL of every answer.
pub const TTL: Duration = Duration::from_secs(60);
/// How long an entry unused (not asked, not connected to) keeps its address.
pub const REUSE_AFTER: Duration = Duration::from_secs(600);

/// Whether `ip` is in the reserved range.
pub fn in_range(ip: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - RANGE.1);
    u32::from(ip) & mask == u32::from(RANGE.0) & mask
}

struct Slot {
    name: String,
    last: Instant,
}

/// Name <-> address, per sandbox.
pub struct Names {
    inner: Mutex<Table>,
}

struct Table {
    by_name: HashMap<String, usize>,
    slots: Vec<Slot>,
    capacity: usize,
    reuse_after: Duration,
}

impl Default for Names {
    fn default() -> Names {
        Names::with_capacity(MAX_NAMES, REUSE_AFTER)
    }
}

impl Names {
    pub fn with_capacity(capacity: usize, reuse_after: Duration) -> Names {
        let capacity = capacity.min(MAX_NAMES);
        Names { inner: Mutex::new(Table { by_name: HashMap::new(), slots: Vec::new(), capacity, reuse_after }) }
    }

    /// The address for `name` (already lower-case, checked), given now or
    /// before; `None` when the table is full of entries in use.
    pub fn address_for(&self, name: &str, now: Instant) -> Option<Ipv4Addr> {
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&i) = t.by_name.get(name) {
            t.slots[i].last = now;
            return Some(address(i));
        }
        let i = if t.slots.len() < t.capacity {
            t.slots.push(Slot { name: name.to_string(), last: now });
            t.slots.len() - 1
        } else {
            let (i, oldest) = t.slots.iter().enumerate().min_by_key(|(_, s)| s.last)?;
            if now.saturating_duration_since(oldest.last) < t.reuse_after {
                return None;
            }
            let old = std::mem::replace(&mut t.slots[i], Slot { name: name.to_string(), last: now });
            t.by_name.remove(&old.name);
            i
        };
        t.by_name.insert(name.to_string(), i);
        Some(address(i))
    }

    /// The name `ip` was given for, if it was; the entry counts as used now.
    pub fn name_of(&self, ip: Ipv4Addr, now: Instant) -> Option<String> {
        let i = usize::try_from(u32::from(ip).checked_sub(u32::from(FIRST))?).ok()?;
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let slot = t.slots.get_mut(i)?;
        slot.last = now;
        Some(slot.name.clone())
    }
}

fn address(i: usize) -> Ipv4Addr {
    // i < MAX_NAMES, far below the range's size.
    Ipv4Addr::from(u32::from(FIRST) + i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_name_same_address_and_back() {
        let n = Names::default();
        let now = Instant::now();
        let a = n.address_for("up.test", now).unwrap();
        assert!(in_range(a) && a != RANGE_ADDR);
        assert_eq!(n.address_for("up.test", now), Some(a));
        let b = n.address_for("other.test", now).unwrap();
        assert_ne!(a, b);
        assert_eq!(n.name_of(a, now).as_deref(), Some("up.test"));
        assert_eq!(n.name_of(b, now).as_deref(), Some("other.test"));
        assert_eq!(n.name_of(Ipv4Addr::new(198, 19, 200, 1), now), None, "never given out");
        assert_eq!(n.name_of(Ipv4Addr::new(10, 0, 0, 1), now), None);
        assert!(!in_range(Ipv4Addr::new(198, 20, 0, 1)) && in_range(Ipv4Addr::new(198, 19, 255, 255)));
    }

    #[test]
    fn full_table_reuses_only_long_unused_addresses() {
        let n = Names::with_capacity(2, Duration::from_secs(600));
        let t0 = Instant::now();
        let a = n.address_for("a.test", t0).unwrap();
        n.address_for("b.test", t0).unwrap();
        // Both young: nothing new is answered.
        assert_eq!(n.address_for("c.test", t0 + Duration::from_secs(60)), None);
        // b is used (a connection) later than a; once a is old, c takes a's address.
        n.name_of(Ipv4Addr::from(u32::from(a) + 1), t0 + Duration::from_secs(300));
        let c = n.address_for("c.test", t0 + Duration::from_secs(700)).unwrap();
        assert_eq!(c, a);
        assert_eq!(n.name_of(a, t0 + Duration::from_secs(700)).as_deref(), Some("c.test"));
        assert_eq!(n.address_for("b.test", t0 + Duration::from_secs(700)), Some(Ipv4Addr::from(u32::from(a) + 1)));
    }
}
