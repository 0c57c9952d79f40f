//! `devinprod token create|list|revoke`: a thin client of the relay's admin API.

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use proto::printable;
use serde_json::Value;

async fn call(method: http::Method, url: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .with_context(|| format!("bad admin URL {url:?}"))?;
    let resp = client.request(req).await.with_context(|| {
        format!(
            "cannot reach the relay's admin API at {url} (is the relay running? is --admin right?)"
        )
    })?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .context("admin API response cut")?
        .to_bytes();
    let json: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("admin API answered {status} with something that is not JSON"))?;
    if !status.is_success() {
        let msg = json
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no reason given");
        bail!("admin API refused ({status}): {msg}"); // escaped where main prints errors
    }
    Ok(json)
}

fn endpoint(admin: &str, path: &str) -> String {
    format!("{}{path}", admin.trim_end_matches('/'))
}

pub async fn create(admin: &str, name: Option<String>) -> anyhow::Result<i32> {
    let body = serde_json::json!({ "name": name.unwrap_or_default() });
    let json = call(
        http::Method::POST,
        &endpoint(admin, "/api/createToken"),
        Some(body),
    )
    .await?;
    let token = json
        .get("token")
        .and_then(Value::as_str)
        .context("admin API answer has no token")?;
    // The token alone on stdout, so `TOKEN=$(devinprod token create)` works. Whatever the
    // admin API answered is escaped before it reaches the terminal (proto::printable).
    println!("{}", printable(token));
    if let Some(urls) = json.get("public_urls").and_then(Value::as_array) {
        for u in urls.iter().filter_map(Value::as_str) {
            eprintln!("preview URL: {}", printable(u));
        }
    }
    Ok(0)
}

pub async fn list(admin: &str) -> anyhow::Result<i32> {
    let json = call(http::Method::GET, &endpoint(admin, "/api/tokens"), None).await?;
    let rows = json.as_array().context("admin API answer is not a list")?;
    println!(
        "{:<8} {:<20} {:<9} {:<10} CLIENT",
        "KEY", "NAME", "STATE", "CONNECTED"
    );
    for r in rows {
        // Names are chosen by whoever asked for the token and by the developer's client:
        // escaped, so they cannot clear the terminal or forge rows.
        let s = |k: &str| printable(r.get(k).and_then(Value::as_str).unwrap_or("")).into_owned();
        let state = if r.get("revoked_at").is_some_and(|v| !v.is_null()) {
            "revoked"
        } else {
            "active"
        };
        let connected = r.get("connected").and_then(Value::as_bool).unwrap_or(false);
        println!(
            "{:<8} {:<20} {:<9} {:<10} {}",
            s("routing_key"),
            s("name"),
            state,
            if connected { "yes" } else { "no" },
            s("client_name")
        );
    }
    Ok(0)
}

pub async fn revoke(admin: &str, key: &str) -> anyhow::Result<i32> {
    let key = proto::RoutingKey::parse(key).context("the argument must be a routing key")?;
    let json = call(
        http::Method::POST,
        &endpoint(admin, &format!("/api/tokens/{key}/revoke")),
        None,
    )
    .await?;
    let disconnected = json
        .get("disconnected")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    println!(
        "revoked {key}{}",
        if disconnected {
            " (its live connection was closed)"
        } else {
            ""
        }
    );
    Ok(0)
}
