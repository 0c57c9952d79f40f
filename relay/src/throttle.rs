//! Throttling of token guessing: failed developer Hellos (unknown, malformed, revoked or missing
//! token) are counted per source address in a token bucket. An address whose bucket is empty
//! is refused at once, without its token being checked, until the bucket refills.
//!
//! Only failures take room: a developer whose token is good never enters the table. The table
//! holds at most `failed_hello_sources` addresses; when it is full, addresses whose bucket has
//! refilled (they are as good as forgotten) are dropped, else the one quiet for longest, so an
//! attacker with many addresses cannot grow the relay's memory. IPv6 addresses count per /64
//! (one customer's network): an attacker's host usually owns a whole /64.
//!
//! No I/O and no clock: callers pass `now`, so the arithmetic is unit-tested.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The limits, from the relay's configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ThrottleLimits {
    /// Failed Hellos an address may make in a row; 0 turns throttling off.
    pub burst: u32,
    /// Failed Hellos per second an address earns back; 0 turns throttling off.
    pub per_sec: u32,
    /// Addresses remembered at most.
    pub max_sources: usize,
}

/// What to do with a developer's Hello from an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Check its token.
    Check,
    /// Refuse without checking: too many failures; one more is allowed after `retry_after`.
    Throttled { retry_after: Duration },
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Failures still allowed; refills at `per_sec`, up to `burst`.
    tokens: f64,
    updated: Instant,
}

/// The per-address failure buckets. Cheap to share: one short lock per Hello.
#[derive(Debug)]
pub(crate) struct HelloThrottle {
    limits: ThrottleLimits,
    table: std::sync::Mutex<HashMap<IpAddr, Bucket>>,
}

impl HelloThrottle {
    pub(crate) fn new(limits: ThrottleLimits) -> Self {
        Self {
            limits,
            table: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn enabled(&self) -> bool {
        self.limits.burst > 0 && self.limits.per_sec > 0 && self.limits.max_sources > 0
    }

    /// Before a developer's token is checked: may this address have it checked?
    pub(crate) fn admit(&self, addr: IpAddr, now: Instant) -> Admission {
        if !self.enabled() {
            return Admission::Check;
        }
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        match table.get(&source(addr)) {
            Some(b) => {
                let tokens = self.refilled(b, now);
                if tokens >= 1.0 {
                    Admission::Check
                } else {
                    let wait = (1.0 - tokens) / f64::from(self.limits.per_sec);
                    Admission::Throttled {
                        retry_after: Duration::from_secs_f64(wait),
                    }
                }
            }
            None => Admission::Check,
        }
    }

    /// After a token check from `addr` failed. Returns true when this failure used the
    /// address's last allowance (worth one log line; the refusals that follow are not).
    pub(crate) fn failed(&self, addr: IpAddr, now: Instant) -> bool {
        if !self.enabled() {
            return false;
        }
        let key = source(addr);
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if !table.contains_key(&key) && table.len() >= self.limits.max_sources {
            self.make_room(&mut table, now);
        }
        let full = Bucket {
            tokens: f64::from(self.limits.burst),
            updated: now,
        };
        let bucket = table.entry(key).or_insert(full);
        let tokens = (self.refilled(bucket, now) - 1.0).max(0.0);
        *bucket = Bucket {
            tokens,
            updated: now,
        };
        tokens < 1.0
    }

    fn refilled(&self, b: &Bucket, now: Instant) -> f64 {
        let earned =
            now.saturating_duration_since(b.updated).as_secs_f64() * f64::from(self.limits.per_sec);
        (b.tokens + earned).min(f64::from(self.limits.burst))
    }

    /// Frees at least one place: every refilled bucket, or else the one quiet for longest.
    /// Runs only when the table is full.
    fn make_room(&self, table: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        let burst = f64::from(self.limits.burst);
        table.retain(|_, b| self.refilled(b, now) < burst);
        if table.len() >= self.limits.max_sources {
            if let Some(oldest) = table.iter().min_by_key(|(_, b)| b.updated).map(|(k, _)| *k) {
                table.remove(&oldest);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The unit a bucket counts: an IPv4 address, or an IPv6 /64 (an IPv4-mapped IPv6 address is
/// its IPv4 address).
fn source(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(burst: u32, per_sec: u32, max_sources: usize) -> HelloThrottle {
        HelloThrottle::new(ThrottleLimits {
            burst,
            per_sec,
            max_sources,
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_may_fail_a_burst_then_is_refused_until_it_earns_one_back() {
        let t = throttle(3, 2, 100);
        let a = ip("203.0.113.7");
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(t.admit(a, t0), Admission::Check, "failure {i}");
            assert_eq!(t.failed(a, t0), i == 2, "the third empties the bucket");
        }
        match t.admit(a, t0) {
            Admission::Throttled { retry_after } => {
                assert_eq!(retry_after, Duration::from_millis(500))
            }
            other => panic!("{other:?}"),
        }
        // Half a second earns one failure back at 2 per second; not a second one.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(t.admit(a, t1), Admission::Check);
        assert!(t.failed(a, t1));
        assert!(matches!(t.admit(a, t1), Admission::Throttled { .. }));
        // Others are not affected.
        assert_eq!(t.admit(ip("203.0.113.8"), t1), Admission::Check);
    }

    #[test]
    fn successes_take_no_room_and_a_quiet_address_is_forgiven() {
        let t = throttle(2, 1, 100);
        let a = ip("198.51.100.1");
        let t0 = Instant::now();
        assert_eq!(t.admit(a, t0), Admission::Check);
        assert_eq!(t.len(), 0, "checking alone records nothing");
        t.failed(a, t0);
        t.failed(a, t0);
        assert!(matches!(t.admit(a, t0), Admission::Throttled { .. }));
        let later = t0 + Duration::from_secs(2);
        assert_eq!(t.admit(a, later), Admission::Check);
        assert!(
            !t.failed(a, later),
            "a full burst again after two quiet seconds"
        );
    }

    #[test]
    fn ipv6_addresses_count_per_64_and_mapped_ipv4_as_ipv4() {
        let t = throttle(1, 1, 100);
        let t0 = Instant::now();
        t.failed(ip("2001:db8:1:2::1"), t0);
        assert!(matches!(
            t.admit(ip("2001:db8:1:2:ffff::9"), t0),
            Admission::Throttled { .. }
        ));
        assert_eq!(t.admit(ip("2001:db8:1:3::1"), t0), Admission::Check);
        t.failed(ip("::ffff:192.0.2.1"), t0);
        assert!(matches!(
            t.admit(ip("192.0.2.1"), t0),
            Admission::Throttled { .. }
        ));
    }

    #[test]
    fn the_table_never_grows_past_its_size_and_forgets_the_quietest_first() {
        let t = throttle(1, 1, 64);
        let t0 = Instant::now();
        let first = ip("10.0.0.0");
        t.failed(first, t0);
        for i in 1..10_000u32 {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let now = t0 + Duration::from_micros(u64::from(i));
            t.failed(addr, now);
            assert!(t.len() <= 64);
        }
        assert_eq!(t.len(), 64);
        // The first address was quiet longest: forgotten, so checked again.
        assert_eq!(
            t.admit(first, t0 + Duration::from_millis(10)),
            Admission::Check
        );
        // The latest is still remembered.
        assert!(matches!(
            t.admit(ip("10.0.39.15"), t0 + Duration::from_millis(10)),
            Admission::Throttled { .. }
        ));
    }

    #[test]
    fn zero_turns_throttling_off() {
        for t in [throttle(0, 1, 10), throttle(5, 0, 10), throttle(5, 1, 0)] {
            let a = ip("192.0.2.9");
            let t0 = Instant::now();
            for _ in 0..100 {
                assert!(!t.failed(a, t0));
            }
            assert_eq!(t.admit(a, t0), Admission::Check);
        }
    }
}
