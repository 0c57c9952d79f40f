//! Per-session rate limits: token buckets, free of I/O and clocks.
//!
//! The caller passes the current [`Instant`] to every call, so the limits are deterministic
//! under test. Two independent buckets, each refilled continuously and capped at its
//! capacity:
//! - statements: capacity `statements_per_sec` (the burst), refilled at `statements_per_sec`
//!   per second; a statement takes one token ([`SessionLimits::admit_statement`]);
//! - rows: capacity `rows_per_min`, refilled at `rows_per_min` per 60 s. A statement that
//!   returns rows is admitted while the budget is above zero ([`SessionLimits::admit_rows`]);
//!   its result set is charged in full afterwards ([`SessionLimits::charge_rows`]), which may
//!   drive the budget below zero: the next statement that returns rows then waits for the
//!   refill. A result set is never cut in the middle (that would corrupt the app's protocol
//!   stream).
//!
//! `None` means unlimited; `Some(0)` admits nothing (the refusal says so).
//!
//! Arithmetic is exact and saturating: a bucket's balance is kept in i128 "units", one token
//! being `window_ns` units and the refill being `amount` units per nanosecond, so any `u32` /
//! `u64` amount and any elapsed time are handled without overflow, rounding drift or panic.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{Duration, Instant};

/// The config keys, as named in messages.
const STATEMENTS_KEY: &str = "statements_per_sec";
const ROWS_KEY: &str = "rows_per_min";

/// Rate limits of one developer session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Statements per second, with a burst of the same amount; `None`: unlimited.
    pub statements_per_sec: Option<u32>,
    /// Rows returned per minute (result sets count in full); `None`: unlimited.
    pub rows_per_min: Option<u64>,
}

/// A refusal: which limit, when to retry, and a message for the developer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitExceeded {
    /// The config key of the limit: `statements_per_sec` or `rows_per_min`.
    pub limit: &'static str,
    /// How long until the statement would be admitted (`Duration::MAX` for a limit of 0).
    pub retry_after: Duration,
    pub message: String,
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for LimitExceeded {}

/// A token bucket in exact units (see the module doc).
#[derive(Debug, Clone)]
struct Bucket {
    /// Tokens added per window (also the capacity).
    amount: u64,
    /// The window in nanoseconds: units per token.
    window_ns: u128,
    /// The balance in units; may be negative (rows).
    balance: i128,
    /// The instant the balance was last brought up to date.
    updated: Instant,
}

impl Bucket {
    fn new(amount: u64, window: Duration, now: Instant) -> Self {
        let window_ns = window.as_nanos().max(1);
        let mut bucket = Bucket {
            amount,
            window_ns,
            balance: 0,
            updated: now,
        };
        bucket.balance = bucket.capacity();
        bucket
    }

    fn capacity(&self) -> i128 {
        to_i128(u128::from(self.amount).saturating_mul(self.window_ns))
    }

    fn token(&self) -> i128 {
        to_i128(self.window_ns)
    }

    /// Adds the refill since the last update (an instant earlier than that adds nothing).
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_nanos();
        if elapsed == 0 {
            return;
        }
        self.updated = now;
        let added = to_i128(elapsed.saturating_mul(u128::from(self.amount)));
        self.balance = self.balance.saturating_add(added).min(self.capacity());
    }

    /// Time until the balance reaches `target` units (zero if it has).
    fn time_until(&self, target: i128) -> Duration {
        if self.balance >= target {
            return Duration::ZERO;
        }
        if self.amount == 0 {
            return Duration::MAX;
        }
        // Both positive: target > balance, amount > 0.
        let deficit = target.abs_diff(self.balance);
        let ns = deficit.div_ceil(u128::from(self.amount));
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Whole tokens in the bucket (floored; negative when owed).
    fn whole_tokens(&self) -> i128 {
        self.balance.div_euclid(self.token())
    }
}

fn to_i128(v: u128) -> i128 {
    i128::try_from(v).unwrap_or(i128::MAX)
}

/// Milliseconds, rounded up, for messages.
fn millis_ceil(d: Duration) -> u128 {
    d.as_nanos().div_ceil(1_000_000)
}

/// The rate limits of one session (see the module doc).
#[derive(Debug, Clone)]
pub struct SessionLimits {
    statements: Option<Bucket>,
    rows: Option<Bucket>,
}

impl SessionLimits {
    /// Full buckets at `now`.
    pub fn new(config: &RateLimitConfig, now: Instant) -> Self {
        SessionLimits {
            statements: config
                .statements_per_sec
                .map(|n| Bucket::new(u64::from(n), Duration::from_secs(1), now)),
            rows: config
                .rows_per_min
                .map(|n| Bucket::new(n, Duration::from_secs(60), now)),
        }
    }

    /// Before a statement: takes one statement token, or refuses (taking nothing) saying
    /// which limit, its value and when to retry.
    pub fn admit_statement(&mut self, now: Instant) -> Result<(), LimitExceeded> {
        self.check_statement(now)?;
        if let Some(b) = self.statements.as_mut() {
            b.balance = b.balance.saturating_sub(b.token());
        }
        Ok(())
    }

    /// Before a statement that returns rows: refuses while the row budget is exhausted
    /// (zero or below). Takes nothing: the rows are charged by [`SessionLimits::charge_rows`].
    pub fn admit_rows(&mut self, now: Instant) -> Result<(), LimitExceeded> {
        let Some(b) = self.rows.as_mut() else {
            return Ok(());
        };
        b.refill(now);
        if b.balance > 0 {
            return Ok(());
        }
        let limit = b.amount;
        let owed = b.balance.unsigned_abs().div_ceil(b.window_ns);
        if limit == 0 {
            return Err(LimitExceeded {
                limit: ROWS_KEY,
                retry_after: Duration::MAX,
                message: format!(
                    "devinprod: {ROWS_KEY} = 0 for this session: no statement that returns \
                     rows is allowed"
                ),
            });
        }
        let retry_after = b.time_until(1);
        let over = if owed > 0 {
            format!(" (the last result sets went {owed} rows over; result sets are never cut)")
        } else {
            String::new()
        };
        Err(LimitExceeded {
            limit: ROWS_KEY,
            retry_after,
            message: format!(
                "devinprod: row budget exhausted: {ROWS_KEY} = {limit}{over}; retry in {} ms",
                millis_ceil(retry_after)
            ),
        })
    }

    /// Both checks for a statement, taking a statement token only when both pass:
    /// [`SessionLimits::admit_rows`] when it `returns_rows`, then
    /// [`SessionLimits::admit_statement`].
    pub fn admit(&mut self, returns_rows: bool, now: Instant) -> Result<(), LimitExceeded> {
        if returns_rows {
            self.admit_rows(now)?;
        }
        self.admit_statement(now)
    }

    /// After a result set: charges the rows it returned (the budget may go below zero).
    pub fn charge_rows(&mut self, rows: u64, now: Instant) {
        if let Some(b) = self.rows.as_mut() {
            b.refill(now);
            let cost = to_i128(u128::from(rows).saturating_mul(b.window_ns));
            b.balance = b.balance.saturating_sub(cost);
        }
    }

    /// Whole statement tokens available at `now`; `None` when unlimited.
    pub fn statements_available(&mut self, now: Instant) -> Option<u64> {
        let b = self.statements.as_mut()?;
        b.refill(now);
        Some(u64::try_from(b.whole_tokens().max(0)).unwrap_or(u64::MAX))
    }

    /// Whole rows left in the budget at `now` (negative when overdrawn); `None` when
    /// unlimited.
    pub fn row_budget(&mut self, now: Instant) -> Option<i64> {
        let b = self.rows.as_mut()?;
        b.refill(now);
        let rows = b.whole_tokens();
        Some(i64::try_from(rows).unwrap_or(if rows < 0 { i64::MIN } else { i64::MAX }))
    }

    fn check_statement(&mut self, now: Instant) -> Result<(), LimitExceeded> {
        let Some(b) = self.statements.as_mut() else {
            return Ok(());
        };
        b.refill(now);
        let token = b.token();
        if b.balance >= token {
            return Ok(());
        }
        let limit = b.amount;
        if limit == 0 {
            return Err(LimitExceeded {
                limit: STATEMENTS_KEY,
                retry_after: Duration::MAX,
                message: format!(
                    "devinprod: {STATEMENTS_KEY} = 0 for this session: no statement is allowed"
                ),
            });
        }
        let retry_after = b.time_until(token);
        Err(LimitExceeded {
            limit: STATEMENTS_KEY,
            retry_after,
            message: format!(
                "devinprod: statement rate limit exceeded: {STATEMENTS_KEY} = {limit} \
                 (bursts of up to {limit}); retry in {} ms",
                millis_ceil(retry_after)
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(statements: Option<u32>, rows: Option<u64>) -> RateLimitConfig {
        RateLimitConfig {
            statements_per_sec: statements,
            rows_per_min: rows,
        }
    }

    #[test]
    fn burst_up_to_capacity_then_refused_with_retry_after() {
        let t0 = Instant::now();
        let mut l = SessionLimits::new(&cfg(Some(10), None), t0);
        for i in 0..10 {
            assert!(l.admit_statement(t0).is_ok(), "statement {i}");
        }
        let e = l.admit_statement(t0).unwrap_err();
        assert_eq!(e.limit, "statements_per_sec");
        assert_eq!(e.retry_after, Duration::from_millis(100));
        assert!(
            e.message.contains("statements_per_sec = 10"),
            "{}",
            e.message
        );
        assert!(e.message.contains("retry in 100 ms"), "{}", e.message);
        assert_eq!(e.to_string(), e.message);
        // A refused statement takes no token: the wait does not grow.
        let e2 = l.admit_statement(t0).unwrap_err();
        assert_eq!(e2.retry_after, e.retry_after);
        // Half-way, the wait is half as long.
        let e3 = l
            .admit_statement(t0 + Duration::from_millis(40))
            .unwrap_err();
        assert_eq!(e3.retry_after, Duration::from_millis(60));
    }

    #[test]
    fn recovers_after_retry_after() {
        let t0 = Instant::now();
        let mut l = SessionLimits::new(&cfg(Some(3), None), t0);
        for _ in 0..3 {
            l.admit_statement(t0).unwrap();
        }
        let e = l.admit_statement(t0).unwrap_err();
        let t1 = t0 + e.retry_after;
        assert!(l.admit_statement(t1).is_ok());
        assert!(l.admit_statement(t1).is_err());
        // Just short of retry_after is still refused.
        let e = l.admit_statement(t1).unwrap_err();
        assert!(l
            .admit_statement(t1 + e.retry_after - Duration::from_nanos(1))
            .is_err());
        assert!(l.admit_statement(t1 + e.retry_after).is_ok());
    }

    #[test]
    fn continuous_refill_at_the_configured_rate() {
        let t0 = Instant::now();
        let mut l = SessionLimits::new(&cfg(Some(50), None), t0);
        // Drain the burst, then hammer every millisecond for 10 simulated seconds.
        let mut admitted = 0u32;
        for ms in 0..10_000u64 {
            let now = t0 + Duration::from_millis(ms);
            while l.admit_statement(now).is_ok() {
                admitted += 1;
            }
        }
        // 50 burst + 50/s over 9.999 s (the last token arrives at 10 s).
        assert_eq!(admitted, 50 + 499);
        // Capacity caps the refill: after a long idle, only a burst of 50.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(l.statements_available(later), Some(50));
        let mut burst = 0;
        while l.admit_statement(later).is_ok() {
            burst += 1;
        }
        assert_eq!(burst, 50);
    }

    #[test]
    fn fractional_rates_accumulate_exactly() {
        // 3 per second: a token every 333.33.. ms; no drift over many refills.
        let t0 = Instant::now();
        let mut l = SessionLimits::new(&cfg(Some(3), None), t0);
        for _ in 0..3 {
            l.admit_statement(t0).unwrap();
        }
        let mut admitted = 0;
        for ms in 1..=60_000u64 {
            if l.admit_statement(t0 + Duration::from_millis(ms)).is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 180);
    }

    #[test]
    fn rows_budget_going_negative_refuses_until_refilled() {
        let t0 = Instant::now();
        let mut l = SessionLimits::new(&cfg(None, Some(600)), t0); // 10 rows/s
        assert_eq!(l.row_budget(t0), Some(600));
        l.admit_rows(t0).unwrap();
        l.charge_rows(500, t0);
        l.admit_rows(t0).unwrap(); // 100 left
        l.charge_rows(400, t0); // a result set is charged in full: -300
        assert_eq!(l.row_budget(t0), Some(-300));
        let e = l.admit_rows(t0).unwrap_err();
        assert_eq!(e.limit, "rows_per_min");
        // Back above zero after 300 rows at 10 rows/s = 30 s (plus the first fraction).
        assert!(e.retry_after > Duration::from_secs(30));
        assert!(e.retry_after <= Duration::from_millis(30_001));
        assert!(e.message.contains("rows_per_min = 600"), "{}", e.message);
        assert!(e.message.contains("300 rows over"), "{}", e.message);
        assert!(l.admit_rows(t0 + Duration::from_secs(20)).is_err());
        assert_eq!(l.row_budget(t0 + Duration::from_secs(20)), Some(-100));
        assert!(l.admit_rows(t0 + Duration::from_secs(30)).is_err()); // exactly 0: exhausted
        assert!(l.admit_rows(t0 + e.retry_after).is_ok());
        // Refill is capped at rows_per_min.
        assert_eq!(l.row_budget(t0 + Duration::from_secs(3600)), Some(600));
        // Statements that return no rows are not held back by the row budget.
        l.charge_rows(10_000, t0 + Duration::from_secs(3600));
        assert!(l.admit_statement(t0 + Duration::from_secs(3600)).is_ok());
        assert!(l.admit(true, t0 + Duration::from_secs(3600)).is_err());
        assert!(l.admit(false, t0 + Duration::from_secs(3600)).is_ok());
    }

    #[test]
    fn admit_takes_no_statement_token_when_rows_refuse() {
        let t0 = Instant::now();
        let mut l = SessionLimits::new(&cfg(Some(2), Some(10)), t0);
        l.charge_rows(10, t0);
        assert_eq!(l.admit(true, t0).unwrap_err().limit, "rows_per_min");
        assert_eq!(l.statements_available(t0), Some(2));
        l.admit(false, t0).unwrap();
        l.admit(false, t0).unwrap();
        assert_eq!(l.admit(false, t0).unwrap_err().limit, "statements_per_sec");
    }

    #[test]
    fn none_is_unlimited() {
        let t0 = Instant::now();
        let mut l = SessionLimits::new(&RateLimitConfig::default(), t0);
        for _ in 0..100_000 {
            l.admit_statement(t0).unwrap();
            l.admit_rows(t0).unwrap();
            l.charge_rows(u64::MAX, t0);
        }
        assert_eq!(l.statements_available(t0), None);
        assert_eq!(l.row_budget(t0), None);
    }

    #[test]
    fn zero_admits_nothing() {
        let t0 = Instant::now();
        let mut l = SessionLimits::new(&cfg(Some(0), Some(0)), t0);
        let e = l
            .admit_statement(t0 + Duration::from_secs(100))
            .unwrap_err();
        assert_eq!(e.retry_after, Duration::MAX);
        assert!(
            e.message.contains("statements_per_sec = 0"),
            "{}",
            e.message
        );
        let e = l.admit_rows(t0 + Duration::from_secs(100)).unwrap_err();
        assert_eq!(e.retry_after, Duration::MAX);
        assert!(e.message.contains("rows_per_min = 0"), "{}", e.message);
    }

    #[test]
    fn huge_numbers_do_not_panic() {
        let t0 = Instant::now();
        let mut l = SessionLimits::new(&cfg(Some(u32::MAX), Some(u64::MAX)), t0);
        for _ in 0..1000 {
            l.admit_statement(t0).unwrap();
        }
        l.admit_rows(t0).unwrap();
        for _ in 0..100 {
            l.charge_rows(u64::MAX, t0);
        }
        let e = l.admit_rows(t0).unwrap_err();
        assert!(e.retry_after > Duration::ZERO);
        assert!(e.message.contains("rows_per_min"));
        let far = t0 + Duration::from_secs(1_000_000_000);
        l.admit_rows(far).unwrap();
        assert_eq!(l.statements_available(far), Some(u64::from(u32::MAX)));
        assert_eq!(l.row_budget(far), Some(i64::MAX));

        // Tiny rate, deep debt: retry_after saturates instead of overflowing.
        let mut l = SessionLimits::new(&cfg(Some(1), Some(1)), t0);
        for _ in 0..10 {
            l.charge_rows(u64::MAX, t0);
        }
        let e = l.admit_rows(t0).unwrap_err();
        assert_eq!(e.retry_after, Duration::from_nanos(u64::MAX));
        assert_eq!(l.row_budget(t0), Some(i64::MIN));
        // One statement per second: the second one at the same instant waits.
        l.admit_statement(t0).unwrap();
        assert!(l.admit_statement(t0).is_err());
    }

    #[test]
    fn earlier_instants_are_ignored() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(5);
        let mut l = SessionLimits::new(&cfg(Some(1), None), t0);
        l.admit_statement(t1).unwrap();
        // t0 is before the last update: no refill, no panic.
        assert!(l.admit_statement(t0).is_err());
        assert!(l.admit_statement(t1 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn config_deserializes_with_defaults() {
        let c: RateLimitConfig = serde_json::from_str(r#"{"rows_per_min": 5000}"#).unwrap();
        assert_eq!(c, cfg(None, Some(5000)));
        assert!(serde_json::from_str::<RateLimitConfig>(r#"{"rows": 1}"#).is_err());
    }
}
