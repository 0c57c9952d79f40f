//! `select1-bench ADDR [N]`: N sequential `SELECT 1` round trips with a real driver; prints
//! p50/p99/mean in microseconds. Run it against the database directly and against a
//! `connect --mysql-listen` address in the same run to see what the tunnel adds.

use mysql_async::prelude::Queryable;
use std::time::Instant;

#[tokio::main]
async fn main() -> Result<(), mysql_async::Error> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3306".into());
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(2000);
    let (host, port) = addr.rsplit_once(':').expect("ADDR must be HOST:PORT");
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(host)
        .tcp_port(port.parse().expect("port"))
        .user(Some("root"))
        .prefer_socket(false);
    let mut conn = mysql_async::Conn::new(opts).await?;
    for _ in 0..100 {
        conn.query_drop("SELECT 1").await?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let _: Option<i64> = conn.query_first("SELECT 1").await?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    println!(
        "{addr}: n={n} p50={:.0}us p99={:.0}us mean={:.0}us",
        pct(0.50),
        pct(0.99),
        mean
    );
    conn.disconnect().await?;
    Ok(())
}
