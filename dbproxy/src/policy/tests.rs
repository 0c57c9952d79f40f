use super::*;

fn verdict(sql: &str) -> Verdict {
    classify(sql).verdict
}

fn refused(sql: &str) -> String {
    match verdict(sql) {
        Verdict::Refuse(why) => why,
        other => panic!("{sql:?} should be refused, got {other:?}"),
    }
}

#[test]
fn reads_and_data_changes_are_forwarded_with_their_tables() {
    assert!(matches!(
        verdict("SELECT * FROM shop.orders WHERE id = 1"),
        Verdict::Forward(Forward { writes: false, .. })
    ));
    let c = classify("UPDATE orders o JOIN shop.items i ON i.o = o.id SET o.total = 1");
    match c.verdict {
        Verdict::Forward(f) => {
            assert!(f.writes);
            assert_eq!(
                c.reach.write_tables,
                vec![
                    TableName {
                        schema: None,
                        name: "orders".into()
                    },
                    TableName {
                        schema: Some("shop".into()),
                        name: "items".into()
                    }
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    for sql in [
        "INSERT INTO t(val) VALUES ('test')",
        "REPLACE INTO t VALUES (1)",
        "DELETE FROM t",
        "DELETE FROM `t` WHERE id IN (SELECT id FROM u)",
    ] {
        assert!(
            matches!(verdict(sql), Verdict::Forward(Forward { writes: true, .. })),
            "{sql}"
        );
    }
}

#[test]
fn the_seeds_transaction_statements_are_recognised() {
    assert_eq!(verdict("BEGIN"), Verdict::Tx(TxControl::Begin));
    assert_eq!(verdict("START TRANSACTION"), Verdict::Tx(TxControl::Begin));
    assert_eq!(
        verdict("start transaction read only"),
        Verdict::Tx(TxControl::Begin)
    );
    assert_eq!(verdict("COMMIT"), Verdict::Tx(TxControl::Commit));
    assert_eq!(verdict("commit work;"), Verdict::Tx(TxControl::Commit));
    assert_eq!(verdict("ROLLBACK"), Verdict::Tx(TxControl::Rollback));
    assert_eq!(
        verdict("SAVEPOINT a1"),
        Verdict::Tx(TxControl::Savepoint("a1".into()))
    );
    assert_eq!(
        verdict("RELEASE SAVEPOINT a1"),
        Verdict::Tx(TxControl::Release("a1".into()))
    );
    assert_eq!(
        verdict("ROLLBACK TO SAVEPOINT a1"),
        Verdict::Tx(TxControl::RollbackTo("a1".into()))
    );
    assert_eq!(
        verdict("ROLLBACK TO a1"),
        Verdict::Tx(TxControl::RollbackTo("a1".into()))
    );
    assert_eq!(verdict("SET autocommit=0"), Verdict::SetAutocommit(false));
    assert_eq!(
        verdict("set @@autocommit = ON"),
        Verdict::SetAutocommit(true)
    );
    assert_eq!(
        verdict("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"),
        Verdict::SessionIsolation("READ-COMMITTED".into())
    );
    assert_eq!(
        verdict("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
        Verdict::Swallow
    );
}

#[test]
fn every_escape_hatch_is_refused_with_a_reason() {
    let cases = [
        ("CREATE TABLE t (id int)", "implicitly"),
        ("DROP TABLE t", "implicitly"),
        ("ALTER TABLE t ADD COLUMN x int", "allowed"),
        ("TRUNCATE TABLE t", "implicitly"),
        ("RENAME TABLE a TO b", "allowed"),
        ("CREATE INDEX i ON t(x)", "allowed"),
        ("GRANT ALL ON *.* TO x", "account"),
        ("CREATE USER x", "allowed"),
        ("LOCK TABLES t WRITE", "blocks production"),
        ("UNLOCK TABLES", "not allowed"),
        ("CALL p()", "procedures"),
        ("PREPARE s FROM 'DROP TABLE t'", "classified"),
        ("EXECUTE s", "not visible"),
        ("XA START 'x'", "classified"),
        (
            "LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE t",
            "classified",
        ),
        ("SELECT * FROM t INTO OUTFILE '/tmp/x'", "classified"),
        ("SELECT a INTO @v FROM t", "outside the transaction"),
        ("SELECT GET_LOCK('a', 10)", "named locks"),
        (
            "SELECT * FROM t WHERE x = (SELECT RELEASE_LOCK('a'))",
            "named locks",
        ),
        ("SELECT LOAD_FILE('/etc/passwd')", "files"),
        ("SET @x = GET_LOCK('a', 1)", "named locks"),
        ("HANDLER t OPEN", "classified"),
        ("DO SLEEP(1)", "classified"),
        ("SET GLOBAL max_connections = 1", "server-wide"),
        ("SET @@global.sql_mode = ''", "server-wide"),
        ("SET GLOBAL a = 1, b = 2", "server-wide"),
        ("SET sql_log_bin = 0", "only session variables"),
        ("SET completion_type = 1", "only session variables"),
        ("SET wait_timeout = 1", "only session variables"),
        ("SET session_track_schema = 1", "only session variables"),
        ("SELECT 1; DROP TABLE t", "one statement"),
        ("/*!50000 DROP TABLE t */", "executable"),
        ("/*M!100100 DROP TABLE t */ SELECT 1", "executable"),
        ("SELECT 1 /*!99999 + 1 */", "executable"),
        ("KILL 12", "other connections"),
        ("FLUSH TABLES", "allowed"),
        ("SHUTDOWN", "classified"),
        ("OPTIMIZE TABLE t", "classified"),
        ("COMMIT AND CHAIN", "chained"),
        ("EXPLAIN ANALYZE DROP TABLE t", "implicitly"),
        ("", "nothing"),
    ];
    for (sql, why) in cases {
        let reason = refused(sql);
        assert!(reason.starts_with("DevInProd refused "), "{sql}: {reason}");
        assert!(reason.contains(why), "{sql}: {reason}");
    }
}

#[test]
fn safe_session_sets_are_remembered_by_variable() {
    let set =
        |vars: &[&str], autocommit: Option<bool>, upstream: Option<&str>| Verdict::SessionSet {
            vars: vars.iter().map(|v| v.to_string()).collect(),
            autocommit,
            upstream_sql: upstream.map(str::to_owned),
            read_back_sql_mode: vars.contains(&"sql_mode"),
        };
    assert_eq!(verdict("SET NAMES utf8mb4"), set(&["names"], None, None));
    assert_eq!(
        verdict("SET sql_mode = 'STRICT_ALL_TABLES', @@time_zone = '+00:00', @a = 1"),
        set(&["sql_mode", "time_zone"], None, None)
    );
    assert_eq!(
        verdict("SET SESSION sql_mode = ''"),
        set(&["sql_mode"], None, None)
    );
    assert_eq!(verdict("SET @user_var = (SELECT 1)"), set(&[], None, None));
    // MariaDB Connector/J 2.7's first statement: autocommit emulated, the rest forwarded.
    assert_eq!(
        verdict("set autocommit=1, sql_mode = concat(@@sql_mode,',STRICT_TRANS_TABLES')"),
        set(
            &["sql_mode"],
            Some(true),
            Some("SET sql_mode = concat(@@sql_mode,',STRICT_TRANS_TABLES')")
        )
    );
    // DBD::MariaDB sets the session's default character set for new tables at every connect.
    assert_eq!(
        verdict("SET character_set_server = 'utf8mb4'"),
        set(&["character_set_server"], None, None)
    );
    for refused in [
        "SET sql_mode = concat(@@sql_mode, ',ANSI_QUOTES')",
        "SET sql_mode = concat(@@global.sql_mode, ',STRICT_TRANS_TABLES')",
        "SET sql_mode = concat('ANSI', @@sql_mode)",
        "SET autocommit = 1, sql_mode = 'ANSI'",
        "SET autocommit = 1, sql_log_bin = 0",
        "SET character_set_server = 'sjis'",
    ] {
        assert!(matches!(verdict(refused), Verdict::Refuse(_)), "{refused}");
    }
}

#[test]
fn an_app_connections_own_transaction_state_is_answered_by_the_proxy() {
    use crate::policy::SessionVariable::*;
    assert_eq!(
        verdict("SELECT @@autocommit"),
        Verdict::SessionView(vec![("@@autocommit".into(), Autocommit)])
    );
    assert_eq!(
        verdict("SELECT @@session.tx_isolation AS iso, @@in_transaction"),
        Verdict::SessionView(vec![
            ("iso".into(), Isolation),
            ("@@in_transaction".into(), InTransaction)
        ])
    );
    // Mixed with anything else, or from a table: the server answers.
    assert!(matches!(
        verdict("SELECT @@autocommit, @@max_allowed_packet"),
        Verdict::Forward(_)
    ));
    assert_eq!(
        verdict("SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
        Verdict::SessionIsolation("SERIALIZABLE".into())
    );
}

#[test]
fn temporary_tables_use_show_and_explain_are_allowed() {
    assert_eq!(
        verdict("CREATE TEMPORARY TABLE tmp_x (id int)"),
        Verdict::CreateTemporary(TableName {
            schema: None,
            name: "tmp_x".into()
        })
    );
    assert!(matches!(
        verdict("DROP TEMPORARY TABLE IF EXISTS tmp_x"),
        Verdict::DropTemporary(_)
    ));
    assert_eq!(verdict("USE shop"), Verdict::Use("shop".into()));
    assert_eq!(verdict("use `shop`"), Verdict::Use("shop".into()));
    for sql in [
        "SHOW TABLES",
        "SHOW VARIABLES LIKE 'x'",
        "SHOW CREATE TABLE t",
        "DESCRIBE t",
        "EXPLAIN SELECT * FROM t",
        "SHOW WARNINGS",
    ] {
        assert!(
            matches!(
                verdict(sql),
                Verdict::Forward(Forward { writes: false, .. })
            ),
            "{sql}: {:?}",
            verdict(sql)
        );
    }
    assert!(matches!(
        verdict("EXPLAIN ANALYZE DELETE FROM t"),
        Verdict::Forward(Forward { writes: true, .. })
    ));
}

#[test]
fn settings_that_would_make_the_server_lex_differently_are_refused() {
    for (sql, why) in [
        (
            "SET sql_mode='NO_BACKSLASH_ESCAPES'",
            "NO_BACKSLASH_ESCAPES",
        ),
        (
            "SET sql_mode = 'STRICT_ALL_TABLES,ansi_quotes'",
            "ANSI_QUOTES",
        ),
        ("SET SESSION sql_mode = 'ANSI'", "ANSI"),
        (
            "SET sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')",
            "NO_BACKSLASH_ESCAPES",
        ),
        ("SET NAMES gbk", "character sets"),
        ("SET NAMES 'big5'", "character sets"),
        ("SET character_set_client = sjis", "character sets"),
        (
            "SET collation_connection = 'cp932_japanese_ci'",
            "character sets",
        ),
        ("SET character_set_results = utf16", "character sets"),
        ("SET sql_select_limit = 0", "only session variables"),
        ("SET max_join_size = 1", "only session variables"),
        ("SHOW ENGINE INNODB STATUS", "internals"),
        ("SHOW BINLOG EVENTS", "internals"),
        ("SELECT 1 UNION SELECT 1 INTO @y", "writes outside"),
        (
            "WITH x AS (SELECT 1) SELECT * FROM x UNION (SELECT 2 INTO @z)",
            "writes outside",
        ),
    ] {
        let reason = refused(sql);
        assert!(reason.contains(why), "{sql}: {reason}");
    }
    for sql in [
        "SET sql_mode = 'STRICT_TRANS_TABLES,NO_ZERO_DATE'",
        "SET sql_mode = DEFAULT",
        "SET NAMES utf8mb4",
        "SET NAMES latin1 COLLATE latin1_swedish_ci",
        "SET character_set_results = NULL",
        "SHOW WARNINGS",
        "SHOW INDEX FROM t",
        "WITH x AS (SELECT 1) SELECT * FROM x",
    ] {
        assert!(
            !matches!(verdict(sql), Verdict::Refuse(_)),
            "{sql}: {:?}",
            verdict(sql)
        );
    }
}
