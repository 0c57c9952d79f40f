//! The start-up check of the dbproxy's own database user: sessions need DML and CREATE
//! TEMPORARY TABLES on the app's schemas (and PROCESS for the lock watchdog); anything more is
//! power that a policy bug could hand to a developer. The dbproxy warns; it does not refuse
//! to start (the operator decides).

use crate::config::DbProxyConfig;
use crate::upstream::Upstream;

/// Global privileges that reach beyond data: the server, files, accounts, replication.
const SERVER_PRIVILEGES: &[&str] = &[
    "SUPER",
    "FILE",
    "SHUTDOWN",
    "RELOAD",
    "CREATE USER",
    "REPLICATION",
    "BINLOG",
    "CONNECTION ADMIN",
    "READ_ONLY ADMIN",
    "SYSTEM_VARIABLES_ADMIN",
];

/// Privileges that change schemas (they commit implicitly).
const DDL_PRIVILEGES: &[&str] = &[
    "CREATE,",
    "DROP",
    "ALTER",
    "INDEX",
    "TRIGGER",
    "EVENT",
    "CREATE ROUTINE",
    "ALTER ROUTINE",
    "CREATE VIEW",
];

/// Warnings about what the `SHOW GRANTS` lines give beyond what sessions need.
pub fn assess(grants: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for line in grants {
        let upper = line.to_ascii_uppercase();
        let Some(privs) = upper
            .strip_prefix("GRANT ")
            .and_then(|r| r.split(" ON ").next())
        else {
            continue;
        };
        let on = upper
            .split(" ON ")
            .nth(1)
            .and_then(|r| r.split(" TO ").next())
            .unwrap_or("")
            .trim()
            .to_owned();
        let global = on == "*.*";
        if privs.contains("ALL PRIVILEGES") {
            out.push(format!(
                "the dbproxy's database user holds ALL PRIVILEGES ON {on}"
            ));
        } else {
            let privs_list = format!("{privs},");
            for p in SERVER_PRIVILEGES {
                if global && privs.contains(p) {
                    out.push(format!(
                        "the dbproxy's database user holds {p} (server-wide)"
                    ));
                }
            }
            for p in DDL_PRIVILEGES {
                if global && privs_list.contains(p) {
                    out.push(format!(
                        "the dbproxy's database user holds {} on all databases",
                        p.trim_end_matches(',')
                    ));
                }
            }
        }
        if upper.contains("WITH GRANT OPTION") {
            out.push(format!(
                "the dbproxy's database user holds GRANT OPTION on {on}"
            ));
        }
    }
    out
}

/// Connects as the dbproxy and assesses its grants.
pub async fn check(config: &DbProxyConfig) -> Result<Vec<String>, String> {
    let mut up = Upstream::connect(&config.upstream, config.max_packet_bytes)
        .await
        .map_err(|e| e.to_string())?;
    let grants = match up.run("SHOW GRANTS").await.map_err(|e| e.to_string())? {
        Ok(c) => c
            .rows()
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect::<Vec<_>>(),
        Err((code, msg)) => return Err(format!("SHOW GRANTS failed: {code} {msg}")),
    };
    up.close().await;
    Ok(assess(&grants))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_like_users_get_every_warning_and_a_minimal_user_none() {
        let root =
            assess(&["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION".into()]);
        assert_eq!(
            root,
            [
                "the dbproxy's database user holds ALL PRIVILEGES ON *.*",
                "the dbproxy's database user holds GRANT OPTION on *.*"
            ]
        );
        let minimal = assess(&[
            "GRANT PROCESS ON *.* TO `dbproxy`@`%`".into(),
            "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE TEMPORARY TABLES ON `shop`.* TO `dbproxy`@`%`".into(),
        ]);
        assert!(minimal.is_empty(), "{minimal:?}");
        let ddl = assess(&["GRANT SELECT, CREATE, DROP, FILE ON *.* TO `x`@`%`".into()]);
        assert_eq!(ddl.len(), 3, "{ddl:?}");
    }
}
