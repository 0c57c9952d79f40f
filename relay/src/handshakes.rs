//! What a connection attempt costs the relay before it is anyone: bounded.
//!
//! Every QUIC Initial a relay answers makes it keep TLS and connection state (~54 KB) until
//! the handshake completes or times out, and the source address of an Initial is not proven:
//! 10,000 Initials from one host took a relay from 26 to 567 MB (issue 15). So, for each
//! [`quinn::Incoming`]:
//!
//! * beyond `max_pending_handshakes` handshakes in progress, or `max_handshakes_per_ip` from
//!   one address, it is refused at once (a CONNECTION_REFUSED, no state kept);
//! * once more than `retry_above_handshakes` are in progress, an address that has not proven it
//!   receives what the relay sends is asked to (a stateless QUIC Retry: a spoofed source never
//!   comes back, a real client does at the cost of one round trip);
//! * a handshake that has not completed within the handshake timeout is dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The limits, from the relay's configuration.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeLimits {
    pub max_pending: usize,
    pub max_per_ip: usize,
    pub retry_above: usize,
}

/// What to do with one connection attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Accept,
    Retry,
    Refuse,
}

/// Handshakes in progress, in total and per source address.
#[derive(Default)]
pub struct HandshakeGate {
    pending: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Counts one handshake in progress until dropped.
pub struct HandshakeSlot {
    gate: Arc<HandshakeGate>,
    ip: IpAddr,
}

impl HandshakeGate {
    /// Decides about an attempt from `ip` (`validated`: it answered a Retry already). On
    /// `Accept`, the slot counts the handshake until it is dropped.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        validated: bool,
        limits: HandshakeLimits,
    ) -> (Admission, Option<HandshakeSlot>) {
        let mut guard = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_ip) = &mut *guard;
        let from_ip = per_ip.get(&ip).copied().unwrap_or(0);
        if *total >= limits.max_pending || from_ip >= limits.max_per_ip {
            return (Admission::Refuse, None);
        }
        if *total >= limits.retry_above && !validated {
            return (Admission::Retry, None);
        }
        *total += 1;
        *per_ip.entry(ip).or_insert(0) += 1;
        let slot = HandshakeSlot {
            gate: self.clone(),
            ip,
        };
        (Admission::Accept, Some(slot))
    }

    /// Handshakes in progress now.
    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut guard = self.gate.pending.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_ip) = &mut *guard;
        *total = total.saturating_sub(1);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HandshakeLimits = HandshakeLimits {
        max_pending: 4,
        max_per_ip: 3,
        retry_above: 2,
    };

    #[test]
    fn unproven_addresses_are_retried_under_load_and_everything_is_bounded() {
        let gate = Arc::new(HandshakeGate::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let (first, s1) = gate.admit(a, false, LIMITS);
        let (second, s2) = gate.admit(b, false, LIMITS);
        assert_eq!((first, second), (Admission::Accept, Admission::Accept));
        // Under load: unproven sources must prove their address first.
        assert_eq!(gate.admit(a, false, LIMITS).0, Admission::Retry);
        let (proven, s3) = gate.admit(a, true, LIMITS);
        assert_eq!(proven, Admission::Accept);
        // One source may not hold more than its share, nor everyone more than the total.
        let (fourth, s4) = gate.admit(b, true, LIMITS);
        assert_eq!(fourth, Admission::Accept);
        assert_eq!(gate.admit(b, true, LIMITS).0, Admission::Refuse);
        assert_eq!(gate.pending(), 4);
        drop((s1, s2, s3, s4));
        assert_eq!(gate.pending(), 0);
        assert_eq!(gate.admit(a, false, LIMITS).0, Admission::Accept);
    }

    #[test]
    fn one_source_cannot_take_every_slot() {
        let gate = Arc::new(HandshakeGate::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let slots: Vec<_> = (0..10)
            .filter_map(|_| gate.admit(a, true, LIMITS).1)
            .collect();
        assert_eq!(slots.len(), LIMITS.max_per_ip);
        let b: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(gate.admit(b, true, LIMITS).0, Admission::Accept);
    }
}
