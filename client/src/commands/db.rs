//! `devinprod db status|reset`: asks the developer's own database session, through the MySQL
//! listener of their running `devinprod connect --mysql-listen` (so it needs no credentials and
//! can only ever reach that developer's session).

use anyhow::{bail, Context};
use dbproxy::upstream::{Upstream, UpstreamUrl};

async fn session_command(
    mysql: &str,
    command: &str,
) -> anyhow::Result<dbproxy::upstream::Collected> {
    let (host, port) = mysql
        .rsplit_once(':')
        .and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h.to_owned(), p)))
        .with_context(|| format!("--mysql {mysql:?} must be HOST:PORT"))?;
    let url = UpstreamUrl {
        user: "devinprod".into(),
        password: String::new(),
        host,
        port,
    };
    let mut conn = Upstream::connect(&url, 1 << 20).await.with_context(|| {
        format!("cannot reach your database session at {mysql}: is `devinprod connect --mysql-listen {mysql}` running?")
    })?;
    let reply = conn
        .run(command)
        .await
        .context("the database session did not answer")?;
    conn.close().await;
    match reply {
        Ok(c) => Ok(c),
        Err((code, message)) => bail!("{command} failed: {code} {message}"),
    }
}

pub async fn status(mysql: &str) -> anyhow::Result<i32> {
    let reply = session_command(mysql, "DEVINPROD STATUS").await?;
    let Some(row) = reply.rows().into_iter().next() else {
        bail!("the session sent no status")
    };
    // What the session sent, escaped: it is a peer's text on the developer's terminal.
    let field = |i: usize| {
        let text = row.get(i).cloned().flatten().unwrap_or_default();
        proto::printable(&text).into_owned()
    };
    println!("routing key       {}", field(0));
    println!("age               {} s", field(1));
    println!("statements run    {}", field(2));
    println!("holds writes      {}", field(3));
    println!("app connections   {} (this command included)", field(4));
    Ok(0)
}

pub async fn reset(mysql: &str) -> anyhow::Result<i32> {
    session_command(mysql, "DEVINPROD RESET").await?;
    println!("Your database session was reset: everything it wrote is rolled back. Your app's connections are told on their next statement.");
    Ok(0)
}
