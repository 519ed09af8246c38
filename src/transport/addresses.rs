//! Client connections open per address (`[gateway] max_connections_per_address`), so that one address
//! cannot hold every slot of `max_connections`: counted once when a connection is accepted and once
//! when it closes (never per request). An IPv6 client is counted by its /64, the block one subscriber
//! or host gets (one address each would let a single host open 2^64 "addresses"); an IPv4-mapped IPv6
//! address counts as its IPv4 address. Addresses in `trusted_proxies` are not limited: a load balancer
//! in front carries many clients on its own address.
//!
//! The counts live in a few mutex-guarded maps, sharded by address: a lock is taken twice per
//! connection, for a few nanoseconds, never on the request path. An address leaves its map when its
//! last connection closes, so the maps hold only addresses with open connections.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;

const SHARDS: usize = 16;

/// Open connections per client address (IPv6: per /64), with their limit.
pub struct PerAddress {
    max: u32,
    shards: Box<[Mutex<HashMap<u128, u32>>]>,
    hasher: std::collections::hash_map::RandomState,
}

/// One connection counted against its address; the count goes down when this drops.
pub struct AddressSlot<'a> {
    owner: &'a PerAddress,
    key: u128,
}

impl PerAddress {
    /// At most `max` connections open at once from one address.
    pub fn new(max: usize) -> PerAddress {
        PerAddress {
            max: u32::try_from(max).unwrap_or(u32::MAX),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Counts a new connection from `ip`; `None` when the address already has `max` open.
    pub fn take(&self, ip: IpAddr) -> Option<AddressSlot<'_>> {
        let key = key(ip);
        let mut map = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        let open = map.entry(key).or_insert(0);
        if *open >= self.max {
            return None;
        }
        *open += 1;
        Some(AddressSlot { owner: self, key })
    }

    /// Connections open now from `ip`'s address (or /64).
    pub fn open(&self, ip: IpAddr) -> u32 {
        let key = key(ip);
        let map = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        map.get(&key).copied().unwrap_or(0)
    }

    /// Addresses with connections open now.
    pub fn addresses(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    fn shard(&self, key: u128) -> &Mutex<HashMap<u128, u32>> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }
}

impl Drop for AddressSlot<'_> {
    fn drop(&mut self) {
        let mut map = self
            .owner
            .shard(self.key)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(open) = map.get_mut(&self.key) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// The counting key: an IPv4 address (in the IPv4-mapped range), or an IPv6 /64.
fn key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6) & !((1u128 << 64) - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_gets_at_most_max_and_a_slot_comes_back_on_drop() {
        let p = PerAddress::new(2);
        let a = p.take(ip("192.0.2.1")).expect("first");
        let b = p.take(ip("192.0.2.1")).expect("second");
        assert!(p.take(ip("192.0.2.1")).is_none(), "third from one address");
        let other = p
            .take(ip("192.0.2.2"))
            .expect("another address has its own");
        assert_eq!(p.open(ip("192.0.2.1")), 2);
        drop(a);
        let c = p.take(ip("192.0.2.1")).expect("a slot came back");
        drop((b, c, other));
        assert_eq!(
            p.addresses(),
            0,
            "addresses without connections are forgotten"
        );
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let p = PerAddress::new(1);
        let _a = p.take(ip("2001:db8:1:2::1")).expect("first");
        assert!(
            p.take(ip("2001:db8:1:2:ffff::9")).is_none(),
            "another address of the same /64"
        );
        let _b = p.take(ip("2001:db8:1:3::1")).expect("the next /64");
        let _c = p.take(ip("198.51.100.7")).expect("v4");
        assert!(
            p.take(ip("::ffff:198.51.100.7")).is_none(),
            "the same v4 address"
        );
    }
}
