//! WebSocket round trips: one connection to the app's `/ws` echo, N sequential 32-byte binary
//! messages, each timed from send to its echo; p50/p99 per path.

use super::stats::{self, of, Series};
use super::topo::{Kind, Target};
use super::Slot;
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

const PAYLOAD: [u8; 32] = *b"devinprod-bench-websocket-32byte";
/// Echoes before the timed ones (connection and allocator warm-up).
const WARMUP: usize = 50;
/// The longest any one echo may take.
const ECHO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct WsResult {
    pub p50_us: f64,
    pub p99_us: f64,
}

pub struct WsResults {
    pub messages: usize,
    pub series: Vec<Series<WsResult>>,
}

async fn round_trips(target: &Target, n: usize) -> Result<WsResult, String> {
    let tcp = tokio::net::TcpStream::connect(target.addr)
        .await
        .map_err(|e| format!("websocket: connect {}: {e}", target.addr))?;
    tcp.set_nodelay(true)
        .map_err(|e| format!("websocket: nodelay: {e}"))?;
    let mut request = format!("ws://{}/ws", target.addr)
        .into_client_request()
        .map_err(|e| format!("websocket: request: {e}"))?;
    let host = target
        .host_header()
        .parse()
        .map_err(|e| format!("websocket: host: {e}"))?;
    request.headers_mut().insert("host", host);
    let (mut ws, resp) =
        tokio::time::timeout(ECHO_TIMEOUT, tokio_tungstenite::client_async(request, tcp))
            .await
            .map_err(|_| "websocket: no handshake answer in time".to_owned())?
            .map_err(|e| format!("websocket: handshake: {e}"))?;
    if resp.status() != 101 {
        return Err(format!("websocket: HTTP {}", resp.status()));
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..WARMUP + n {
        let started = Instant::now();
        ws.send(Message::binary(PAYLOAD.to_vec()))
            .await
            .map_err(|e| format!("websocket: send: {e}"))?;
        loop {
            let msg = tokio::time::timeout(ECHO_TIMEOUT, ws.next())
                .await
                .map_err(|_| format!("websocket: no echo within {ECHO_TIMEOUT:?}"))?;
            match msg {
                Some(Ok(Message::Binary(b))) if b.as_ref() == PAYLOAD => break,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => return Err(format!("websocket: unexpected {other:?}")),
                Some(Err(e)) => return Err(format!("websocket: {e}")),
                None => return Err("websocket: closed before the echo".into()),
            }
        }
        if i >= WARMUP {
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    // A clean close, bounded: the server's Close comes back, then the stream ends.
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok(WsResult {
        p50_us: stats::percentile(&samples, 0.50),
        p99_us: stats::percentile(&samples, 0.99),
    })
}

/// One connection, `n` timed echoes; the whole run bounded in time.
pub fn measure(target: &Target, n: usize) -> Result<WsResult, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let limit = Duration::from_secs(30)
        + ECHO_TIMEOUT.saturating_mul(2)
        + Duration::from_millis(n as u64 * 20);
    rt.block_on(async {
        tokio::time::timeout(limit, round_trips(target, n))
            .await
            .map_err(|_| format!("websocket: {n} echoes did not finish within {limit:?}"))?
    })
}

pub fn run(slots: &mut [Slot], messages: usize, rounds: usize) -> WsResults {
    let mut series: Vec<Series<WsResult>> = slots.iter().map(Slot::series).collect();
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
                "   websocket round {round}/{rounds}: {}",
                running.target.kind.label()
            );
            let r = measure(&running.target, messages).map_err(|e| match running.check() {
                Ok(()) => e,
                Err(dead) => format!("{e}; {dead}"),
            });
            if let Err(e) = &r {
                eprintln!("     FAILED: {e}");
            }
            s.push(r);
        }
    }
    WsResults { messages, series }
}

pub fn section(r: &WsResults) -> String {
    let mut out = format!(
        "### WebSocket round trips\n\nOne WebSocket connection to the app's `/ws` echo; {} sequential \
         32-byte binary messages (after {WARMUP} untimed), each timed from send to echo. \
         p50/p99 over the messages of a round, median over the rounds.\n\n",
        r.messages
    );
    let all = &r.series;
    let p50 = |k: Kind| of(all, k).and_then(|s| s.median(|w| w.p50_us));
    let p99 = |k: Kind| of(all, k).and_then(|s| s.median(|w| w.p99_us));
    let mut rows = Vec::new();
    for s in all {
        let mut row = vec![s.kind.label().to_owned()];
        if let Some(blank) = s.blank() {
            row.push(blank);
            row.extend(std::iter::repeat_n(String::new(), 3));
            rows.push(row);
            continue;
        }
        let (Some(a), Some(b)) = (p50(s.kind), p99(s.kind)) else {
            continue;
        };
        row.push(stats::latency(a));
        row.push(stats::latency(b));
        if s.kind == Kind::Direct {
            row.push("—".into());
            row.push("—".into());
        } else {
            row.push(p50(Kind::Direct).map_or("—".into(), |d| stats::added(a - d)));
            row.push(p99(Kind::Direct).map_or("—".into(), |d| stats::added(b - d)));
        }
        rows.push(row);
    }
    out.push_str(&stats::table(
        &["path", "p50", "p99", "added p50", "added p99"],
        &rows,
    ));
    out.push('\n');
    out
}
