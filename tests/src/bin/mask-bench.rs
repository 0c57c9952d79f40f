//! `mask-bench [ROWS] [ROUNDS]`: what masking costs. Seeds two identical tables of ROWS rows
//! (default 100,000) in a fresh database — `masked` with four masked columns (email, name,
//! phone, digits), `plain` with none — and reads each whole through the same tunnel and
//! dbproxy, ROUNDS times (default 5), alternating. Prints the median rows/s of each and the
//! ratio. Uses the test MariaDB (DEVINPROD_TEST_MYSQL_URL, else a private mariadbd).

use mysql_async::prelude::Queryable;
use std::time::Instant;
use tests::mariadb::TestDatabase;
use tests::{developer_with_mysql, mysql_conn, relay_with_dbproxy, Pki};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let rows: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let rounds: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(5);
    let db = TestDatabase::new();
    for table in ["masked", "plain"] {
        db.admin(&format!(
            "SET SESSION max_recursive_iterations = {rows}; \
             CREATE TABLE {table} (id INT PRIMARY KEY, email VARCHAR(64), name VARCHAR(64), \
               phone VARCHAR(32), ssn BIGINT, plan VARCHAR(16)) ENGINE=InnoDB; \
             INSERT INTO {table} WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {rows}) \
               SELECT n, CONCAT('person.', n, '@mail', n % 7, '.com'), CONCAT('Anne Marie ', n), \
               CONCAT('+1 555 ', LPAD(n, 7, '0')), 100000000 + n, 'free' FROM s;"
        ));
    }
    let pki = Pki::new();
    let key_file = pki.path().join("mask.key");
    let name = db.name.clone();
    let (relay, _proxy) = relay_with_dbproxy(&pki, |c| {
        c.masking.secret_file = Some(key_file.clone());
        for (col, strategy) in [
            ("email", "email"),
            ("name", "name"),
            ("phone", "phone"),
            ("ssn", "digits"),
        ] {
            c.masking
                .columns
                .insert(format!("{name}.masked.{col}"), strategy.into());
        }
        c.limits.rows_per_min = 0;
        c.limits.statements_per_sec = 0;
        c.statement_timeout_ms = 0;
    })
    .await;
    let dev = developer_with_mysql(&relay, &pki, "bench").await;
    let mut conn = mysql_conn(dev.mysql.expect("mysql listener"), &db.name).await;
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, table) in ["masked", "plain"].iter().enumerate() {
            let t = Instant::now();
            let got: Vec<mysql_async::Row> = conn
                .query(format!("SELECT * FROM {table}"))
                .await
                .expect("select");
            assert_eq!(got.len(), rows);
            rates[i].push(rows as f64 / t.elapsed().as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    // The first masked round sees every value for the first time; later rounds find them in
    // the masker's memo when ROWS x 4 fits in it (200,000 values).
    let cold = rates[0][0];
    let masked = median(&mut rates[0][1..].to_vec());
    let plain = median(&mut rates[1]);
    println!("| table | columns masked | rows | rows/s |");
    println!("|---|---|---|---|");
    println!("| plain | 0 | {rows} | {plain:.0} (median of {rounds}) |");
    println!("| masked, first read | 4 (email, name, phone, digits) | {rows} | {cold:.0} |");
    println!(
        "| masked, read again | 4 | {rows} | {masked:.0} (median of {}) |",
        rounds - 1
    );
    let per_value = |r: f64| (1.0 / r - 1.0 / plain) * 1e6 / 4.0;
    println!(
        "masking costs {:.2} µs per value seen for the first time, {:.2} µs per value read again",
        per_value(cold),
        per_value(masked)
    );
}
