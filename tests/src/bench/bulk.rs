//! Bulk transfer: one download (`GET /bytes/N`, streamed by the app in 64 KiB chunks) and one
//! upload (`POST /upload`, the app answers the byte count) of N bytes with curl, per path.
//! The byte counts are checked; MB/s are 10^6 bytes per second as curl measures them.

use super::proc::{self, command};
use super::stats::{self, of, Series};
use super::topo::{Kind, Target};
use super::Slot;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct BulkResult {
    pub download_mbps: f64,
    pub upload_mbps: f64,
}

pub struct BulkResults {
    pub bytes: u64,
    pub series: Vec<Series<BulkResult>>,
}

/// A file of `bytes` pseudo-random bytes to upload (not compressible, not all zeros).
pub fn make_upload_file(dir: &Path, bytes: u64) -> Result<PathBuf, String> {
    let path = dir.join("upload.bin");
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in block.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        w.write_all(&block[..n])
            .map_err(|e| format!("{}: {e}", path.display()))?;
        left -= n as u64;
    }
    w.flush().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

fn max_time(bytes: u64) -> u64 {
    // Generous: 1 MB/s would be a failure of its own kind, but must still end.
    (bytes / 1_000_000).clamp(30, 600)
}

fn curl(curl: &Path, target: &Target, bytes: u64) -> std::process::Command {
    let mut cmd = command(curl);
    cmd.args(["-sS", "--max-time", &max_time(bytes).to_string()]);
    if let Some(h) = &target.host {
        cmd.args(["-H", &format!("Host: {h}")]);
    }
    cmd
}

fn run_curl(what: &str, cmd: std::process::Command, bytes: u64) -> Result<String, String> {
    let done = proc::run(what, cmd, Duration::from_secs(max_time(bytes) + 30), false)?;
    if !done.status.success() {
        return Err(format!("{what}: curl {}", done.describe()));
    }
    Ok(done.stdout)
}

/// Downloads `bytes` and returns MB/s.
pub fn download(curl_bin: &Path, target: &Target, bytes: u64) -> Result<f64, String> {
    let mut cmd = curl(curl_bin, target, bytes);
    cmd.args([
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download} %{speed_download}",
    ])
    .arg(format!("http://{}/bytes/{bytes}", target.addr));
    let out = run_curl("download", cmd, bytes)?;
    let f: Vec<&str> = out.split_whitespace().collect();
    let (Some(code), Some(size), Some(speed)) = (f.first(), f.get(1), f.get(2)) else {
        return Err(format!("download: unexpected curl output {out:?}"));
    };
    if *code != "200" {
        return Err(format!("download: HTTP {code}"));
    }
    if size.parse::<u64>().ok() != Some(bytes) {
        return Err(format!("download: received {size} bytes, expected {bytes}"));
    }
    let speed: f64 = speed
        .parse()
        .map_err(|_| format!("download: speed {speed:?}"))?;
    Ok(speed / 1e6)
}

/// Uploads `file` (`bytes` long) and returns MB/s; the app's answer must be the byte count.
pub fn upload(curl_bin: &Path, target: &Target, file: &Path, bytes: u64) -> Result<f64, String> {
    let mut cmd = curl(curl_bin, target, bytes);
    cmd.args(["-X", "POST", "-T"])
        .arg(file)
        .args([
            "-H",
            "Expect:",
            "-H",
            "Content-Type: application/octet-stream",
            "-w",
            "\n%{http_code} %{size_upload} %{speed_upload}",
        ])
        .arg(format!("http://{}/upload", target.addr));
    let out = run_curl("upload", cmd, bytes)?;
    let mut lines = out.lines().filter(|l| !l.trim().is_empty());
    let (Some(body), Some(stats)) = (lines.next(), lines.next()) else {
        return Err(format!("upload: unexpected curl output {out:?}"));
    };
    let f: Vec<&str> = stats.split_whitespace().collect();
    let (Some(code), Some(size), Some(speed)) = (f.first(), f.get(1), f.get(2)) else {
        return Err(format!("upload: unexpected curl output {out:?}"));
    };
    if *code != "200" {
        return Err(format!("upload: HTTP {code}: {}", stats::one_line(body)));
    }
    if size.parse::<u64>().ok() != Some(bytes) || body.trim().parse::<u64>().ok() != Some(bytes) {
        return Err(format!(
            "upload: sent {size} bytes, the app counted {}, expected {bytes}",
            body.trim()
        ));
    }
    let speed: f64 = speed
        .parse()
        .map_err(|_| format!("upload: speed {speed:?}"))?;
    Ok(speed / 1e6)
}

pub fn run(
    curl_bin: &Path,
    slots: &mut [Slot],
    file: &Path,
    bytes: u64,
    rounds: usize,
) -> BulkResults {
    let mut series: Vec<Series<BulkResult>> = slots.iter().map(Slot::series).collect();
    for round in 1..=rounds {
        for (si, slot) in slots.iter_mut().enumerate() {
            let s = &mut series[si];
            let Some(running) = slot.running() else {
                continue;
            };
            if !s.live() {
                continue;
            }
            eprintln!(
                "   bulk round {round}/{rounds}: {}",
                running.target.kind.label()
            );
            let r = download(curl_bin, &running.target, bytes)
                .and_then(|d| {
                    upload(curl_bin, &running.target, file, bytes).map(|u| BulkResult {
                        download_mbps: d,
                        upload_mbps: u,
                    })
                })
                .map_err(|e| match running.check() {
                    Ok(()) => e,
                    Err(dead) => format!("{e}; {dead}"),
                });
            if let Err(e) = &r {
                eprintln!("     FAILED: {e}");
            }
            s.push(r);
        }
    }
    BulkResults { bytes, series }
}

pub fn section(r: &BulkResults) -> String {
    let mb = r.bytes as f64 / 1e6;
    let mut out = format!(
        "### Bulk transfer\n\nOne {mb:.0} MB download (`GET /bytes/N`, streamed by the app in 64 KiB chunks) \
         and one {mb:.0} MB upload (`POST /upload`, the app answers the byte count) with curl on one \
         connection; byte counts checked. MB/s = 10^6 bytes/s.\n\n"
    );
    let all = &r.series;
    let down = |k: Kind| of(all, k).and_then(|s| s.median(|b| b.download_mbps));
    let up = |k: Kind| of(all, k).and_then(|s| s.median(|b| b.upload_mbps));
    let mut rows = Vec::new();
    for s in all {
        let mut row = vec![s.kind.label().to_owned()];
        if let Some(blank) = s.blank() {
            row.push(blank);
            row.extend(std::iter::repeat_n(String::new(), 5));
            rows.push(row);
            continue;
        }
        let (Some(d), Some(u)) = (down(s.kind), up(s.kind)) else {
            continue;
        };
        let vs = |v: f64, base: Option<f64>| base.map_or("—".into(), |b| stats::ratio(v, b));
        row.push(stats::mbps(d));
        row.push(stats::mbps(u));
        row.push(vs(d, down(Kind::Direct)));
        row.push(vs(u, up(Kind::Direct)));
        row.push(vs(d, down(Kind::RatholeNoise)));
        row.push(vs(u, up(Kind::RatholeNoise)));
        rows.push(row);
    }
    out.push_str(&stats::table(
        &[
            "path",
            "download MB/s",
            "upload MB/s",
            "down vs direct",
            "up vs direct",
            "down vs rathole Noise",
            "up vs rathole Noise",
        ],
        &rows,
    ));
    out.push('\n');
    out
}
