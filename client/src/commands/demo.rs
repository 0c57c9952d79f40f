//! `devinprod demo`: everything on one machine — `up`, a sample production app, a sample
//! developer app, and a real client connected over QUIC — then the two curl lines that show
//! production and the developer's copy answering the same URL.

use super::servers::start_stack;
use crate::agent::{Agent, AgentConfig, AgentEvent};
use crate::cli::DemoArgs;
use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use relay::TokenStore;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

const PRODUCTION_GREETING: &str = "Hello from production";
const DEVELOPER_GREETING: &str = "Hello from the developer's laptop: your change is live";

/// A tiny HTTP app answering `greeting` and the path it was asked for.
async fn sample_app(greeting: &'static str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("sample app")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let body = format!("{greeting} (you asked for {})\n", req.uri());
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn get(edge: SocketAddr, host: &str) -> anyhow::Result<(u16, String)> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::get(format!("http://{edge}/demo"))
        .header(http::header::HOST, host)
        .body(Empty::new())?;
    let resp = client.request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).trim().to_owned()))
}

pub async fn run(args: DemoArgs) -> anyhow::Result<i32> {
    let production = sample_app(PRODUCTION_GREETING).await?;
    let developer = sample_app(DEVELOPER_GREETING).await?;
    let mut up = args.up.clone();
    up.production = Some(
        up.production
            .unwrap_or_else(|| format!("http://{production}")),
    );
    // The demo's token lives in memory: nothing is added to the token store on disk.
    let stack = start_stack(&up, Some(TokenStore::in_memory())).await?;
    let (token, record) = stack
        .relay
        .tokens()
        .create("demo")
        .context("cannot issue the demo token")?;
    let key = record.routing_key.to_string();

    let mut config = AgentConfig::new(stack.relay_addr.to_string(), token, developer.to_string());
    config.ca = Some(stack.dir.join("ca.pem"));
    config.client_name = "demo client".into();
    let (connected_tx, connected_rx) = tokio::sync::oneshot::channel::<()>();
    let connected_tx = Mutex::new(Some(connected_tx));
    let events = Arc::new(move |e: AgentEvent| match e {
        AgentEvent::Connected { .. } => {
            if let Some(tx) = connected_tx
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                let _ = tx.send(());
            }
        }
        AgentEvent::Disconnected { reason, .. } => {
            eprintln!("[client] relay unreachable: {}", proto::printable(&reason))
        }
        AgentEvent::Request(r) => eprintln!("[client] {r}"),
    });
    let agent = Agent::new(config, events).context("cannot start the demo client")?;
    let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(async move {
        agent
            .run(async {
                let _ = agent_stopped.await;
            })
            .await
    });
    if tokio::time::timeout(Duration::from_secs(10), connected_rx)
        .await
        .is_err()
    {
        bail!("the demo client did not connect to the relay within 10 s");
    }

    let edge = stack.edge_addr;
    println!(
        "DevInProd demo is running (state in {}).",
        stack.dir.display()
    );
    println!("  production app:      http://{production}");
    println!("  developer's app:     http://{developer}   (connected as routing key {key})");
    println!();
    println!("Same edge, same path; the host decides who answers:");
    println!("  # production:");
    println!("  curl http://{edge}/");
    println!("  # the developer's copy (by Host header, or by name: *.localhost resolves to this machine):");
    println!("  curl -H 'Host: www-{key}.example.com' http://{edge}/");
    println!("  curl http://www-{key}.localhost:{}/", edge.port());

    let code = if args.check {
        let prod = get(edge, "www.example.com")
            .await
            .context("request to production through the edge")?;
        let dev = get(edge, &format!("www-{key}.example.com"))
            .await
            .context("request to the developer through the edge")?;
        println!();
        println!("production      → {} {}", prod.0, prod.1);
        println!("developer copy  → {} {}", dev.0, dev.1);
        let ok = prod.0 == 200
            && prod.1.starts_with(PRODUCTION_GREETING)
            && dev.0 == 200
            && dev.1.starts_with(DEVELOPER_GREETING);
        println!(
            "{}",
            if ok {
                "demo check: OK"
            } else {
                "demo check: FAILED"
            }
        );
        if ok {
            0
        } else {
            1
        }
    } else {
        println!();
        println!("Ctrl-C to stop.");
        super::shutdown_signal().await;
        0
    };
    let _ = stop_agent.send(());
    let _ = agent_task.await;
    stack.running.shutdown().await;
    Ok(code)
}
