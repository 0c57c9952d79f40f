//! Issue 18: the production path, and both paths with a real app.
//!
//! The app is nginx from Debian (one worker process, as an app server with one process), in
//! two answers that a real site sends: (a) `GET /`, a 13-byte body with the headers of a
//! typical app response (Date, Server, Content-Type, Content-Length, Connection, Cache-Control,
//! Set-Cookie, X-Frame-Options, X-Content-Type-Options, Referrer-Policy, Vary: 11 in all) and
//! (b) `GET /page.html`, a 4 KiB static page — next to the bench app's `GET /`.
//!
//! **Production path** — what every visitor without a routing key goes through: direct to the
//! app; nginx as a reverse proxy (`worker_processes auto`, keep-alive upstream connections,
//! the usual `proxy_set_header`s, no access log), which is what an operator compares the edge
//! with; and the edge of `devinprod up --production APP` (`Host: shop.example.com`, no key).
//! **Developer path** with the real app: `devinprod up` + `devinprod connect --http APP`
//! (`Host: www-<key>.example.com`) against rathole Noise to the same app.

use super::stats::{self, Series};
use super::topo::{self, Env, Kind, Running};
use super::wrk::{self, WrkResult};
use crate::nginx::{self, Nginx};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The loads: (label, wrk threads, connections), as in the HTTP section.
const LOADS: [(&str, u32, u32); 2] = [("1 connection", 1, 1), ("32 connections", 2, 32)];

/// The host a visitor without a routing key asks for.
const PRODUCTION_HOST: &str = "shop.example.com";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    BenchApp,
    Headers,
    Page,
}

impl App {
    fn label(self) -> &'static str {
        match self {
            App::BenchApp => "bench app, `GET /` (13 bytes, 2 headers)",
            App::Headers => "nginx app, `GET /` (13 bytes, 11 headers)",
            App::Page => "nginx app, `GET /page.html` (4 KiB)",
        }
    }
    fn path(self) -> &'static str {
        match self {
            App::Page => "/page.html",
            _ => "/",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    Direct,
    NginxProxy,
    Edge,
    AllInOne,
    RatholeNoise,
}

impl Way {
    fn label(self) -> &'static str {
        match self {
            Way::Direct => "direct to the app",
            Way::NginxProxy => "nginx reverse proxy",
            Way::Edge => "DevInProd edge (`up`), production path",
            Way::AllInOne => "DevInProd, all-in-one (`up` + `connect`)",
            Way::RatholeNoise => "rathole, Noise transport",
        }
    }
}

/// One measured row: an app reached one way.
struct Row {
    app: App,
    way: Way,
    addr: SocketAddr,
    host: Option<String>,
    /// A part of the body that `GET` must answer with.
    expect: String,
    /// One series per load of [`LOADS`].
    series: Vec<Series<WrkResult>>,
}

impl Row {
    fn new(app: App, way: Way, addr: SocketAddr, host: Option<String>, expect: &str) -> Self {
        Self {
            app,
            way,
            addr,
            host,
            expect: expect.to_owned(),
            // `Series` is keyed by the HTTP section's kind; the row says which path it is.
            series: LOADS.iter().map(|_| Series::new(Kind::Direct)).collect(),
        }
    }

    fn check(&self) -> Result<(), String> {
        let host = self.host.clone().unwrap_or_else(|| self.addr.to_string());
        match super::proc::http_get(self.addr, &host, self.app.path(), Duration::from_secs(5))? {
            (200, body) if body.contains(&self.expect) => Ok(()),
            (status, body) => Err(format!(
                "GET {} answered HTTP {status}: {}",
                self.app.path(),
                super::proc::tail(&body, 2)
            )),
        }
    }
}

/// Everything this section started (stopped when dropped) and its rows.
pub struct RealApps {
    rows: Vec<Row>,
    /// Why a part could not start: reported as a failure.
    setup_errors: Vec<String>,
    _app: Option<Nginx>,
    _proxy: Option<Nginx>,
    _paths: Vec<Running>,
}

/// The 4 KiB page: printable, deterministic, with a marker the check looks for.
fn page() -> Vec<u8> {
    let mut page = b"<!doctype html><title>bench page</title><p>".to_vec();
    let mut x: u32 = 0x9e37_79b9;
    while page.len() < 4096 - 4 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        page.push(b'a' + (x % 26) as u8);
    }
    page.extend_from_slice(b"</p>");
    page
}

const PAGE_MARKER: &str = "<title>bench page</title>";

fn app_conf(port: u16, dir: &Path) -> String {
    format!(
        "server {{\n  listen 127.0.0.1:{port};\n  access_log off;\n  keepalive_requests 1000000;\n\
         location = / {{\n    default_type \"text/html; charset=utf-8\";\n\
         add_header Cache-Control \"private, no-cache\";\n\
         add_header Set-Cookie \"sessionid=3f2a9c1e; Path=/; HttpOnly; SameSite=Lax\";\n\
         add_header X-Frame-Options DENY;\n    add_header X-Content-Type-Options nosniff;\n\
         add_header Referrer-Policy same-origin;\n    add_header Vary Cookie;\n\
         return 200 \"Hello, world!\";\n  }}\n\
         location = /page.html {{ root {}; }}\n}}\n",
        dir.display()
    )
}

/// nginx as an operator runs it in front of an app: keep-alive to the upstream, the usual
/// forwarding headers, no access log (the edge writes none at `RUST_LOG=warn` either).
fn proxy_conf(listen: u16, upstream: SocketAddr, name: &str) -> String {
    format!(
        "upstream {name} {{ server {upstream}; keepalive 64; keepalive_requests 1000000; }}\n\
         server {{\n  listen 127.0.0.1:{listen};\n  access_log off;\n  keepalive_requests 1000000;\n\
         location / {{\n    proxy_pass http://{name};\n    proxy_http_version 1.1;\n\
         proxy_set_header Connection \"\";\n    proxy_set_header Host $host;\n\
         proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
         proxy_set_header X-Forwarded-Proto $scheme;\n  }}\n}}\n"
    )
}

/// Starts the nginx app, the nginx reverse proxy (to it and to the bench app), a second
/// `devinprod up` whose production and developer app are the nginx app, and rathole Noise to
/// it. `bench_edge` is the main all-in-one edge, whose production is the bench app.
pub fn start(env: &Env, bench_edge: Option<SocketAddr>) -> RealApps {
    let mut out = RealApps {
        rows: Vec::new(),
        setup_errors: Vec::new(),
        _app: None,
        _proxy: None,
        _paths: Vec::new(),
    };
    let page = page();
    let app_port = nginx::free_port();
    let app = Nginx::start_with(app_port, "1", &[("page.html", &page)], |dir| {
        app_conf(app_port, dir)
    });
    let app_addr = app.addr;
    let (proxy_bench, proxy_app) = (nginx::free_port(), nginx::free_port());
    let proxy = Nginx::start_with(proxy_app, "auto", &[], |_| {
        proxy_conf(proxy_bench, env.app, "bench_app")
            + &proxy_conf(proxy_app, app_addr, "nginx_app")
    });
    let proxy_bench: SocketAddr = ([127, 0, 0, 1], proxy_bench).into();
    let hello = "Hello, world!";

    // The bench app: direct, nginx, the main `up`'s edge.
    out.rows
        .push(Row::new(App::BenchApp, Way::Direct, env.app, None, hello));
    out.rows.push(Row::new(
        App::BenchApp,
        Way::NginxProxy,
        proxy_bench,
        Some(PRODUCTION_HOST.into()),
        hello,
    ));
    match bench_edge {
        Some(edge) => out.rows.push(Row::new(
            App::BenchApp,
            Way::Edge,
            edge,
            Some(PRODUCTION_HOST.into()),
            hello,
        )),
        None => out
            .setup_errors
            .push("the all-in-one path did not start: no edge to the bench app".into()),
    }

    // The nginx app, every way.
    let dir = env.work.join("real-apps");
    let _ = std::fs::create_dir_all(&dir);
    let app_env = Env {
        devinprod: env.devinprod.clone(),
        rathole: env.rathole.clone(),
        work: dir,
        app: app_addr,
    };
    let up = topo::all_in_one(&app_env)
        .map_err(|e| {
            out.setup_errors
                .push(format!("devinprod up to the nginx app: {e}"))
        })
        .ok();
    let noise = match &env.rathole {
        Some(_) => topo::rathole(&app_env, true)
            .map_err(|e| {
                out.setup_errors
                    .push(format!("rathole Noise to the nginx app: {e}"))
            })
            .ok(),
        None => None,
    };
    for (app, expect) in [(App::Headers, hello), (App::Page, PAGE_MARKER)] {
        out.rows
            .push(Row::new(app, Way::Direct, app_addr, None, expect));
        out.rows.push(Row::new(
            app,
            Way::NginxProxy,
            proxy.addr,
            Some(PRODUCTION_HOST.into()),
            expect,
        ));
        if let Some(up) = &up {
            let t = &up.target;
            out.rows.push(Row::new(
                app,
                Way::Edge,
                t.addr,
                Some(PRODUCTION_HOST.into()),
                expect,
            ));
            out.rows
                .push(Row::new(app, Way::AllInOne, t.addr, t.host.clone(), expect));
        }
        if let Some(noise) = &noise {
            out.rows.push(Row::new(
                app,
                Way::RatholeNoise,
                noise.target.addr,
                None,
                expect,
            ));
        }
    }
    out._paths.extend(up);
    out._paths.extend(noise);
    out._app = Some(app);
    out._proxy = Some(proxy);
    for row in &out.rows {
        if let Err(e) = row.check() {
            out.setup_errors
                .push(format!("{} via {}: {e}", row.app.label(), row.way.label()));
        }
    }
    out
}

impl RealApps {
    /// Rounds interleave the rows, as in the HTTP section.
    pub fn run(&mut self, wrk_bin: &Path, secs: u64, rounds: usize) {
        for round in 1..=rounds {
            for (li, (label, threads, conns)) in LOADS.iter().enumerate() {
                for row in &mut self.rows {
                    if !row.series[li].live() {
                        continue;
                    }
                    eprintln!(
                        "   real apps round {round}/{rounds}, {label}: {} via {}",
                        row.app.label(),
                        row.way.label()
                    );
                    let r = wrk::run_path(
                        wrk_bin,
                        row.addr,
                        row.host.as_deref(),
                        row.app.path(),
                        (*threads, *conns, secs),
                    )
                    .and_then(|w| row.check().map(|()| w));
                    if let Err(e) = &r {
                        eprintln!("     FAILED: {e}");
                    }
                    row.series[li].push(r);
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
    }

    /// What failed, for the report's verdict.
    pub fn failures(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .setup_errors
            .iter()
            .map(|e| format!("real apps setup: {e}"))
            .collect();
        for row in &self.rows {
            for (li, (label, _, _)) in LOADS.iter().enumerate() {
                if row.series[li].error.is_some() {
                    out.push(format!(
                        "real apps {label}, {} via {}",
                        row.app.label(),
                        row.way.label()
                    ));
                }
            }
        }
        out
    }

    fn find(&self, app: App, way: Way) -> Option<&Row> {
        self.rows.iter().find(|r| r.app == app && r.way == way)
    }

    /// The two markdown sections.
    pub fn section(&self, secs: u64) -> String {
        let mut out = String::from(
            "### Production path: the edge against nginx as a reverse proxy\n\n\
             Requests without a routing key (`Host: shop.example.com`), as every visitor of the site \
             sends them: direct to the app, through nginx as a reverse proxy (`worker_processes auto`, \
             upstream keep-alive, `proxy_set_header` Host, X-Forwarded-For and X-Forwarded-Proto, no \
             access log), and through the edge of `devinprod up --production APP` with its defaults. \
             The nginx app is Debian's nginx with one worker process answering `GET /` with 11 \
             headers and a 13-byte body, and `GET /page.html` with a 4 KiB page.\n\n",
        );
        if !self.setup_errors.is_empty() {
            out.push_str(&format!(
                "**Setup failed:** {}\n\n",
                self.setup_errors.join("; ")
            ));
        }
        let ways = [Way::Direct, Way::NginxProxy, Way::Edge];
        out.push_str(&self.table(
            &[App::BenchApp, App::Headers, App::Page],
            &ways,
            Way::NginxProxy,
            "vs nginx proxy",
            secs,
        ));
        out.push_str(
            "### Developer path with a real app\n\n\
             The same nginx app as the developer's local app: `devinprod up` + `devinprod connect \
             --http APP` (requests with `Host: www-<key>.example.com`) against rathole's Noise \
             transport to the same app.\n\n",
        );
        out.push_str(&self.table(
            &[App::Headers, App::Page],
            &[Way::Direct, Way::AllInOne, Way::RatholeNoise],
            Way::RatholeNoise,
            "vs rathole Noise",
            secs,
        ));
        out
    }

    fn table(&self, apps: &[App], ways: &[Way], reference: Way, vs: &str, secs: u64) -> String {
        let mut out = String::new();
        for (li, (label, threads, conns)) in LOADS.iter().enumerate() {
            out.push_str(&format!(
                "#### {label} (`wrk -t{threads} -c{conns} -d{secs}s`)\n\n"
            ));
            let mut rows = Vec::new();
            for &app in apps {
                let med = |way: Way, f: fn(&WrkResult) -> f64| {
                    self.find(app, way).and_then(|r| r.series[li].median(f))
                };
                for &way in ways {
                    let Some(row) = self.find(app, way) else {
                        continue;
                    };
                    let s = &row.series[li];
                    let mut cells = vec![app.label().to_owned(), way.label().to_owned()];
                    if let Some(blank) = s.blank() {
                        cells.push(blank);
                        cells.extend(std::iter::repeat_n(String::new(), 5));
                        rows.push(cells);
                        continue;
                    }
                    let (Some(rps), Some(p50), Some(p99)) = (
                        med(way, |w| w.rps),
                        med(way, |w| w.p50_us),
                        med(way, |w| w.p99_us),
                    ) else {
                        continue;
                    };
                    cells.push(s.with_spread(rps, |w| w.rps));
                    cells.push(stats::latency(p50));
                    cells.push(stats::latency(p99));
                    cells.push(if way == Way::Direct || way == reference {
                        "—".into()
                    } else {
                        med(reference, |w| w.rps).map_or("—".into(), |r| stats::ratio(rps, r))
                    });
                    cells.push(if way == Way::Direct {
                        "—".into()
                    } else {
                        med(Way::Direct, |w| w.p50_us)
                            .map_or("—".into(), |d| stats::added(p50 - d))
                    });
                    rows.push(cells);
                }
            }
            out.push_str(&stats::table(
                &[
                    "app",
                    "path",
                    "req/s (min–max)",
                    "p50",
                    "p99",
                    vs,
                    "added p50",
                ],
                &rows,
            ));
            out.push('\n');
        }
        out
    }
}
