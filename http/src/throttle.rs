//! A backoff for client addresses that keep failing to log in, shared by
//! a node's HTTP endpoint and its Postgres port.
//!
//! An address may fail [`FREE_FAILURES`] times; after that each failure
//! shuts it out for a time that doubles from one second up to a minute,
//! during which its logins are refused without being checked (HTTP 429
//! with `Retry-After`, SQLSTATE 28000 on the Postgres port). A success
//! forgets the address, and so does a quarter hour without failures.
//! At most [`MAX_ADDRESSES`] addresses are remembered (the oldest are
//! forgotten first), so a crowd of addresses cannot grow the table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Failures an address may make before it is shut out.
pub const FREE_FAILURES: u32 = 5;
/// The longest an address is shut out after one failure.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long an address's failures are remembered without a new one.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Addresses remembered at once.
pub const MAX_ADDRESSES: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    until: Option<Instant>,
}

/// What a client shut out for `wait` is told, on every port.
pub fn refusal(wait: Duration) -> String {
    format!("too many failed logins from this address; retry in {} s", wait.as_secs().max(1))
}

/// Failed logins per client address. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct LoginThrottle {
    addresses: Arc<Mutex<HashMap<IpAddr, Failures>>>,
}

impl LoginThrottle {
    pub fn new() -> Self {
        Self::default()
    }

    /// How long `address` must still wait before a login is checked, if
    /// it is shut out.
    pub fn blocked(&self, address: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        let until = addresses.get(&address)?.until?;
        until.checked_duration_since(now).filter(|d| !d.is_zero())
    }

    /// Records a failed login from `address`.
    pub fn failed(&self, address: IpAddr) {
        metrics::counter!("sluice_login_failures_total").increment(1);
        let now = Instant::now();
        let mut addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        if addresses.len() >= MAX_ADDRESSES && !addresses.contains_key(&address) {
            addresses.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
            if addresses.len() >= MAX_ADDRESSES
                && let Some(oldest) = addresses.iter().min_by_key(|(_, f)| f.last).map(|(a, _)| *a)
            {
                addresses.remove(&oldest);
            }
        }
        let entry = addresses.entry(address).or_insert(Failures { count: 0, last: now, until: None });
        if now.duration_since(entry.last) >= FORGET_AFTER {
            *entry = Failures { count: 0, last: now, until: None };
        }
        entry.count += 1;
        entry.last = now;
        if entry.count > FREE_FAILURES {
            let doublings = (entry.count - FREE_FAILURES - 1).min(6);
            let backoff = (Duration::from_secs(1) * (1 << doublings)).min(MAX_BACKOFF);
            entry.until = Some(now + backoff);
            metrics::counter!("sluice_login_backoffs_total").increment(1);
            tracing::warn!(%address, failures = entry.count, backoff = ?backoff, "repeated failed logins; the address waits");
        }
    }

    /// Forgets the failures of `address` after a successful login.
    pub fn succeeded(&self, address: IpAddr) {
        let mut addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        addresses.remove(&address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_that_keeps_failing_waits_longer_each_time() {
        let throttle = LoginThrottle::new();
        let (bad, good): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..FREE_FAILURES {
            throttle.failed(bad);
            assert_eq!(throttle.blocked(bad), None);
        }
        throttle.failed(bad);
        let first = throttle.blocked(bad).expect("shut out");
        assert!(first <= Duration::from_secs(1) && first > Duration::from_millis(500), "{first:?}");
        throttle.failed(bad);
        assert!(throttle.blocked(bad).unwrap() > Duration::from_millis(1500));
        for _ in 0..20 {
            throttle.failed(bad);
        }
        assert!(throttle.blocked(bad).unwrap() <= MAX_BACKOFF);
        // Others are not affected, and a success forgets.
        assert_eq!(throttle.blocked(good), None);
        throttle.succeeded(bad);
        assert_eq!(throttle.blocked(bad), None);
    }

    #[test]
    fn the_table_stays_bounded() {
        let throttle = LoginThrottle::new();
        for i in 0..(MAX_ADDRESSES as u32 + 100) {
            throttle.failed(IpAddr::from(i.to_be_bytes()));
        }
        assert!(throttle.addresses.lock().unwrap().len() <= MAX_ADDRESSES);
    }
}
