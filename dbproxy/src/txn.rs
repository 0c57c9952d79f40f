//! One app connection's transaction, emulated on top of the session's single, never-committed
//! upstream transaction. Pure: it says which statements to send upstream; the caller sends them.
//!
//! | the app sends | upstream receives |
//! | --- | --- |
//! | `BEGIN` | `SAVEPOINT <conn>_tx` (after `RELEASE` of the open one: BEGIN commits) |
//! | `COMMIT` | `RELEASE SAVEPOINT <conn>_tx`, or nothing when no transaction is open |
//! | `ROLLBACK` | `ROLLBACK TO SAVEPOINT <conn>_tx`, or nothing when none is open |
//! | `SAVEPOINT x` / `RELEASE SAVEPOINT x` / `ROLLBACK TO x` | the same on `<conn>_sp_x` |
//! | `SET autocommit=0` | nothing; the next statement opens a transaction, as on a server |
//! | `SET autocommit=1` | `RELEASE SAVEPOINT <conn>_tx` if one is open (it commits) |

use crate::policy::TxControl;

#[derive(Debug, Clone)]
pub struct AppTransaction {
    prefix: String,
    autocommit: bool,
    open: bool,
}

impl AppTransaction {
    /// `conn_id` makes savepoint names unique per app connection within the session.
    pub fn new(conn_id: u32) -> Self {
        Self {
            prefix: format!("dip{conn_id}"),
            autocommit: true,
            open: false,
        }
    }

    pub fn savepoint(&self) -> String {
        format!("{}_tx", self.prefix)
    }

    fn user_savepoint(&self, name: &str) -> String {
        // Backquoted, so any name the app used stays one identifier.
        format!("`{}_sp_{}`", self.prefix, name.replace('`', "``"))
    }

    /// What a real server would report in SERVER_STATUS_IN_TRANS for this connection.
    pub fn in_transaction(&self) -> bool {
        self.open
    }

    pub fn autocommit(&self) -> bool {
        self.autocommit
    }

    /// Statements to send for a transaction-control statement (possibly none).
    pub fn control(&mut self, tx: &TxControl) -> Vec<String> {
        match tx {
            TxControl::Begin => {
                let mut out = Vec::new();
                if self.open {
                    out.push(format!("RELEASE SAVEPOINT {}", self.savepoint()));
                }
                out.push(format!("SAVEPOINT {}", self.savepoint()));
                self.open = true;
                out
            }
            TxControl::Commit => {
                if !self.open {
                    return Vec::new();
                }
                self.open = false;
                vec![format!("RELEASE SAVEPOINT {}", self.savepoint())]
            }
            TxControl::Rollback => {
                if !self.open {
                    return Vec::new();
                }
                self.open = false;
                vec![format!("ROLLBACK TO SAVEPOINT {}", self.savepoint())]
            }
            TxControl::Savepoint(name) => {
                let mut out = self.before_statement().into_iter().collect::<Vec<_>>();
                out.push(format!("SAVEPOINT {}", self.user_savepoint(name)));
                out
            }
            TxControl::Release(name) => {
                vec![format!("RELEASE SAVEPOINT {}", self.user_savepoint(name))]
            }
            TxControl::RollbackTo(name) => vec![format!(
                "ROLLBACK TO SAVEPOINT {}",
                self.user_savepoint(name)
            )],
        }
    }

    /// Before any other statement: with autocommit off and no transaction open, the statement
    /// opens one (as on a real server), so its work can be rolled back by the app.
    pub fn before_statement(&mut self) -> Option<String> {
        if !self.autocommit && !self.open {
            self.open = true;
            return Some(format!("SAVEPOINT {}", self.savepoint()));
        }
        None
    }

    /// `SET autocommit = on`: statements to send (turning it on commits an open transaction).
    pub fn set_autocommit(&mut self, on: bool) -> Vec<String> {
        let mut out = Vec::new();
        if on && self.open {
            out.push(format!("RELEASE SAVEPOINT {}", self.savepoint()));
            self.open = false;
        }
        self.autocommit = on;
        out
    }

    /// The connection goes away or is reset: its open transaction is rolled back, as a server
    /// does for a closed connection.
    pub fn end(&mut self) -> Vec<String> {
        let out = if self.open {
            vec![
                format!("ROLLBACK TO SAVEPOINT {}", self.savepoint()),
                format!("RELEASE SAVEPOINT {}", self.savepoint()),
            ]
        } else {
            Vec::new()
        };
        self.open = false;
        self.autocommit = true;
        out
    }

    /// The upstream transaction was lost: nothing of this connection's is open any more.
    pub fn forget(&mut self) {
        self.open = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{classify, Verdict};

    fn send(tx: &mut AppTransaction, sql: &str) -> Vec<String> {
        match classify(sql).verdict {
            Verdict::Tx(c) => tx.control(&c),
            Verdict::SetAutocommit(on) => tx.set_autocommit(on),
            Verdict::Forward(_) => {
                let mut out: Vec<String> = tx.before_statement().into_iter().collect();
                out.push(sql.to_owned());
                out
            }
            other => panic!("{other:?}"),
        }
    }

    /// The product brief's table, row by row.
    #[test]
    fn the_seed_example_rewrites_exactly_as_designed() {
        let mut tx = AppTransaction::new(1);
        let rows: [(&str, &[&str]); 8] = [
            ("BEGIN", &["SAVEPOINT dip1_tx"]),
            (
                "INSERT INTO t(val) VALUES ('test')",
                &["INSERT INTO t(val) VALUES ('test')"],
            ),
            ("COMMIT", &["RELEASE SAVEPOINT dip1_tx"]),
            ("BEGIN", &["SAVEPOINT dip1_tx"]),
            (
                "UPDATE t SET val='new val'",
                &["UPDATE t SET val='new val'"],
            ),
            ("ROLLBACK", &["ROLLBACK TO SAVEPOINT dip1_tx"]),
            ("DELETE FROM t", &["DELETE FROM t"]),
            ("COMMIT", &[]),
        ];
        for (app, upstream) in rows {
            assert_eq!(send(&mut tx, app), upstream, "app sent {app}");
        }
        assert!(!tx.in_transaction());
    }

    #[test]
    fn autocommit_off_opens_a_transaction_at_the_first_statement_and_on_commits_it() {
        let mut tx = AppTransaction::new(7);
        assert!(send(&mut tx, "SET autocommit=0").is_empty());
        assert!(!tx.in_transaction());
        assert_eq!(send(&mut tx, "SELECT 1"), ["SAVEPOINT dip7_tx", "SELECT 1"]);
        assert!(tx.in_transaction());
        assert_eq!(send(&mut tx, "UPDATE t SET a=1"), ["UPDATE t SET a=1"]);
        assert_eq!(send(&mut tx, "COMMIT"), ["RELEASE SAVEPOINT dip7_tx"]);
        assert_eq!(
            send(&mut tx, "DELETE FROM t"),
            ["SAVEPOINT dip7_tx", "DELETE FROM t"]
        );
        assert_eq!(
            send(&mut tx, "SET autocommit=1"),
            ["RELEASE SAVEPOINT dip7_tx"]
        );
        assert_eq!(send(&mut tx, "SELECT 2"), ["SELECT 2"]);
    }

    #[test]
    fn begin_inside_a_transaction_commits_it_first_and_app_savepoints_are_namespaced() {
        let mut tx = AppTransaction::new(2);
        send(&mut tx, "BEGIN");
        assert_eq!(
            send(&mut tx, "BEGIN"),
            ["RELEASE SAVEPOINT dip2_tx", "SAVEPOINT dip2_tx"]
        );
        assert_eq!(send(&mut tx, "SAVEPOINT a"), ["SAVEPOINT `dip2_sp_a`"]);
        assert_eq!(
            send(&mut tx, "ROLLBACK TO SAVEPOINT a"),
            ["ROLLBACK TO SAVEPOINT `dip2_sp_a`"]
        );
        assert_eq!(
            send(&mut tx, "RELEASE SAVEPOINT a"),
            ["RELEASE SAVEPOINT `dip2_sp_a`"]
        );
        assert_eq!(
            tx.end(),
            ["ROLLBACK TO SAVEPOINT dip2_tx", "RELEASE SAVEPOINT dip2_tx"]
        );
        assert!(tx.end().is_empty());
    }
}
