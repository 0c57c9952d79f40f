//! A real MariaDB for database tests: `DEVINPROD_TEST_MYSQL_URL` when set (e.g.
//! `mysql://root@127.0.0.1:3306`), otherwise a private `mariadbd` started once per test
//! process in a temporary directory on an ephemeral port, and stopped when the process ends.
//! A missing MariaDB is a test failure, never a skip.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Server {
    /// `mysql://root@127.0.0.1:PORT` (or the given URL).
    pub url: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    _dir: Option<tempfile::TempDir>,
    /// The shell that runs the private server and stops it when this process is gone.
    _watcher: Option<std::process::Child>,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The database server for this test process.
pub fn server() -> &'static Server {
    SERVER.get_or_init(|| match std::env::var("DEVINPROD_TEST_MYSQL_URL") {
        Ok(url) => {
            let u = dbproxy::upstream::UpstreamUrl::parse(&url).expect("DEVINPROD_TEST_MYSQL_URL");
            Server {
                url,
                host: u.host,
                port: u.port,
                user: u.user,
                password: u.password,
                _dir: None,
                _watcher: None,
            }
        }
        Err(_) => start_private(),
    })
}

fn find(binary: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = PathBuf::from(dir).join(binary);
        if p.exists() {
            return p;
        }
    }
    panic!("{binary} not found: install mariadb-server (apt-get install -y mariadb-server) or set DEVINPROD_TEST_MYSQL_URL");
}

fn start_private() -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let out = Command::new(find("mariadb-install-db"))
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .args([
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--user=root",
        ])
        .output()
        .expect("run mariadb-install-db");
    assert!(
        out.status.success(),
        "mariadb-install-db failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mariadbd = find("mariadbd");
    // A watcher shell stops the server when this test process is gone, however it ends.
    let script = format!(
        "{mariadbd} --no-defaults --datadir={data} --port={port} --bind-address=127.0.0.1 \
         --socket={sock} --pid-file={pid} --user=root --innodb-buffer-pool-size=64M \
         --skip-log-bin --max-allowed-packet=64M --log-error={log} & srv=$!; \
         while kill -0 {parent} 2>/dev/null && kill -0 $srv 2>/dev/null; do sleep 0.5; done; \
         kill $srv 2>/dev/null; wait $srv",
        mariadbd = mariadbd.display(),
        data = data.display(),
        sock = dir.path().join("mysqld.sock").display(),
        pid = dir.path().join("mysqld.pid").display(),
        log = dir.path().join("error.log").display(),
        parent = std::process::id(),
    );
    let watcher = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mariadbd");
    let url = format!("mysql://root@127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = Command::new(find("mariadb"))
            .args([
                "-uroot",
                "-h127.0.0.1",
                &format!("-P{port}"),
                "-e",
                "SELECT 1",
            ])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
            panic!("private mariadbd did not come up on port {port}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Server {
        url,
        host: "127.0.0.1".into(),
        port,
        user: "root".into(),
        password: String::new(),
        _dir: Some(dir),
        _watcher: Some(watcher),
    }
}

impl Server {
    /// Runs SQL as the administrator with the `mariadb` command line client, panicking on error.
    pub fn admin(&self, sql: &str) -> String {
        let out = Command::new(find("mariadb"))
            .args([
                &format!("-u{}", self.user),
                &format!("-h{}", self.host),
                &format!("-P{}", self.port),
                "-N",
                "-B",
            ])
            .args((!self.password.is_empty()).then(|| format!("-p{}", self.password)))
            .args(["-e", sql])
            .output()
            .expect("run mariadb");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A database created for one test and dropped when it ends.
pub struct TestDatabase {
    pub name: String,
}

impl TestDatabase {
    pub fn new() -> Self {
        let name = crate::unique_db_name();
        server().admin(&format!("CREATE DATABASE {name}"));
        Self { name }
    }

    pub fn admin(&self, sql: &str) -> String {
        server().admin(&format!("USE {}; {sql}", self.name))
    }
}

impl Default for TestDatabase {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            server().admin(&format!("DROP DATABASE IF EXISTS {}", self.name))
        });
    }
}
