//! Rounds of one measurement on one path, medians, ratios, and how numbers are written.

use super::topo::Kind;

/// One path's measurements over the rounds, or why there are none.
#[derive(Debug, Clone)]
pub struct Series<T> {
    pub kind: Kind,
    pub samples: Vec<T>,
    /// A failure: the row is not a result and the benchmark exits non-zero.
    pub error: Option<String>,
    /// Not measured on purpose (e.g. rathole unavailable in smoke mode): not a failure.
    pub skipped: Option<String>,
}

impl<T> Series<T> {
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            samples: Vec::new(),
            error: None,
            skipped: None,
        }
    }

    /// Whether more rounds should run (a failed or skipped row is not measured further).
    pub fn live(&self) -> bool {
        self.error.is_none() && self.skipped.is_none()
    }

    pub fn push(&mut self, r: Result<T, String>) {
        match r {
            Ok(v) => self.samples.push(v),
            Err(e) => {
                if self.error.is_none() {
                    self.error = Some(e);
                }
            }
        }
    }

    /// The median of `f` over the rounds; `None` unless every round succeeded.
    pub fn median(&self, f: impl Fn(&T) -> f64) -> Option<f64> {
        if !self.live() || self.samples.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = self.samples.iter().map(f).collect();
        Some(median(&mut v))
    }

    /// (min, max) of `f` over the rounds.
    pub fn range(&self, f: impl Fn(&T) -> f64) -> Option<(f64, f64)> {
        if !self.live() || self.samples.is_empty() {
            return None;
        }
        let v: Vec<f64> = self.samples.iter().map(f).collect();
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some((min, max))
    }

    /// What the row shows instead of numbers, when it has none.
    /// `v`, then ` (min–max)` of `f` over the samples when there are several: a table cell.
    pub fn with_spread(&self, v: f64, f: impl Fn(&T) -> f64) -> String {
        let spread = self
            .range(f)
            .filter(|_| self.samples.len() > 1)
            .map(|(lo, hi)| format!(" ({}–{})", int(lo), int(hi)))
            .unwrap_or_default();
        format!("{}{spread}", int(v))
    }

    pub fn blank(&self) -> Option<String> {
        if let Some(e) = &self.error {
            return Some(format!("**FAILED**: {}", one_line(e)));
        }
        if let Some(s) = &self.skipped {
            return Some(format!("skipped: {}", one_line(s)));
        }
        if self.samples.is_empty() {
            return Some("no measurement".into());
        }
        None
    }
}

/// The series of `kind` in `all`.
pub fn of<T>(all: &[Series<T>], kind: Kind) -> Option<&Series<T>> {
    all.iter().find(|s| s.kind == kind)
}

/// The median (mean of the two middle values for an even count).
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The `p`-quantile (0..=1) of sorted samples, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A markdown-safe single line, cut to a readable length.
pub fn one_line(s: &str) -> String {
    let flat: String = s
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "/");
    if flat.chars().count() > 300 {
        let cut: String = flat.chars().take(300).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

/// 12345.6 → "12,346".
pub fn int(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A latency in microseconds: "87 µs", "1.23 ms".
pub fn latency(us: f64) -> String {
    if us.abs() < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

/// An added latency: "+45 µs", "−3 µs".
pub fn added(us: f64) -> String {
    let sign = if us < 0.0 { "−" } else { "+" };
    format!("{sign}{}", latency(us.abs()))
}

/// A ratio: "0.82×".
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}×", a / b)
    } else {
        "—".into()
    }
}

/// A throughput in MB/s (10^6 bytes).
pub fn mbps(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A markdown table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", headers.join(" | "));
    out.push_str(&format!(
        "|{}\n",
        headers
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { " --- |" } else { " ---: |" })
            .collect::<String>()
    ));
    for r in rows {
        out.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_percentiles_and_formats() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.5), 50.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert_eq!(int(1234567.4), "1,234,567");
        assert_eq!(int(999.0), "999");
        assert_eq!(latency(87.4), "87 µs");
        assert_eq!(latency(1234.0), "1.23 ms");
        assert_eq!(added(-3.0), "−3 µs");
        assert_eq!(ratio(1.0, 2.0), "0.50×");
    }

    #[test]
    fn a_failed_round_makes_the_row_a_failure_not_a_number() {
        let mut s: Series<f64> = Series::new(Kind::Direct);
        s.push(Ok(1.0));
        s.push(Err("wrk: 3 non-2xx/3xx responses".into()));
        s.push(Ok(2.0));
        assert_eq!(s.median(|v| *v), None);
        assert!(s.blank().unwrap().contains("FAILED"));
    }
}
