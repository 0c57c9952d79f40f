//! One app connection's transaction, emulated on top of the session's single, never-committed
//! upstream transaction. Pure: it says which statements to send upstream; the session sends
//! them and keeps the *epoch*, a counter it advances on every write, RELEASE and ROLLBACK TO by
//! any connection.
//!
//! | the app sends | upstream receives |
//! | --- | --- |
//! | `BEGIN` | `SAVEPOINT <conn>_tx` (after `RELEASE` of the open one: BEGIN commits) |
//! | `COMMIT` | `RELEASE SAVEPOINT <conn>_tx`, or nothing when no transaction is open |
//! | `ROLLBACK` | `ROLLBACK TO SAVEPOINT <conn>_tx`, or nothing when none is open |
//! | `SAVEPOINT x` / `RELEASE SAVEPOINT x` / `ROLLBACK TO x` | the same on `<conn>_sp_x` |
//! | `SET autocommit=0` | nothing; the next statement opens a transaction, as on a server |
//! | `SET autocommit=1` | `RELEASE SAVEPOINT <conn>_tx` if one is open (it commits) |
//!
//! Savepoints are one linear stack in the upstream transaction, so interleaved connections
//! would undo each other's work. Two rules keep them apart: a transaction that has written
//! holds the session's write turn until it ends (the session makes other writers wait), and
//! a savepoint is trusted only if the epoch has not moved since it was placed — otherwise it is
//! placed again at the connection's first write, and a transaction that never wrote has
//! nothing to release or undo.

use crate::policy::TxControl;

#[derive(Debug, Clone)]
pub struct AppTransaction {
    prefix: String,
    autocommit: bool,
    /// A transaction is open, as the app sees it (status flag IN_TRANS).
    open: bool,
    /// This transaction has written (and so holds the write turn).
    wrote: bool,
    /// The epoch at which this connection's savepoint was placed (and after its own writes).
    mark: Option<u64>,
}

/// Statements to send, and whether they advance the session's epoch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub statements: Vec<String>,
    pub advances_epoch: bool,
    /// The statements move savepoints of an open transaction: the connection must hold the
    /// write turn (and keeps it until its transaction ends).
    pub takes_turn: bool,
    /// Answer this MySQL error instead (as a server would), sending nothing.
    pub error: Option<(u16, String)>,
}

impl AppTransaction {
    /// `conn_id` makes savepoint names unique per app connection within the session.
    pub fn new(conn_id: u32) -> Self {
        Self {
            prefix: format!("dip{conn_id}"),
            autocommit: true,
            open: false,
            wrote: false,
            mark: None,
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

    /// This connection's transaction has written: it holds the session's write turn.
    pub fn holds_write_turn(&self) -> bool {
        self.open && self.wrote
    }

    /// Whether this connection's savepoint still marks the start of its own work.
    fn savepoint_valid(&self, epoch: u64) -> bool {
        self.wrote || self.mark == Some(epoch)
    }

    fn close(&mut self) {
        self.open = false;
        self.wrote = false;
        self.mark = None;
    }

    /// The end of a transaction: RELEASE (commit) or ROLLBACK TO (rollback) when there is
    /// work of this connection to keep or undo.
    fn finish(&mut self, epoch: u64, rollback: bool) -> Plan {
        let plan = if self.open && self.mark.is_some() && self.savepoint_valid(epoch) {
            let sql = if rollback {
                format!("ROLLBACK TO SAVEPOINT {}", self.savepoint())
            } else {
                format!("RELEASE SAVEPOINT {}", self.savepoint())
            };
            Plan {
                statements: vec![sql],
                advances_epoch: true,
                ..Plan::default()
            }
        } else {
            Plan::default()
        };
        self.close();
        plan
    }

    /// Statements for a transaction-control statement (possibly none).
    pub fn control(&mut self, tx: &TxControl, epoch: u64) -> Plan {
        match tx {
            TxControl::Begin => {
                // BEGIN inside a transaction commits it first, as on a server.
                let mut plan = self.finish(epoch, false);
                let epoch = epoch + u64::from(plan.advances_epoch);
                plan.statements
                    .push(format!("SAVEPOINT {}", self.savepoint()));
                self.open = true;
                self.mark = Some(epoch);
                plan
            }
            TxControl::Commit => self.finish(epoch, false),
            TxControl::Rollback => self.finish(epoch, true),
            TxControl::Savepoint(name) => {
                if !self.autocommit {
                    self.open = true;
                }
                if !self.open {
                    // With autocommit on and no transaction, a server accepts and forgets it.
                    return Plan::default();
                }
                // User savepoints are placed while holding the write turn, after this
                // connection's own savepoint (placed again if another connection moved things).
                let mut statements: Vec<String> = self.before_write(epoch).into_iter().collect();
                statements.push(format!("SAVEPOINT {}", self.user_savepoint(name)));
                self.wrote = true;
                Plan {
                    statements,
                    takes_turn: true,
                    ..Plan::default()
                }
            }
            TxControl::Release(name) | TxControl::RollbackTo(name) if !self.open => Plan {
                error: Some((1305, format!("SAVEPOINT {name} does not exist"))),
                ..Plan::default()
            },
            TxControl::Release(name) => Plan {
                statements: vec![format!("RELEASE SAVEPOINT {}", self.user_savepoint(name))],
                advances_epoch: true,
                takes_turn: true,
                error: None,
            },
            TxControl::RollbackTo(name) => Plan {
                statements: vec![format!(
                    "ROLLBACK TO SAVEPOINT {}",
                    self.user_savepoint(name)
                )],
                advances_epoch: true,
                takes_turn: true,
                error: None,
            },
        }
    }

    /// Before a read: with autocommit off, a statement opens a transaction (as on a server).
    pub fn before_read(&mut self) {
        if !self.autocommit {
            self.open = true;
        }
    }

    /// Before a write (the caller holds the write turn): the savepoint to (re)place, if any.
    pub fn before_write(&mut self, epoch: u64) -> Option<String> {
        if !self.autocommit {
            self.open = true;
        }
        if self.open && !self.savepoint_valid(epoch) {
            self.mark = Some(epoch);
            return Some(format!("SAVEPOINT {}", self.savepoint()));
        }
        None
    }

    /// After a successful write, which advanced the epoch to `epoch`.
    pub fn after_write(&mut self, epoch: u64) {
        if self.open {
            self.wrote = true;
            self.mark = Some(epoch);
        }
    }

    /// `SET autocommit = on|off`: statements to send (turning it on commits an open transaction).
    pub fn set_autocommit(&mut self, on: bool, epoch: u64) -> Plan {
        let plan = if on && self.open {
            self.finish(epoch, false)
        } else {
            Plan::default()
        };
        self.autocommit = on;
        plan
    }

    /// The connection goes away or is reset: its work is rolled back, as a server does for a
    /// closed connection.
    pub fn end(&mut self, epoch: u64) -> Plan {
        let mut plan = Plan::default();
        if self.open && self.wrote {
            plan.statements = vec![
                format!("ROLLBACK TO SAVEPOINT {}", self.savepoint()),
                format!("RELEASE SAVEPOINT {}", self.savepoint()),
            ];
            plan.advances_epoch = true;
        }
        let _ = epoch;
        self.close();
        self.autocommit = true;
        plan
    }

    /// The upstream transaction was lost: nothing of this connection's is open any more.
    pub fn forget(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{classify, Verdict};

    /// A session with one epoch, as the session module keeps it.
    #[derive(Default)]
    struct Sim {
        epoch: u64,
    }

    impl Sim {
        fn send(&mut self, tx: &mut AppTransaction, sql: &str) -> Vec<String> {
            let plan = match classify(sql).verdict {
                Verdict::Tx(c) => tx.control(&c, self.epoch),
                Verdict::SetAutocommit(on) => tx.set_autocommit(on, self.epoch),
                Verdict::Forward(f) if f.writes => {
                    let mut out: Vec<String> = tx.before_write(self.epoch).into_iter().collect();
                    out.push(sql.to_owned());
                    self.epoch += 1;
                    tx.after_write(self.epoch);
                    return out;
                }
                Verdict::Forward(_) => {
                    tx.before_read();
                    return vec![sql.to_owned()];
                }
                other => panic!("{other:?}"),
            };
            self.epoch += u64::from(plan.advances_epoch);
            plan.statements
        }
    }

    /// The product brief's table, row by row.
    #[test]
    fn the_seed_example_rewrites_exactly_as_designed() {
        let (mut sim, mut tx) = (Sim::default(), AppTransaction::new(1));
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
            assert_eq!(sim.send(&mut tx, app), upstream, "app sent {app}");
        }
        assert!(!tx.in_transaction());
    }

    #[test]
    fn autocommit_off_opens_a_transaction_and_places_the_savepoint_at_the_first_write() {
        let (mut sim, mut tx) = (Sim::default(), AppTransaction::new(7));
        assert!(sim.send(&mut tx, "SET autocommit=0").is_empty());
        assert_eq!(sim.send(&mut tx, "SELECT 1"), ["SELECT 1"]);
        assert!(tx.in_transaction());
        assert_eq!(
            sim.send(&mut tx, "UPDATE t SET a=1"),
            ["SAVEPOINT dip7_tx", "UPDATE t SET a=1"]
        );
        assert_eq!(sim.send(&mut tx, "UPDATE t SET a=2"), ["UPDATE t SET a=2"]);
        assert_eq!(sim.send(&mut tx, "COMMIT"), ["RELEASE SAVEPOINT dip7_tx"]);
        assert_eq!(sim.send(&mut tx, "SELECT 2"), ["SELECT 2"]);
        assert_eq!(
            sim.send(&mut tx, "COMMIT"),
            Vec::<String>::new(),
            "a read-only transaction has nothing to release"
        );
        assert_eq!(
            sim.send(&mut tx, "DELETE FROM t"),
            ["SAVEPOINT dip7_tx", "DELETE FROM t"]
        );
        assert_eq!(
            sim.send(&mut tx, "SET autocommit=1"),
            ["RELEASE SAVEPOINT dip7_tx"]
        );
        assert_eq!(sim.send(&mut tx, "SELECT 2"), ["SELECT 2"]);
    }

    #[test]
    fn interleaved_connections_never_undo_each_others_writes() {
        let mut sim = Sim::default();
        let (mut a, mut b) = (AppTransaction::new(1), AppTransaction::new(2));
        sim.send(&mut b, "BEGIN"); // b's savepoint is placed early…
        sim.send(&mut a, "INSERT INTO t VALUES (1)"); // …then a writes (autocommit)
                                                      // b's first write re-places its savepoint after a's work.
        assert_eq!(
            sim.send(&mut b, "INSERT INTO t VALUES (2)"),
            ["SAVEPOINT dip2_tx", "INSERT INTO t VALUES (2)"]
        );
        assert_eq!(
            sim.send(&mut b, "ROLLBACK"),
            ["ROLLBACK TO SAVEPOINT dip2_tx"]
        );
        // A transaction that never wrote has nothing to undo, even if others wrote meanwhile.
        sim.send(&mut a, "BEGIN");
        sim.send(&mut b, "DELETE FROM t");
        assert!(sim.send(&mut a, "ROLLBACK").is_empty());
        assert!(!a.holds_write_turn() && !b.holds_write_turn());
    }

    #[test]
    fn begin_inside_a_transaction_commits_it_first_and_app_savepoints_are_namespaced() {
        let (mut sim, mut tx) = (Sim::default(), AppTransaction::new(2));
        sim.send(&mut tx, "BEGIN");
        assert_eq!(
            sim.send(&mut tx, "BEGIN"),
            ["RELEASE SAVEPOINT dip2_tx", "SAVEPOINT dip2_tx"]
        );
        assert_eq!(sim.send(&mut tx, "SAVEPOINT a"), ["SAVEPOINT `dip2_sp_a`"]);
        assert_eq!(
            sim.send(&mut tx, "ROLLBACK TO SAVEPOINT a"),
            ["ROLLBACK TO SAVEPOINT `dip2_sp_a`"]
        );
        assert_eq!(
            sim.send(&mut tx, "RELEASE SAVEPOINT a"),
            ["RELEASE SAVEPOINT `dip2_sp_a`"]
        );
        sim.send(&mut tx, "UPDATE t SET a = 1");
        assert!(tx.holds_write_turn());
        assert_eq!(
            tx.end(sim.epoch).statements,
            ["ROLLBACK TO SAVEPOINT dip2_tx", "RELEASE SAVEPOINT dip2_tx"]
        );
        assert!(tx.end(sim.epoch).statements.is_empty());
    }
}
