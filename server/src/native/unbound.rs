//! Connections without a session, counted by the address they come from.
//!
//! A connection takes one of the node's [`super::CONNECTIONS_MAX`] slots
//! before it shows a token, for up to [`super::SETUP_WITHIN`]. Without a
//! limit per address, one host holding no token could keep every slot
//! taken and lock every client out; with it, that host keeps at most
//! [`UNBOUND_PER_ADDRESS_MAX`] of them, and clients elsewhere still get
//! in. A connection leaves the count once it sets up a session. An IPv6
//! client counts by its /64: one host is usually given a whole /64.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Connections from one address a node holds before they set up a
/// session. A client opens one connection per node it uses; a host with
/// many client processes starting at once stays well inside this.
pub const UNBOUND_PER_ADDRESS_MAX: usize = 64;

/// The count of connections without a session, per address. It has an
/// entry only for addresses with such a connection open, so it holds at
/// most one per connection the node serves.
#[derive(Clone, Default)]
pub struct Unbound(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One connection counted until it sets up a session or ends.
pub struct UnboundSlot {
    counts: Unbound,
    ip: IpAddr,
}

impl Unbound {
    /// Counts a new connection from `ip`; `None` if that address already
    /// has its most connections without a session.
    pub fn admit(&self, ip: IpAddr) -> Option<UnboundSlot> {
        let ip = counted_as(ip);
        let mut counts = self.0.lock().ok()?;
        let n = counts.entry(ip).or_insert(0);
        if *n >= UNBOUND_PER_ADDRESS_MAX {
            return None;
        }
        *n += 1;
        Some(UnboundSlot {
            counts: self.clone(),
            ip,
        })
    }
}

/// The address a connection from `ip` counts under: IPv4 as it is (also
/// when a dual-stack socket shows it as ::ffff:a.b.c.d), IPv6 by its /64.
fn counted_as(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

impl Drop for UnboundSlot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.counts.0.lock()
            && let Some(n) = counts.get_mut(&self.ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_share_and_slots_come_back() {
        let u = Unbound::default();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let held: Vec<_> = (0..UNBOUND_PER_ADDRESS_MAX)
            .map(|_| u.admit(a).unwrap())
            .collect();
        assert!(u.admit(a).is_none(), "one over the limit");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert!(u.admit(mapped).is_none(), "the same address over IPv6");
        assert!(u.admit(b).is_some(), "another address");
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let one_host: Vec<_> = (0..UNBOUND_PER_ADDRESS_MAX)
            .map(|i| u.admit(v6(&format!("2001:db8:1:2::{:x}", i + 1))).unwrap())
            .collect();
        assert!(
            u.admit(v6("2001:db8:1:2:ffff::1")).is_none(),
            "another address of the same /64"
        );
        assert!(u.admit(v6("2001:db8:1:3::1")).is_some(), "another /64");
        drop(one_host);
        drop(held);
        assert!(u.admit(a).is_some());
        assert!(
            u.0.lock().unwrap().len() <= 1,
            "no entry for idle addresses"
        );
    }
}
