//! A private nginx (Debian's `nginx` package) for tests: its own prefix directory, config, logs
//! and pid file in a temporary directory, listening on an ephemeral port of 127.0.0.1. A
//! missing nginx is a failure, never a skip (`.ci/run` installs it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nginx binary: on `PATH`, or Debian's `/usr/sbin/nginx` (not on a user's `PATH`).
pub fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file());
    let bin = on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"));
    assert!(
        bin.is_file(),
        "nginx is missing: install Debian's `nginx` package (.ci/run does)"
    );
    bin
}

/// A free port on 127.0.0.1 (bound, then released for nginx to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("an ephemeral port")
        .port()
}

/// A running nginx; stopped (and waited for) when dropped.
pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx with `http_conf` (the contents of an `http {}` block: `server`s, `map`s)
    /// listening on `port`, and waits until it accepts connections.
    pub fn start(http_conf: &str, port: u16) -> Self {
        Self::start_with(port, "1", &[], |_| http_conf.to_owned())
    }

    /// Like [`Nginx::start`] with `worker_processes` set to `workers` (`"auto"`: one per
    /// core), `files` (name, contents) written into its directory first, and the `http {}`
    /// contents made by `http_conf` from that directory's path (for `root` and the like).
    pub fn start_with(
        port: u16,
        workers: &str,
        files: &[(&str, &[u8])],
        http_conf: impl FnOnce(&Path) -> String,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // Workers run as an unprivileged user when nginx starts as root: they must reach their
        // temporary directories (which the master creates and hands to them) under this one.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents).expect("nginx file");
        }
        let d = dir.path().display();
        std::fs::write(dir.path().join("site.conf"), http_conf(dir.path())).expect("site.conf");
        let main = format!(
            "daemon off;\n\
             worker_processes {workers};\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             access_log {d}/access.log;\n\
             client_body_temp_path {d}/client_body;\n\
             proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n\
             include {d}/site.conf;\n\
             }}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), main).expect("nginx.conf");
        let conf = dir.path().join("nginx.conf");
        let child = Command::new(binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut nginx = Self { addr, child, dir };
        nginx.wait_ready();
        nginx
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + crate::WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nginx exited ({status}) at start: {}", self.error_log());
            }
            if std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {} in time: {}",
                self.addr,
                self.error_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// nginx's error log so far (for failure messages).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM: the master stops its workers, then exits.
        crate::procs::kill(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
