//! Data protection in the dbproxy against a real MariaDB: masked columns, the audit log and
//! the rate limits, through the tunnel with a real driver (text and binary protocols).

use mysql_async::prelude::*;
use mysql_async::{Row, Value};
use std::collections::{HashMap, HashSet};
use tests::mariadb::TestDatabase;
use tests::{developer_with_mysql, init_tracing, mysql_conn, relay_with_dbproxy, Pki};

const ROWS: usize = 10_000;

/// users(10k rows) and orders (whose customer_email repeats users' emails), plus a view.
fn seed(db: &TestDatabase) {
    db.admin(&format!(
        "SET SESSION max_recursive_iterations = 100000; \
         CREATE TABLE users (id INT PRIMARY KEY, email VARCHAR(64), name VARCHAR(64), \
           phone VARCHAR(32), ssn INT, note VARCHAR(64), secret VARCHAR(64), plan VARCHAR(16)) ENGINE=InnoDB; \
         INSERT INTO users \
           WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {ROWS}) \
           SELECT n, CONCAT('Person.', n, '@Real-Mail', n % 7, '.com'), CONCAT('Anne-Marie O''Neil ', n), \
             CONCAT('+1 (555) ', LPAD(n, 6, '0')), 100000000 + n * 7, CONCAT('note number ', n), \
             CONCAT('s3cr3t-', n), IF(n % 2 = 0, 'pro', 'free') FROM s; \
         CREATE TABLE orders (id INT PRIMARY KEY, user_id INT, customer_email VARCHAR(64)) ENGINE=InnoDB; \
         INSERT INTO orders SELECT id, id, email FROM users WHERE id <= 100; \
         CREATE VIEW user_emails AS SELECT id, email FROM users; \
         CREATE VIEW v2 AS SELECT * FROM user_emails; \
         ALTER TABLE users ADD FULLTEXT INDEX ft_note (note), ADD INDEX ix_email (email); \
         CREATE TABLE accounts (id INT PRIMARY KEY, tenant INT, email VARCHAR(64), \
           UNIQUE KEY uq (tenant, email)) ENGINE=InnoDB; \
         INSERT INTO accounts VALUES (1, 1, 'alice@secret-corp.com'), (2, 2, 'alice@secret-corp.com'); \
         CREATE TABLE clients (id INT PRIMARY KEY, `prénom` VARCHAR(32)) ENGINE=InnoDB; \
         INSERT INTO clients VALUES (1, 'Amélie');"
    ));
}

/// A relay and in-process dbproxy masking `mask_rules(db)` (key in the PKI dir), tuned further
/// by `tune`.
async fn masking_proxy(
    db: &TestDatabase,
    pki: &Pki,
    tune: impl FnOnce(&mut dbproxy::DbProxyFileConfig),
) -> tests::TestRelay {
    let key_file = pki.path().join("mask.key");
    let rules = mask_rules(&db.name);
    let (relay, _proxy) = relay_with_dbproxy(pki, |c| {
        c.masking.secret_file = Some(key_file);
        c.masking.columns = rules.into_iter().collect();
        tune(c);
    })
    .await;
    relay
}

fn mask_rules(db: &str) -> Vec<(String, String)> {
    [
        ("users.email", "email"),
        ("users.name", "name"),
        ("users.phone", "phone"),
        ("users.ssn", "digits"),
        ("users.note", "redact:5:0"),
        ("users.secret", "hash"),
        ("orders.customer_email", "email"),
        ("accounts.email", "email"),
        ("clients.prénom", "name"),
    ]
    .iter()
    .map(|(c, s)| (format!("{db}.{c}"), s.to_string()))
    .collect()
}

struct Real {
    email: String,
    name: String,
    phone: String,
    ssn: i64,
    note: String,
    secret: String,
}

fn real(id: usize) -> Real {
    Real {
        email: format!("Person.{id}@Real-Mail{}.com", id % 7),
        name: format!("Anne-Marie O'Neil {id}"),
        phone: format!("+1 (555) {id:06}"),
        ssn: 100_000_000 + id as i64 * 7,
        note: format!("note number {id}"),
        secret: format!("s3cr3t-{id}"),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::NULL => "NULL".into(),
        other => format!("{other:?}"),
    }
}

/// No real value of the row's user appears anywhere in what came back.
fn assert_no_leak(id: usize, row: &Row) {
    let r = real(id);
    let all: Vec<String> = (0..row.len()).map(|i| text(&row[i])).collect();
    for secret in [
        &r.email,
        &r.name,
        &r.phone,
        &r.ssn.to_string(),
        &r.note,
        &r.secret,
    ] {
        for v in &all {
            assert!(
                !v.contains(secret.as_str()),
                "real value {secret:?} leaked in {all:?}"
            );
        }
    }
}

fn server_error(e: mysql_async::Error) -> (u16, String) {
    match e {
        mysql_async::Error::Server(s) => (s.code, s.message),
        other => panic!("expected a server error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_columns_come_back_masked_consistently_on_text_and_binary_protocols() {
    init_tracing();
    let db = TestDatabase::new();
    seed(&db);
    let pki = Pki::new();
    let relay = masking_proxy(&db, &pki, |c| c.limits.rows_per_min = 0).await;
    let alice = developer_with_mysql(&relay, &pki, "alice").await;
    let bob = developer_with_mysql(&relay, &pki, "bob").await;
    let mut app = mysql_conn(alice.mysql.unwrap(), &db.name).await;

    // Text protocol, every column, every row.
    let rows: Vec<Row> = app.query("SELECT * FROM users ORDER BY id").await.unwrap();
    assert_eq!(rows.len(), ROWS);
    let mut seen: HashMap<&str, HashSet<String>> = HashMap::new();
    let mut email_of: HashMap<usize, String> = HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        let id = i + 1;
        assert_eq!(
            text(&row[0]),
            id.to_string(),
            "unmasked columns are untouched"
        );
        assert_eq!(text(&row[7]), if id % 2 == 0 { "pro" } else { "free" });
        assert_no_leak(id, row);
        let r = real(id);
        let email = text(&row[1]);
        assert_eq!(email.chars().count(), r.email.chars().count(), "{email}");
        assert_eq!(email.matches('@').count(), 1, "a valid address: {email}");
        assert!(email.ends_with(".com"), "{email}");
        let name = text(&row[2]);
        assert_eq!(name.chars().count(), r.name.chars().count());
        let phone = text(&row[3]);
        assert!(phone.starts_with("+") && phone.contains(" (") && phone.len() == r.phone.len());
        let ssn = text(&row[4]);
        assert_eq!(ssn.len(), 9, "digits keeps the number of digits: {ssn}");
        let note = text(&row[5]);
        assert!(
            note.starts_with("note ") && !note.contains(&id.to_string()),
            "{note}"
        );
        for (col, v) in [
            ("email", email.clone()),
            ("name", name),
            ("phone", phone),
            ("ssn", ssn),
        ] {
            seen.entry(col).or_default().insert(v);
        }
        email_of.insert(id, email);
    }
    for (col, values) in &seen {
        assert_eq!(
            values.len(),
            ROWS,
            "{col}: distinct real values must not collide"
        );
    }

    // Aliases and table aliases do not unmask; the same email masks the same in every table
    // (joins by masked value stay consistent).
    let aliased: Vec<(i64, String)> = app
        .query("SELECT u.id, u.email AS contact FROM users AS u WHERE u.id <= 100 ORDER BY u.id")
        .await
        .unwrap();
    let orders: Vec<(i64, String)> = app
        .query("SELECT user_id, customer_email FROM orders ORDER BY user_id")
        .await
        .unwrap();
    for ((id, contact), (uid, customer)) in aliased.iter().zip(&orders) {
        assert_eq!(id, uid);
        assert_eq!(contact, &email_of[&(*id as usize)]);
        assert_eq!(
            customer, contact,
            "same real email, same mask, across tables"
        );
    }

    // Binary protocol (prepared statements), including the INT column.
    let stmt = app
        .prep("SELECT id, email, ssn, secret, name FROM users WHERE id = ?")
        .await
        .unwrap();
    for id in [1usize, 77, 9999] {
        let row: Row = app.exec_first(&stmt, (id as i64,)).await.unwrap().unwrap();
        assert_no_leak(id, &row);
        assert_eq!(text(&row[1]), email_of[&id], "binary and text mask alike");
        let ssn = text(&row[2]);
        assert_eq!(ssn.len(), 9, "{ssn}");
        assert_ne!(ssn, real(id).ssn.to_string());
        assert_eq!(
            text(&row[3]).len(),
            64,
            "hash fills the column: {:?}",
            row[3]
        );
    }

    // Another developer's session masks identically (deterministic, keyed).
    let mut other = mysql_conn(bob.mysql.unwrap(), &db.name).await;
    let e: Option<String> = other
        .query_first("SELECT email FROM users WHERE id = 42")
        .await
        .unwrap();
    assert_eq!(e.unwrap(), email_of[&42]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_around_a_mask_is_refused_with_a_clear_error() {
    init_tracing();
    let db = TestDatabase::new();
    seed(&db);
    let pki = Pki::new();
    let relay = masking_proxy(&db, &pki, |_| {}).await;
    let alice = developer_with_mysql(&relay, &pki, "alice").await;
    let mut app = mysql_conn(alice.mysql.unwrap(), &db.name).await;

    let attempts = [
        "SELECT UPPER(email) FROM users",
        "SELECT CONCAT(email, '') AS e FROM users",
        "SELECT HEX(secret) FROM users",
        "SELECT JSON_OBJECT('e', email) FROM users",
        "SELECT MAX(email) FROM users",
        "SELECT id FROM users WHERE email = 'Person.1@Real-Mail1.com'",
        "SELECT id FROM users WHERE email LIKE 'P%'",
        "SELECT id FROM users WHERE ssn > 100000100",
        "SELECT id FROM users ORDER BY email",
        "SELECT email FROM users ORDER BY 1",
        "SELECT * FROM users ORDER BY 2",
        "SELECT email AS e FROM users ORDER BY e",
        "SELECT COUNT(*) FROM users GROUP BY email",
        "SELECT id, ROW_NUMBER() OVER (ORDER BY email) FROM users",
        "SELECT * FROM (SELECT email FROM users) d",
        "SELECT * FROM (SELECT * FROM users) d",
        "SELECT (SELECT email FROM users LIMIT 1)",
        "SELECT id FROM users WHERE id IN (SELECT id FROM users WHERE email > 'm')",
        "SELECT email FROM users UNION SELECT 'x'",
        "WITH c AS (SELECT email FROM users) SELECT * FROM c",
        "SELECT u.id FROM users u JOIN orders o ON o.customer_email = u.email",
        "SELECT id FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_email = u.email)",
        "SET @v = (SELECT email FROM users LIMIT 1)",
        "SELECT @v := email FROM users",
        "INSERT INTO orders (id, user_id, customer_email) SELECT id + 100000, id, email FROM users",
        "UPDATE users SET note = email WHERE id = 1",
        "UPDATE users SET email = 'Person.2@Real-Mail2.com' WHERE id = 1",
        "INSERT INTO users VALUES (20001, 'a@b.c', 'x', 'y', 1, 'z', 'w', 'free')",
        "CREATE TEMPORARY TABLE copy AS SELECT email FROM users",
        "SELECT * FROM user_emails",
        "EXPLAIN SELECT id FROM users WHERE email = 'Person.1@Real-Mail1.com'",
        "SELECT * FROM mysql.column_stats",
        "SELECT INFO FROM information_schema.PROCESSLIST",
        // Found by the adversarial review (each leaked before it was closed):
        "SELECT id, 1 --\u{a0} , UPPER(email) AS leak FROM users WHERE id = 1",
        "SET sql_mode = 4",
        "SELECT u.id FROM (users u NATURAL JOIN (SELECT 'Person.5@Real-Mail5.com' AS email) g)",
        "UPDATE users u JOIN (SELECT 'x' AS email) g USING (email) SET u.plan = 'hit'",
        "DELETE u FROM users u NATURAL JOIN (SELECT 'x' AS email) g",
        "CREATE TEMPORARY TABLE users AS SELECT 5 AS id, 'Person.5@Real-Mail5.com' AS email",
        "SELECT id, email FROM users ORDER BY (2) LIMIT 4",
        "SELECT id, email FROM users ORDER BY +2 LIMIT 4",
        "SELECT id, email FROM users ORDER BY TRUE DESC LIMIT 4",
        "SELECT UPPER(EMAIL) FROM users",
        "SELECT UPPER(PRÉNOM) FROM clients",
        "SELECT email AS Émail, id FROM users ORDER BY émail",
        "SELECT * FROM v2",
        "SELECT id FROM users WHERE MATCH(note) AGAINST('\"number 42\"' IN BOOLEAN MODE)",
        "SELECT trx_query FROM information_schema.INNODB_TRX",
        "SELECT DISTINCT note FROM users",
        "SELECT id FROM users FORCE INDEX (ix_email) LIMIT 5",
        "EXPLAIN EXTENDED SELECT * FROM users WHERE id = 1",
        "SELECT * FROM users PROCEDURE ANALYSE()",
    ];
    for sql in attempts {
        match app.query_iter(sql).await {
            Ok(mut result) => {
                let rows: Vec<Row> = result.collect().await.unwrap_or_default();
                panic!("{sql} was not refused: {} rows", rows.len());
            }
            Err(e) => {
                let (code, message) = server_error(e);
                assert_eq!(code, 1227, "{sql}: {message}");
                assert!(message.starts_with("DevInProd refused"), "{sql}: {message}");
            }
        }
    }
    // Prepared statements are checked the same way.
    let e = app
        .prep("SELECT id FROM users WHERE email = ?")
        .await
        .unwrap_err();
    assert_eq!(server_error(e).0, 1227);

    // A server error that would quote a masked value (a composite unique key) withholds it.
    let (code, message) = server_error(
        app.query_drop("UPDATE accounts SET tenant = 2 WHERE id = 1")
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 1062, "{message}");
    assert!(!message.contains("secret-corp"), "{message}");
    assert!(message.contains("for key 'uq'"), "{message}");
    let masked_name: Option<String> = app
        .query_first("SELECT `PRÉNOM` FROM clients")
        .await
        .unwrap();
    assert_ne!(
        masked_name.as_deref(),
        Some("Amélie"),
        "accents and case fold"
    );

    // What the app legitimately does still works.
    let n: Option<i64> = app
        .query_first(
            "SELECT COUNT(*) FROM users u WHERE EXISTS (SELECT * FROM orders o WHERE o.user_id = u.id)",
        )
        .await
        .unwrap();
    assert_eq!(n, Some(100));
    let plans: Vec<(String, i64)> = app
        .query("SELECT plan, COUNT(*) FROM users GROUP BY plan ORDER BY plan")
        .await
        .unwrap();
    assert_eq!(
        plans,
        [("free".to_string(), 5000), ("pro".to_string(), 5000)]
    );
    app.query_drop("UPDATE users SET plan = 'gold' WHERE id = 3")
        .await
        .unwrap();
    let row: Row = app
        .query_first("SELECT DISTINCT email, plan FROM users WHERE id = 3")
        .await
        .unwrap()
        .unwrap();
    assert_no_leak(3, &row);
    assert_eq!(text(&row[1]), "gold");
}

fn audit_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each audit line is JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_records_allowed_rewritten_refused_and_emulated_statements() {
    init_tracing();
    let db = TestDatabase::new();
    seed(&db);
    let pki = Pki::new();
    let key_file = pki.path().join("mask.key");
    let audit_file = pki.path().join("audit").join("audit.log");
    let relay = masking_proxy(&db, &pki, |c| c.audit.path = Some(audit_file.clone())).await;
    let alice = developer_with_mysql(&relay, &pki, "alice").await;
    let key = alice.routing_key.clone();
    let mut app = mysql_conn(alice.mysql.unwrap(), &db.name).await;

    let _: Vec<i64> = app
        .query("SELECT id FROM users WHERE id <= 2")
        .await
        .unwrap();
    let _: Vec<String> = app
        .query("SELECT email FROM users WHERE id = 1")
        .await
        .unwrap();
    app.query_drop("SELECT UPPER(email) FROM users")
        .await
        .unwrap_err();
    app.query_drop("BEGIN").await.unwrap();
    app.query_drop("UPDATE users SET plan = 'x' WHERE id <= 3")
        .await
        .unwrap();
    app.query_drop("SELECT * FROM no_such_table")
        .await
        .unwrap_err();
    let _: Option<String> = app
        .exec_first("SELECT phone FROM users WHERE id = ?", (5,))
        .await
        .unwrap();
    drop(app);

    let lines = audit_lines(&audit_file);
    let find = |sql: &str, command: &str| {
        lines
            .iter()
            .find(|l| l["sql"] == sql && l["command"] == command)
            .unwrap_or_else(|| panic!("no {command} line for {sql}: {lines:#?}"))
            .clone()
    };
    for l in &lines {
        for field in [
            "time",
            "routing_key",
            "conn",
            "command",
            "sql",
            "upstream_sql",
            "decision",
            "reason",
            "rows",
            "affected",
            "duration_us",
            "error",
        ] {
            assert!(l.get(field).is_some(), "{field} missing in {l}");
        }
        assert_eq!(l["routing_key"], key.as_str());
    }
    let allowed = find("SELECT id FROM users WHERE id <= 2", "query");
    assert_eq!(allowed["decision"], "allowed");
    assert_eq!(allowed["rows"], 2);
    let rewritten = find("SELECT email FROM users WHERE id = 1", "query");
    assert_eq!(rewritten["decision"], "rewritten");
    assert_eq!(
        rewritten["masked_columns"][0],
        format!("{}.users.email", db.name)
    );
    let refused = find("SELECT UPPER(email) FROM users", "query");
    assert_eq!(refused["decision"], "refused");
    assert!(refused["reason"]
        .as_str()
        .unwrap()
        .contains("masked column"));
    let begin = find("BEGIN", "query");
    assert_eq!(begin["decision"], "emulated");
    assert!(
        begin["upstream_sql"]
            .as_str()
            .unwrap()
            .contains("SAVEPOINT"),
        "{begin}"
    );
    let update = find("UPDATE users SET plan = 'x' WHERE id <= 3", "query");
    assert_eq!(update["affected"], 3);
    let failed = find("SELECT * FROM no_such_table", "query");
    assert!(
        failed["error"].as_str().unwrap().starts_with("1146"),
        "{failed}"
    );
    let executed = find("SELECT phone FROM users WHERE id = ?", "execute");
    assert_eq!(executed["decision"], "rewritten");
    assert_eq!(executed["rows"], 1);

    // The chain holds, and neither the masking key nor a real value is in the log.
    let text = std::fs::read_to_string(&audit_file).unwrap();
    assert!(
        matches!(dbproxy::audit::verify_chain(text.lines().map(str::to_owned)), Ok(n) if n == lines.len())
    );
    let key_hex: String = std::fs::read(&key_file)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!text.contains(&key_hex));
    assert!(!text.contains(&real(5).phone) && !text.contains(&real(1).email));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_with_a_clear_error_then_recover() {
    init_tracing();
    let db = TestDatabase::new();
    seed(&db);
    let pki = Pki::new();

    // Statements per second.
    let (relay, _proxy) = relay_with_dbproxy(&pki, |c| {
        c.limits.statements_per_sec = 5;
        c.limits.rows_per_min = 0;
    })
    .await;
    let alice = developer_with_mysql(&relay, &pki, "alice").await;
    let mut app = mysql_conn(alice.mysql.unwrap(), &db.name).await;
    let mut refused = None;
    for _ in 0..20 {
        if let Err(e) = app.query_drop("SELECT 1").await {
            refused = Some(server_error(e));
            break;
        }
    }
    let (code, message) = refused.expect("the burst is limited");
    assert_eq!(code, 1226, "{message}");
    assert!(message.contains("statements_per_sec = 5"), "{message}");
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    app.query_drop("SELECT 1")
        .await
        .expect("recovered after the window");

    // Rows per minute: a result set is never cut; the next statement waits for the budget.
    let (relay, _proxy) = relay_with_dbproxy(&pki, |c| {
        c.limits.statements_per_sec = 0;
        c.limits.rows_per_min = 600;
    })
    .await;
    let bob = developer_with_mysql(&relay, &pki, "bob").await;
    let mut app = mysql_conn(bob.mysql.unwrap(), &db.name).await;
    let ids: Vec<i64> = app.query("SELECT id FROM users LIMIT 605").await.unwrap();
    assert_eq!(
        ids.len(),
        605,
        "the result that crosses the budget comes whole"
    );
    let (code, message) = server_error(
        app.query_drop("SELECT id FROM users LIMIT 1")
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 1226);
    assert!(message.contains("rows_per_min = 600"), "{message}");
    // 10 rows per second refill the 5 overdrawn ones.
    let mut ok = false;
    for _ in 0..30 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if app.query_drop("SELECT id FROM users LIMIT 1").await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "the row budget refilled");
}
