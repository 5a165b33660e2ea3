//! Connections without a session, counted by the address they come from.
//!
//! A connection takes one of the node's [`super::CONNECTIONS_MAX`] slots
//! before it shows a token, for up to [`super::SETUP_WITHIN`]. Without a
//! limit per address, one host holding no token could keep every slot
//! taken and lock every client out; with it, that host keeps at most
//! [`UNBOUND_PER_ADDRESS_MAX`] of them, and clients elsewhere still get
//! in. A connection leaves the count once it sets up a session.

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
        // An IPv4 client of a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
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
        drop(held);
        assert!(u.admit(a).is_some());
        assert!(
            u.0.lock().unwrap().len() <= 1,
            "no entry for idle addresses"
        );
    }
}
