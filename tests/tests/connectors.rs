//! Real MySQL/MariaDB connectors through the tunnel (issue 15): each runs the scenario of
//! `tests/connectors/README.md` first directly against the private MariaDB (proving the script)
//! and then through `devinprod connect --mysql-listen` and the dbproxy, where it must behave the
//! same while production sees none of it.

use std::path::{Path, PathBuf};
use std::process::Command;
use tests::mariadb::TestDatabase;
use tests::{developer_with_mysql, init_tracing, relay_with_dbproxy, Pki};

/// Where and as whom a connector connects.
struct Target {
    host: String,
    port: u16,
    user: String,
    password: String,
}

struct Connector {
    name: &'static str,
    /// The command, before `HOST PORT DB TABLE`.
    command: fn(&Path) -> Command,
    install: &'static str,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors")
}

fn python_command(d: &Path, script: &str) -> Command {
    let packages = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/connectors/python");
    let mut c = Command::new("python3");
    c.env("PYTHONPATH", packages).arg(d.join(script));
    c
}

const CONNECTORS: &[Connector] = &[
    Connector {
        name: "PyMySQL (PyPI)",
        command: |d| python_command(d, "pymysql_client.py"),
        install: "python3 -m pip install --target target/connectors/python -r tests/connectors/requirements.txt",
    },
    Connector {
        name: "mysql-connector-python, pure and C (PyPI)",
        command: |d| python_command(d, "mysql_connector_python.py"),
        install: "python3 -m pip install --target target/connectors/python -r tests/connectors/requirements.txt",
    },
    Connector {
        name: "Perl DBD::MariaDB (Debian)",
        command: |d| {
            let mut c = Command::new("perl");
            c.arg(d.join("dbi.pl")).arg("MariaDB");
            c
        },
        install: "apt-get install -y libdbd-mariadb-perl",
    },
    Connector {
        name: "Perl DBD::mysql (Debian)",
        command: |d| {
            let mut c = Command::new("perl");
            c.arg(d.join("dbi.pl")).arg("mysql");
            c
        },
        install: "apt-get install -y libdbd-mysql-perl",
    },
    Connector {
        name: "PHP PDO_mysql and mysqli (Debian)",
        command: |d| {
            let mut c = Command::new("php");
            c.arg(d.join("pdo_mysqli.php"));
            c
        },
        install: "apt-get install -y php-cli php-mysql",
    },
    Connector {
        name: "Ruby mysql2 (Debian)",
        command: |d| {
            let mut c = Command::new("ruby");
            c.arg(d.join("mysql2.rb"));
            c
        },
        install: "apt-get install -y ruby-mysql2",
    },
    Connector {
        name: "MariaDB Connector/J 2.7 (Debian)",
        command: |d| {
            let mut c = Command::new("java");
            c.arg("-cp")
                .arg("/usr/share/java/mariadb-java-client.jar")
                .arg(d.join("ConnectorJ.java"));
            c
        },
        install: "apt-get install -y libmariadb-java default-jdk-headless",
    },
    Connector {
        name: "npm mysql, mysql2 and mariadb",
        command: |d| {
            let mut c = Command::new("node");
            c.arg(d.join("node_clients.js"));
            c
        },
        install: "npm ci --prefix tests/connectors",
    },
];

fn run(connector: &Connector, at: &Target, db: &str, table: &str) -> Result<(), String> {
    let mut command = (connector.command)(&dir());
    command.args([
        &at.host,
        &at.port.to_string(),
        db,
        table,
        &at.user,
        &at.password,
    ]);
    let out = command.output().map_err(|e| {
        format!(
            "{}: cannot run ({e}); install it: {}",
            connector.name, connector.install
        )
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && stdout.trim_end().ends_with("ok") {
        Ok(())
    } else {
        Err(format!(
            "{}: {}\n{stdout}{}",
            connector.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_connectors_work_through_the_tunnel_as_they_do_directly() {
    init_tracing();
    let db = TestDatabase::new();
    let server = tests::mariadb::server();
    let pki = Pki::new();
    let (relay, _proxy) = relay_with_dbproxy(&pki, |_| {}).await;
    let dev = developer_with_mysql(&relay, &pki, "alice").await;
    let tunnel = dev.mysql.unwrap();
    let mut failures = Vec::new();
    for (i, connector) in CONNECTORS.iter().enumerate() {
        let direct = Target {
            host: server.host.clone(),
            port: server.port,
            user: server.user.clone(),
            password: server.password.clone(),
        };
        let through_tunnel = Target {
            host: tunnel.ip().to_string(),
            port: tunnel.port(),
            // Any user and password: the tunnel already authenticated the developer.
            user: "app".into(),
            password: "anything".into(),
        };
        for (how, at) in [("direct", direct), ("tunnel", through_tunnel)] {
            let table = format!("c{i}_{how}");
            db.admin(&format!(
                "CREATE TABLE {table} (id INT PRIMARY KEY AUTO_INCREMENT, val VARCHAR(50)) ENGINE=InnoDB"
            ));
            let (name, dbname) = (connector.name, db.name.clone());
            let result = tokio::task::spawn_blocking({
                let connector = &CONNECTORS[i];
                let table = table.clone();
                move || run(connector, &at, &dbname, &table)
            })
            .await
            .unwrap();
            if let Err(e) = result {
                failures.push(format!("[{how}] {e}"));
                continue;
            }
            if how == "tunnel" {
                let seen = db.admin(&format!("SELECT COUNT(*) FROM {table}"));
                if seen.trim() != "0" {
                    failures.push(format!("[{how}] {name}: production sees {seen} rows"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} connector runs failed:\n{}",
        failures.len(),
        CONNECTORS.len() * 2,
        failures.join("\n\n")
    );
}

/// Issue 15: `@@autocommit`, `@@in_transaction` and `@@tx_isolation` are the app connection's
/// own (emulated) state, in the text and the binary protocol, not the session's (whose
/// connection is always in its one transaction with autocommit off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_reads_its_own_transaction_state() {
    use mysql_async::prelude::*;
    init_tracing();
    let db = TestDatabase::new();
    db.admin("CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB");
    let pki = Pki::new();
    let (relay, _proxy) = relay_with_dbproxy(&pki, |_| {}).await;
    let dev = developer_with_mysql(&relay, &pki, "alice").await;
    let mut a = tests::mysql_conn(dev.mysql.unwrap(), &db.name).await;
    let mut b = tests::mysql_conn(dev.mysql.unwrap(), &db.name).await;
    let state = "SELECT @@autocommit, @@in_transaction, @@tx_isolation";
    let fresh: Option<(i64, i64, String)> = a.query_first(state).await.unwrap();
    assert_eq!(fresh, Some((1, 0, "READ-COMMITTED".into())));
    a.query_drop("SET autocommit = 0").await.unwrap();
    let after_select_1: Option<(i64, i64, String)> = a.query_first(state).await.unwrap();
    assert_eq!(after_select_1.map(|s| (s.0, s.1)), Some((0, 0)));
    a.query_drop("SELECT * FROM t").await.unwrap();
    a.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        .await
        .unwrap();
    // Prepared (binary protocol) as drivers with server-side prepares send it.
    let in_tx: Option<(i64, i64, String)> = a.exec_first(state, ()).await.unwrap();
    assert_eq!(in_tx, Some((0, 1, "SERIALIZABLE".into())));
    let other: Option<(i64, i64, String)> = b.query_first(state).await.unwrap();
    assert_eq!(other, Some((1, 0, "READ-COMMITTED".into())));
}

/// Issue 15: a client that asks for CLIENT_IGNORE_SPACE at login (the `mariadb` command line
/// client's `--ignore-spaces`) gets IGNORE_SPACE in that connection's sql_mode, as from the
/// server directly: `COUNT (*)` with a space then parses, and another app connection of the same
/// developer session keeps its own mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_space_asked_at_login_is_that_connections_sql_mode() {
    use mysql_async::prelude::*;
    init_tracing();
    let db = TestDatabase::new();
    db.admin("CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB");
    let server = tests::mariadb::server();
    let pki = Pki::new();
    let (relay, _proxy) = relay_with_dbproxy(&pki, |_| {}).await;
    let dev = developer_with_mysql(&relay, &pki, "alice").await;
    let tunnel = dev.mysql.unwrap();
    let mut other = tests::mysql_conn(tunnel, &db.name).await;
    other.query_drop("SELECT * FROM t").await.unwrap();
    let cli = |host: String, port: u16, user: String, password: String, flag: bool| {
        let dbname = db.name.clone();
        move || {
            let mut c = Command::new("mariadb");
            c.args(["-h", &host, "-P", &port.to_string(), "-u", &user])
                .arg(format!("-p{password}"))
                .args(["-N", "-B", "--protocol=TCP"]);
            if flag {
                c.arg("--ignore-spaces");
            }
            c.args([
                "-e",
                "SELECT FIND_IN_SET('IGNORE_SPACE', @@sql_mode) > 0; SELECT COUNT (*) FROM t",
                &dbname,
            ]);
            let out = c
                .output()
                .expect("the mariadb client (apt-get install -y mariadb-client)");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    for (how, host, port, user, password) in [
        (
            "direct",
            server.host.clone(),
            server.port,
            server.user.clone(),
            server.password.clone(),
        ),
        (
            "tunnel",
            tunnel.ip().to_string(),
            tunnel.port(),
            "app".into(),
            "anything".into(),
        ),
    ] {
        let (ok, out, err) = tokio::task::spawn_blocking(cli(
            host.clone(),
            port,
            user.clone(),
            password.clone(),
            true,
        ))
        .await
        .unwrap();
        assert!(ok, "[{how}] --ignore-spaces: {err}");
        assert_eq!(
            out.split_whitespace().collect::<Vec<_>>(),
            ["1", "0"],
            "[{how}]"
        );
        let (ok, _, err) = tokio::task::spawn_blocking(cli(host, port, user, password, false))
            .await
            .unwrap();
        // Without it, the server reads `COUNT (*)` as a syntax error (and the proxy relays it).
        assert!(
            !ok && err.contains("1064"),
            "[{how}] without --ignore-spaces: {err}"
        );
    }
    let mode: Option<String> = other.query_first("SELECT @@sql_mode").await.unwrap();
    assert!(
        !mode.clone().unwrap_or_default().contains("IGNORE_SPACE"),
        "{mode:?}"
    );
}
