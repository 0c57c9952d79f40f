//! `wrk` runs and the parsing of their report. A run with a socket error, a non-2xx/3xx
//! answer, or no request at all is an error, never a number.

use super::proc::{self, command};
use super::topo::Target;
use std::path::Path;
use std::time::Duration;

/// What one wrk run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// `wrk -tT -cC -dSs --latency` against `target`'s `/` (with its Host header).
pub fn run(
    wrk: &Path,
    target: &Target,
    threads: u32,
    conns: u32,
    secs: u64,
) -> Result<WrkResult, String> {
    run_path(
        wrk,
        target.addr,
        target.host.as_deref(),
        "/",
        (threads, conns, secs),
    )
}

/// `wrk -tT -cC -dSs --latency` against `http://ADDR PATH`, with `host` as its Host header
/// when given; `load` is (threads, connections, seconds).
pub fn run_path(
    wrk: &Path,
    addr: std::net::SocketAddr,
    host: Option<&str>,
    path: &str,
    (threads, conns, secs): (u32, u32, u64),
) -> Result<WrkResult, String> {
    let mut cmd = command(wrk);
    cmd.args([
        format!("-t{threads}"),
        format!("-c{conns}"),
        format!("-d{secs}s"),
        "--latency".into(),
        "--timeout".into(),
        "5s".into(),
    ]);
    if let Some(host) = host {
        cmd.args(["-H".into(), format!("Host: {host}")]);
    }
    cmd.arg(format!("http://{addr}{path}"));
    let done = proc::run("wrk", cmd, Duration::from_secs(secs + 60), false)?;
    if !done.status.success() {
        return Err(format!("wrk failed: {}", done.describe()));
    }
    parse(&done.stdout)
}

/// A wrk duration such as `35.12us`, `1.20ms`, `2.00s` or `1.00m`, in microseconds.
fn duration_us(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    Some(n * scale)
}

/// Parses wrk's report (with `--latency`).
pub fn parse(out: &str) -> Result<WrkResult, String> {
    let mut requests = None;
    let mut rps = None;
    let (mut p50, mut p99) = (None, None);
    let mut in_distribution = false;
    for line in out.lines() {
        let t = line.trim();
        if t.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            if let Some((pct, value)) = t.split_once(char::is_whitespace) {
                match pct {
                    "50%" => p50 = duration_us(value),
                    "99%" => p99 = duration_us(value),
                    "75%" | "90%" => {}
                    _ => in_distribution = false,
                }
            } else {
                in_distribution = false;
            }
        }
        if let Some(rest) = t.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            let total: u64 = rest
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            if total > 0 {
                return Err(format!("wrk: socket errors ({})", rest.trim()));
            }
        }
        if let Some(rest) = t.strip_prefix("Non-2xx or 3xx responses:") {
            let n: u64 = rest.trim().parse().unwrap_or(u64::MAX);
            if n > 0 {
                return Err(format!("wrk: {} non-2xx/3xx responses", rest.trim()));
            }
        }
        if let Some(rest) = t.strip_prefix("Requests/sec:") {
            rps = rest.trim().parse::<f64>().ok();
        }
        if t.contains(" requests in ") {
            requests = t
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok());
        }
    }
    let what = |name: &str| format!("wrk: no {name} in its report:\n{}", proc::tail(out, 20));
    let requests = requests.ok_or_else(|| what("request count"))?;
    if requests == 0 {
        return Err("wrk: no request completed".into());
    }
    Ok(WrkResult {
        requests,
        rps: rps.ok_or_else(|| what("Requests/sec"))?,
        p50_us: p50.ok_or_else(|| what("50% latency"))?,
        p99_us: p99.ok_or_else(|| what("99% latency"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAN: &str = "Running 2s test @ http://127.0.0.1:3000/
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    34.12us   10.00us   1.00ms   90.00%
    Req/Sec    25.00k     1.00k   27.00k    70.00%
  Latency Distribution
     50%   32.00us
     75%   35.00us
     90%   40.00us
     99%    1.25ms
  50000 requests in 2.00s, 4.00MB read
Requests/sec:  25000.50
Transfer/sec:      2.00MB
";

    #[test]
    fn parses_a_clean_report() {
        let r = parse(CLEAN).unwrap();
        assert_eq!(r.requests, 50000);
        assert_eq!(r.rps, 25000.5);
        assert_eq!(r.p50_us, 32.0);
        assert_eq!(r.p99_us, 1250.0);
    }

    #[test]
    fn non_2xx_and_socket_errors_are_not_results() {
        let bad = CLEAN.replace(
            "Requests/sec:",
            "  Non-2xx or 3xx responses: 7\nRequests/sec:",
        );
        assert!(parse(&bad).unwrap_err().contains("non-2xx"));
        let bad = CLEAN.replace(
            "Requests/sec:",
            "  Socket errors: connect 0, read 2, write 0, timeout 0\nRequests/sec:",
        );
        assert!(parse(&bad).unwrap_err().contains("socket errors"));
        let ok = CLEAN.replace(
            "Requests/sec:",
            "  Socket errors: connect 0, read 0, write 0, timeout 0\nRequests/sec:",
        );
        assert!(parse(&ok).is_ok());
        assert!(parse("garbage").is_err());
        assert!(parse(&CLEAN.replace("50000 requests", "0 requests")).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration_us("2.00s"), Some(2e6));
        assert_eq!(duration_us("1.50m"), Some(90e6));
        assert_eq!(duration_us("12x"), None);
    }
}
