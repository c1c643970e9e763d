//! `msrp.max_connections_per_address`: how many accepted MSRP connections one source IP
//! address may hold at once (issue 11), so one host cannot take every slot of
//! `msrp.max_connections` from the peers that carry real sessions.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Accepted connections per source IP address, shared by one listener's tasks.
pub(super) struct PerAddress {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    pub(super) fn new(max: usize) -> Arc<PerAddress> {
        Arc::new(PerAddress {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more connection from `ip`, or `None` when it holds `max` already.
    pub(super) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        // The counts hold no invariant a panic elsewhere could break half-way.
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            counts: self.clone(),
            ip,
        })
    }

    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// One connection's place in [`PerAddress`]; given back when dropped. An address with no
/// connection left is forgotten, so the map is as large as the open connections at most.
pub(super) struct AddressSlot {
    counts: Arc<PerAddress>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_max_places_and_a_freed_one_comes_back() {
        let p = PerAddress::new(2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "::1".parse().unwrap();
        let first = p.acquire(a).unwrap();
        let _second = p.acquire(a).unwrap();
        assert!(p.acquire(a).is_none());
        // Another address is counted apart.
        let _other = p.acquire(b).unwrap();
        drop(first);
        assert!(p.acquire(a).is_some());
    }

    #[test]
    fn an_address_without_connections_is_forgotten() {
        let p = PerAddress::new(4);
        let slots: Vec<_> = (1..=50u8)
            .map(|i| p.acquire(IpAddr::from([127, 0, 0, i])).unwrap())
            .collect();
        assert_eq!(p.addresses(), 50);
        drop(slots);
        assert_eq!(p.addresses(), 0);
    }
}
