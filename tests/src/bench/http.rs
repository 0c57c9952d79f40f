//! HTTP, small responses: `wrk` with keep-alive connections, at 1 connection (`-t1 -c1`:
//! latency) and at 32 (`-t2 -c32`: throughput), requests/s and p50/p99 per path.

use super::stats::{self, of, Series};
use super::topo::Kind;
use super::wrk::{self, WrkResult};
use super::Slot;
use std::path::Path;

/// The two loads: (label, wrk threads, connections).
pub const LOADS: [(&str, u32, u32); 2] = [("1 connection", 1, 1), ("32 connections", 2, 32)];

pub struct HttpResults {
    pub secs: u64,
    /// One list of series per entry of [`LOADS`].
    pub by_load: Vec<Vec<Series<WrkResult>>>,
}

/// Rounds interleave the paths: round 1 runs every load on every path, then round 2…
pub fn run(wrk_bin: &Path, slots: &mut [Slot], secs: u64, rounds: usize) -> HttpResults {
    let mut by_load: Vec<Vec<Series<WrkResult>>> = LOADS
        .iter()
        .map(|_| slots.iter().map(Slot::series).collect())
        .collect();
    for round in 1..=rounds {
        for (li, (label, threads, conns)) in LOADS.iter().enumerate() {
            for (si, slot) in slots.iter_mut().enumerate() {
                let series = &mut by_load[li][si];
                let Some(running) = slot.running() else {
                    continue;
                };
                if !series.live() {
                    continue;
                }
                eprintln!(
                    "   http round {round}/{rounds}, {label}: {}",
                    running.target.kind.label()
                );
                let r = wrk::run(wrk_bin, &running.target, *threads, *conns, secs)
                    .and_then(|w| running.target.check().map(|()| w))
                    .map_err(|e| match running.check() {
                        Ok(()) => e,
                        Err(dead) => format!("{e}; {dead}"),
                    });
                if let Err(e) = &r {
                    eprintln!("     FAILED: {e}");
                }
                series.push(r);
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
        }
    }
    HttpResults { secs, by_load }
}

/// The markdown section.
pub fn section(r: &HttpResults) -> String {
    let mut out = String::from(
        "### HTTP, small responses\n\n`wrk --latency` on keep-alive connections, `GET /` answered by the bench app \
         with a 13-byte body. Through DevInProd the requests carry `Host: www-<key>.example.com` \
         (edge → relay → `devinprod connect` → app). Ratios are of requests/s; added latency is \
         over the direct path's in the same run.\n\n",
    );
    for (li, (label, threads, conns)) in LOADS.iter().enumerate() {
        let all = &r.by_load[li];
        out.push_str(&format!(
            "#### {label} (`wrk -t{threads} -c{conns} -d{}s`)\n\n",
            r.secs
        ));
        let rps = |k: Kind| of(all, k).and_then(|s| s.median(|w| w.rps));
        let p50 = |k: Kind| of(all, k).and_then(|s| s.median(|w| w.p50_us));
        let p99 = |k: Kind| of(all, k).and_then(|s| s.median(|w| w.p99_us));
        let (direct_rps, noise_rps) = (rps(Kind::Direct), rps(Kind::RatholeNoise));
        let (direct_p50, direct_p99) = (p50(Kind::Direct), p99(Kind::Direct));
        let mut rows = Vec::new();
        for s in all {
            let mut row = vec![s.kind.label().to_owned()];
            if let Some(blank) = s.blank() {
                row.push(blank);
                row.extend(std::iter::repeat_n(String::new(), 6));
                rows.push(row);
                continue;
            }
            let (Some(v), Some(l50), Some(l99)) = (rps(s.kind), p50(s.kind), p99(s.kind)) else {
                continue;
            };
            row.push(s.with_spread(v, |w| w.rps));
            row.push(stats::latency(l50));
            row.push(stats::latency(l99));
            row.push(direct_rps.map_or("—".into(), |d| stats::ratio(v, d)));
            row.push(noise_rps.map_or("—".into(), |n| stats::ratio(v, n)));
            if s.kind == Kind::Direct {
                row.push("—".into());
                row.push("—".into());
            } else {
                row.push(direct_p50.map_or("—".into(), |d| stats::added(l50 - d)));
                row.push(direct_p99.map_or("—".into(), |d| stats::added(l99 - d)));
            }
            rows.push(row);
        }
        out.push_str(&stats::table(
            &[
                "path",
                "req/s (min–max)",
                "p50",
                "p99",
                "vs direct",
                "vs rathole Noise",
                "added p50",
                "added p99",
            ],
            &rows,
        ));
        out.push('\n');
    }
    out
}
