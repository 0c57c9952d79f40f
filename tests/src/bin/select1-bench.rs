//! `select1-bench ADDR [N]`: N sequential `SELECT 1` round trips with a real driver; prints
//! p50/p99/mean in microseconds. Run it against the database directly and against a
//! `connect --mysql-listen` address in the same run to see what the tunnel adds (`db-bench`
//! does both, over several rounds, with the same code: `tests::benchkit::select1_latency`).

#[tokio::main]
async fn main() -> Result<(), mysql_async::Error> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3306".into());
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(2000);
    let opts = tests::benchkit::mysql_opts(&addr, "root", "").expect("ADDR must be HOST:PORT");
    let mut conn = mysql_async::Conn::new(opts).await?;
    let l = tests::benchkit::select1_latency(&mut conn, n, 100).await?;
    println!(
        "{addr}: n={n} p50={:.0}us p99={:.0}us mean={:.0}us",
        l.p50_us, l.p99_us, l.mean_us
    );
    conn.disconnect().await?;
    Ok(())
}
