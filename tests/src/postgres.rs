//! A real PostgreSQL for database tests: `DEVINPROD_TEST_PG_URL` when set (e.g.
//! `postgres://postgres@127.0.0.1:5432`), otherwise a private `postgres` started once per test
//! process from Debian's binaries (`initdb`, `postgres` under /usr/lib/postgresql/VERSION/bin)
//! in a temporary directory on an ephemeral port, and stopped when the process ends. A missing
//! PostgreSQL is a test failure, never a skip. PostgreSQL refuses to run as root: as root, the
//! server runs as the `postgres` user the Debian package creates.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Server {
    pub host: String,
    pub port: u16,
    /// The superuser (`postgres`), trusted from 127.0.0.1 on a private server.
    pub user: String,
    _dir: Option<tempfile::TempDir>,
    /// The shell that runs the private server and stops it when this process is gone.
    _watcher: Option<std::process::Child>,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The PostgreSQL server for this test process.
pub fn server() -> &'static Server {
    SERVER.get_or_init(|| match std::env::var("DEVINPROD_TEST_PG_URL") {
        Ok(url) => {
            let rest = url
                .strip_prefix("postgres://")
                .or_else(|| url.strip_prefix("postgresql://"))
                .expect("DEVINPROD_TEST_PG_URL: postgres://USER@HOST:PORT");
            let (user, addr) = rest
                .split_once('@')
                .expect("DEVINPROD_TEST_PG_URL: no user");
            let addr = addr.split('/').next().unwrap_or(addr);
            let (host, port) = addr
                .rsplit_once(':')
                .expect("DEVINPROD_TEST_PG_URL: no port");
            Server {
                host: host.to_owned(),
                port: port.parse().expect("DEVINPROD_TEST_PG_URL: bad port"),
                user: user.to_owned(),
                _dir: None,
                _watcher: None,
            }
        }
        Err(_) => start_private(),
    })
}

/// A binary of the newest PostgreSQL installed.
fn find(binary: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort_by_key(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    });
    for dir in versions.iter().rev() {
        let p = dir.join("bin").join(binary);
        if p.exists() {
            return p;
        }
    }
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = PathBuf::from(dir).join(binary);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{binary} not found: install PostgreSQL (apt-get install -y postgresql postgresql-client) \
         or set DEVINPROD_TEST_PG_URL"
    );
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|uid| uid == "0"))
        .unwrap_or(false)
}

/// `program args…`, as the `postgres` user when this process is root.
fn as_server_user(program: &Path) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn start_private() -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    if running_as_root() {
        let out = Command::new("chown")
            .arg("postgres:")
            .arg(dir.path())
            .output()
            .expect("chown");
        assert!(
            out.status.success(),
            "chown postgres {}: {} (the postgresql package creates that user)",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let data = dir.path().join("data");
    let out = as_server_user(&find("initdb"))
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        ])
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let postgres = find("postgres");
    let runner = if running_as_root() {
        "runuser -u postgres -- "
    } else {
        ""
    };
    // A watcher shell stops the server when this test process is gone, however it ends.
    let script = format!(
        "{runner}{postgres} -D {data} -p {port} -k {dir} -c listen_addresses=127.0.0.1 \
         -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
         -c max_connections=200 > {log} 2>&1 & srv=$!; \
         while kill -0 {parent} 2>/dev/null && kill -0 $srv 2>/dev/null; do sleep 0.5; done; \
         kill $srv 2>/dev/null; wait $srv",
        postgres = postgres.display(),
        data = data.display(),
        dir = dir.path().display(),
        log = dir.path().join("server.log").display(),
        parent = std::process::id(),
    );
    let watcher = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start postgres");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = Command::new(find("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
            panic!("private postgres did not come up on port {port}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Server {
        host: "127.0.0.1".into(),
        port,
        user: "postgres".into(),
        _dir: Some(dir),
        _watcher: Some(watcher),
    }
}

impl Server {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Runs SQL as the superuser with `psql` in database `db`, panicking on error; the rows,
    /// one a line, fields separated by `|`.
    pub fn admin_in(&self, db: &str, sql: &str) -> String {
        let out = Command::new(find("psql"))
            .args([
                "-h",
                &self.host,
                "-p",
                &self.port.to_string(),
                "-U",
                &self.user,
            ])
            .args([
                "-d",
                db,
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A database created for one test and dropped when it ends.
pub struct TestPgDatabase {
    pub name: String,
}

impl TestPgDatabase {
    pub fn new() -> Self {
        let name = crate::unique_db_name();
        server().admin_in("postgres", &format!("CREATE DATABASE {name}"));
        Self { name }
    }

    pub fn admin(&self, sql: &str) -> String {
        server().admin_in(&self.name, sql)
    }
}

impl Default for TestPgDatabase {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestPgDatabase {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            server().admin_in(
                "postgres",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            )
        });
    }
}
