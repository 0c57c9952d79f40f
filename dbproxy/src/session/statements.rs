//! The statement pipeline of a [`Session`]: each command of an app connection (text query,
//! prepare, execute, change of database) is classified by the policy, admitted by the rate
//! limits and the masking analysis, then answered by the proxy itself (emulated transaction
//! control, session views) or forwarded on the session's upstream with the write turn and the
//! savepoint rules ([`crate::txn`]), its response relayed (and masked) back.

use super::*;

impl Session {
    /// Serves one COM_QUERY, and audits it.
    pub async fn query<W: AsyncWrite + Unpin>(
        &self,
        conn: &mut AppConn,
        sql: &str,
        payload: &[u8],
        app: &mut PacketWriter<W>,
    ) -> Outcome {
        let started = Instant::now();
        conn.report = StatementReport::default();
        let outcome = self.query_inner(conn, sql, payload, app).await;
        self.audit(conn, "query", sql, started);
        outcome
    }

    pub(super) async fn query_inner<W: AsyncWrite + Unpin>(
        &self,
        conn: &mut AppConn,
        sql: &str,
        payload: &[u8],
        app: &mut PacketWriter<W>,
    ) -> Outcome {
        self.touch();
        let classified = classify(sql);
        if let Verdict::Refuse(why) = &classified.verdict {
            info!(key = %self.key, conn = conn.id, kind = %classified.kind, "refused: {}", printable(why));
            return reply(app, self.refusal(conn, why)).await;
        }
        if let Err(packet) = self.admit(conn, &classified.verdict) {
            return reply(app, packet).await;
        }
        match self.mask_check(sql, &classified.reach, conn) {
            Ok(projection) => conn.report.projection = projection,
            Err(why) => return reply(app, self.refusal(conn, &why)).await,
        }
        // Writes, and user savepoints (they move what a ROLLBACK would undo), wait their turn.
        // (Outside a transaction they place nothing, and need no turn.)
        let tx_open = conn.tx.in_transaction() || !conn.tx.autocommit();
        let writes = match &classified.verdict {
            Verdict::Forward(Forward { writes }) => *writes,
            Verdict::Tx(
                TxControl::Savepoint(_) | TxControl::Release(_) | TxControl::RollbackTo(_),
            ) => tx_open,
            _ => false,
        };
        let mut inner = match self.lock_for(conn.id, writes).await {
            Ok(inner) => inner,
            Err(msg) => {
                return reply(app, wire::err(wire::ER_LOCK_WAIT_TIMEOUT, b"HY000", &msg)).await
            }
        };
        let mut retried = false;
        loop {
            let before = app.packets();
            let r = self
                .serve(
                    &mut inner,
                    conn,
                    &classified.verdict,
                    &classified.reach,
                    payload,
                    app,
                )
                .await;
            let told_app = app.packets() != before;
            if let Some(outcome) = self
                .settle(&mut inner, conn, r, told_app, &mut retried, app)
                .await
            {
                return outcome;
            }
        }
    }

    /// After one attempt at a statement: its outcome, or `None` to try it once more. That is
    /// when the upstream failed before the app was told anything, on an app connection that
    /// has run nothing yet: a new connection must not fail inside its own connect because the
    /// session's upstream died while it was idle (the session reconnects on the retry).
    pub(super) async fn settle<W: AsyncWrite + Unpin>(
        &self,
        inner: &mut Inner,
        conn: &mut AppConn,
        attempt: Result<Outcome, ServeError>,
        told_app: bool,
        retried: &mut bool,
        app: &mut PacketWriter<W>,
    ) -> Option<Outcome> {
        match attempt {
            Ok(outcome) => {
                conn.used = true;
                Some(outcome)
            }
            Err(ServeError::Upstream(e)) if !conn.used && !*retried && !told_app => {
                *retried = true;
                self.lose(inner, format!("the database connection failed: {e}"));
                None
            }
            Err(e) => Some(self.failed(inner, conn, e, app).await),
        }
    }

    /// Records a refusal for the audit log; the packet to send.
    pub(super) fn refusal(&self, conn: &mut AppConn, why: &str) -> Vec<u8> {
        conn.report.refused = Some(why.to_owned());
        wire::refused(why)
    }

    /// The rate limits, before a statement that reaches the server. `Err`: the error to send.
    pub(super) fn admit(&self, conn: &mut AppConn, verdict: &Verdict) -> Result<(), Vec<u8>> {
        if !matches!(
            verdict,
            Verdict::Forward(_)
                | Verdict::SessionSet { .. }
                | Verdict::CreateTemporary(_)
                | Verdict::Use(_)
        ) {
            return Ok(());
        }
        let now = Instant::now();
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        let admitted = limits.admit_statement(now).and_then(|()| {
            if matches!(verdict, Verdict::Forward(Forward { writes: false })) {
                limits.admit_rows(now)
            } else {
                Ok(())
            }
        });
        admitted.map_err(|e| {
            conn.report.refused = Some(e.message.clone());
            wire::err(wire::ER_RATE_LIMITED, b"42000", &e.message)
        })
    }

    /// The masking analysis of a statement that reaches tables (see `mask::analysis`).
    pub(super) fn mask_check(
        &self,
        sql: &str,
        reach: &Reach,
        conn: &AppConn,
    ) -> Result<MaskedProjection, String> {
        let Some(masking) = &self.config.masking else {
            return Ok(MaskedProjection::default());
        };
        if reach.tables.is_empty() {
            return Ok(MaskedProjection::default());
        }
        let statement = parse_statement(sql).ok_or_else(|| {
            "DevInProd refused a statement it could not analyse for masked columns".to_owned()
        })?;
        crate::mask::analysis::check(&statement, &masking.rules, conn.db.as_deref())
    }

    /// Writes the audit record of the statement `conn` just ran, and charges its rows.
    pub(super) fn audit(
        &self,
        conn: &mut AppConn,
        command: &'static str,
        sql: &str,
        started: Instant,
    ) {
        let report = std::mem::take(&mut conn.report);
        if let Some(rows) = report.rows {
            self.limits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .charge_rows(rows, Instant::now());
        }
        let decision = if report.refused.is_some() {
            Decision::Refused
        } else if !report.masked.is_empty() {
            Decision::Rewritten
        } else if report.upstream_sql.is_some() {
            Decision::Emulated
        } else {
            Decision::Allowed
        };
        let reason = report.refused.clone().or_else(|| {
            (!report.masked.is_empty())
                .then(|| format!("masked in the result: {}", report.masked.join(", ")))
        });
        self.config.audit.record(AuditRecord {
            time: String::new(),
            routing_key: self.key.to_string(),
            conn: conn.id,
            command,
            sql: sql.to_owned(),
            upstream_sql: report.upstream_sql,
            decision,
            reason,
            rows: report.rows,
            affected: report.affected,
            duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            error: report.error,
            masked_columns: report.masked,
        });
    }

    /// The session, once `conn_id` may go ahead: a write waits while another connection's
    /// transaction that has written is open (its ROLLBACK would otherwise undo this write too).
    /// Reads never wait.
    pub(super) async fn lock_for(
        &self,
        conn_id: u32,
        writes: bool,
    ) -> Result<tokio::sync::MutexGuard<'_, Inner>, String> {
        let deadline = tokio::time::Instant::now() + self.config.write_turn_timeout;
        loop {
            let inner = self.inner.lock().await;
            let owner = inner.turn;
            if !writes || owner.is_none() || owner == Some(conn_id) {
                return Ok(inner);
            }
            let notified = self.turn_free.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            drop(inner);
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(format!(
                    "DevInProd: this write waited {} ms for another connection of the same session \
                     (connection {}) to end its transaction, which has uncommitted writes; commit or \
                     roll that one back first",
                    self.config.write_turn_timeout.as_millis(),
                    owner.unwrap_or_default()
                ));
            }
        }
    }

    /// Turns a failure of the upstream while serving `conn` into the session's loss and the
    /// error the app connection gets.
    pub(super) async fn failed<W: AsyncWrite + Unpin>(
        &self,
        inner: &mut Inner,
        conn: &mut AppConn,
        e: ServeError,
        app: &mut PacketWriter<W>,
    ) -> Outcome {
        match e {
            ServeError::App => Outcome::AppGone,
            ServeError::Catalog(e) => reply(app, self.refusal(conn, &catalog_refusal(&e))).await,
            ServeError::Upstream(e) => {
                let protected = self.protection();
                self.lose(inner, format!("the database connection failed: {e}"));
                conn.generation = inner.generation;
                conn.tx.forget();
                let msg = match protected {
                    Some(why) => {
                        // Told now: the next session (the next `ensure_upstream` counts it) is
                        // this connection's own, not news to it.
                        conn.generation = inner.generation + 1;
                        format!(
                            "DevInProd reset this database session to protect production: {why}; \
                             everything it had written is gone, and a new session begins with the next statement"
                        )
                    }
                    None => format!(
                        "DevInProd lost the database session ({e}); everything it had written is gone"
                    ),
                };
                reply(app, wire::err(wire::ER_SESSION_RESET, b"70100", &msg)).await
            }
        }
    }

    /// COM_STMT_PREPARE: the same policy and catalog checks as a text query; the statement id
    /// the app sees is its own connection's.
    pub async fn prepare<W: AsyncWrite + Unpin>(
        &self,
        conn: &mut AppConn,
        payload: &[u8],
        app: &mut PacketWriter<W>,
    ) -> Outcome {
        let started = Instant::now();
        conn.report = StatementReport::default();
        let sql = String::from_utf8_lossy(&payload[1..]).into_owned();
        let outcome = self.prepare_checked(conn, &sql, payload, app).await;
        self.audit(conn, "prepare", &sql, started);
        outcome
    }

    pub(super) async fn prepare_checked<W: AsyncWrite + Unpin>(
        &self,
        conn: &mut AppConn,
        sql: &str,
        payload: &[u8],
        app: &mut PacketWriter<W>,
    ) -> Outcome {
        self.touch();
        let classified = classify(sql);
        let reach = classified.reach.clone();
        match self.mask_check(sql, &reach, conn) {
            Ok(projection) => conn.report.projection = projection,
            Err(why) => return reply(app, self.refusal(conn, &why)).await,
        }
        let f = match classified.verdict {
            Verdict::Forward(f) => f,
            Verdict::SessionView(columns) => {
                // Answered at each execute from the connection's own state, like its text form.
                let app_id = conn.next_stmt;
                conn.next_stmt += 1;
                conn.last_prepared = Some(app_id);
                let generation = self.inner.lock().await.generation;
                let names = view_columns(&columns);
                conn.stmts.insert(
                    app_id,
                    PreparedStatement {
                        upstream_id: 0,
                        writes: false,
                        generation,
                        emulated: Some(Verdict::SessionView(columns.clone())),
                        reach: Reach::default(),
                        sql: sql.into(),
                        projection: MaskedProjection::default(),
                    },
                );
                let mut ok = vec![0x00];
                ok.extend_from_slice(&app_id.to_le_bytes());
                ok.extend_from_slice(&(names.len() as u16).to_le_bytes());
                ok.extend_from_slice(&[0, 0, 0, 0, 0]);
                let mut seq = app.queue(1, &ok);
                for c in wire::typed_columns(&names) {
                    seq = app.queue(seq, &c);
                }
                app.queue(seq, &wire::eof(conn.status(), 0));
                return match app.flush().await {
                    Ok(()) => Outcome::Done,
                    Err(_) => Outcome::AppGone,
                };
            }
            Verdict::Refuse(why) => return reply(app, self.refusal(conn, &why)).await,
            v @ (Verdict::Tx(_) | Verdict::SetAutocommit(_) | Verdict::Swallow) => {
                // Prepared transaction control (sysbench, some ORMs): answered here, no params,
                // no columns; emulated when executed.
                let app_id = conn.next_stmt;
                conn.next_stmt += 1;
                conn.last_prepared = Some(app_id);
                let generation = self.inner.lock().await.generation;
                conn.stmts.insert(
                    app_id,
                    PreparedStatement {
                        upstream_id: 0,
                        writes: false,
                        generation,
                        emulated: Some(v),
                        reach: Reach::default(),
                        sql: sql.into(),
                        projection: MaskedProjection::default(),
                    },
                );
                let mut ok = vec![0x00];
                ok.extend_from_slice(&app_id.to_le_bytes());
                ok.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
                return reply(app, ok).await;
            }
            _ => {
                let why = format!(
                    "DevInProd refused to prepare {}: only queries and data changes can be prepared; send it as a text query",
                    classified.kind
                );
                return reply(app, self.refusal(conn, &why)).await;
            }
        };
        let mut inner = self.inner.lock().await;
        let mut retried = false;
        loop {
            let before = app.packets();
            let r = self
                .prepare_in(&mut inner, conn, &f, &reach, payload, app)
                .await;
            let told_app = app.packets() != before;
            if let Some(outcome) = self
                .settle(&mut inner, conn, r, told_app, &mut retried, app)
                .await
            {
                return outcome;
            }
        }
    }

    pub(super) async fn prepare_in<W: AsyncWrite + Unpin>(
        &self,
        inner: &mut Inner,
        conn: &mut AppConn,
        f: &Forward,
        reach: &Reach,
        payload: &[u8],
        app: &mut PacketWriter<W>,
    ) -> Result<Outcome, ServeError> {
        self.protect_now(inner).await;
        self.ensure_upstream(inner).await?;
        if let Some(notice) = self.reset_notice(inner, conn) {
            conn.stmts.clear();
            return Ok(reply(app, wire::err(wire::ER_SESSION_RESET, b"70100", &notice)).await);
        }
        self.switch_to(inner, conn).await?;
        if let Some(why) = self.check_catalog(inner, conn, reach).await? {
            return Ok(reply(app, self.refusal(conn, &why)).await);
        }
        // Preparing opens the tables, which takes their metadata locks.
        self.note_touched(conn, reach);
        let app_id = conn.next_stmt;
        let mut upstream_id = None;
        let (in_trans, autocommit) = (conn.tx.in_transaction(), conn.tx.autocommit());
        let up = upstream(inner)?;
        up.send(payload).await?;
        let (tracker, app_ok) = relay_response(
            up,
            ResponseTracker::prepare(),
            app,
            1,
            |position, p| match position {
                Position::PrepareOk => {
                    upstream_id = Some(u32::from_le_bytes([p[1], p[2], p[3], p[4]]));
                    p[1..5].copy_from_slice(&app_id.to_le_bytes());
                }
                Position::Status => wire::patch_status(p, in_trans, autocommit),
                _ => {}
            },
        )
        .await?;
        if let (Some(upstream_id), None) = (upstream_id, tracker.error) {
            conn.next_stmt += 1;
            conn.last_prepared = Some(app_id);
            conn.stmts.insert(
                app_id,
                PreparedStatement {
                    upstream_id,
                    writes: f.writes,
                    generation: inner.generation,
                    emulated: None,
                    reach: reach.clone(),
                    sql: String::from_utf8_lossy(&payload[1..]).into(),
                    projection: conn.report.projection.clone(),
                },
            );
        }
        if !app_ok {
            return Err(ServeError::App);
        }
        Ok(Outcome::Done)
    }

    /// COM_STMT_EXECUTE / COM_STMT_RESET: the app's statement id becomes the upstream's; an
    /// execute that writes takes the write turn and follows the savepoint rules of a text write.
    pub async fn execute<W: AsyncWrite + Unpin>(
        &self,
        conn: &mut AppConn,
        payload: &[u8],
        app: &mut PacketWriter<W>,
    ) -> Outcome {
        let started = Instant::now();
        conn.report = StatementReport::default();
        let outcome = self.execute_inner(conn, payload, app).await;
        let kind = match payload.first() {
            Some(&COM_STMT_EXECUTE) => Some("execute"),
            Some(&COM_STMT_BULK_EXECUTE) => Some("bulk execute"),
            _ => None,
        };
        if let Some(kind) = kind {
            let sql = statement_id(conn, payload)
                .and_then(|id| conn.stmts.get(&id))
                .map(|s| s.sql.clone())
                .unwrap_or_else(|| "".into());
            self.audit(conn, kind, &sql, started);
        }
        outcome
    }

    pub(super) async fn execute_inner<W: AsyncWrite + Unpin>(
        &self,
        conn: &mut AppConn,
        payload: &[u8],
        app: &mut PacketWriter<W>,
    ) -> Outcome {
        self.touch();
        let id = statement_id(conn, payload);
        let Some(stmt) = id.and_then(|id| conn.stmts.get(&id)).cloned() else {
            return reply(
                app,
                wire::err(
                    1243,
                    b"HY000",
                    "Unknown prepared statement handler given to DevInProd",
                ),
            )
            .await;
        };
        if let Some((refused, why)) = conn.long_data_refused.take() {
            // A reset drops the statement's long data, and its error with it (and is sent on,
            // for the long data that did go).
            if Some(refused) == id && payload[0] != COM_STMT_RESET {
                return reply(
                    app,
                    wire::err(wire::ER_NET_PACKET_TOO_LARGE, b"08S01", &why),
                )
                .await;
            }
            if Some(refused) != id {
                conn.long_data_refused = Some((refused, why));
            }
        }
        let bulk = payload[0] == COM_STMT_BULK_EXECUTE;
        let is_execute = payload[0] == COM_STMT_EXECUTE || bulk;
        conn.report.projection = stmt.projection.clone();
        if bulk {
            // Flags after the id: 64 asks for a result per parameter row (a capability the
            // proxy does not offer, so its replies could not be relayed as one); a statement
            // the proxy answers itself has no upstream statement to run in bulk.
            let flags = payload
                .get(5..7)
                .map_or(0, |f| u16::from_le_bytes([f[0], f[1]]));
            let why = if flags & 64 != 0 {
                Some("DevInProd refused a bulk execution with unit results: it is not offered here")
            } else if stmt.emulated.is_some() {
                Some("DevInProd refused a bulk execution of a statement it answers itself (run it one set of parameters at a time)")
            } else {
                None
            };
            if let Some(why) = why {
                return reply(app, wire::refused(why)).await;
            }
        }
        if is_execute && stmt.emulated.is_none() {
            let verdict = Verdict::Forward(Forward {
                writes: stmt.writes,
            });
            if let Err(packet) = self.admit(conn, &verdict) {
                return reply(app, packet).await;
            }
        }
        if payload[0] == COM_STMT_EXECUTE && payload.get(5).is_some_and(|flags| flags & 0x07 != 0) {
            return reply(
                app,
                wire::refused("DevInProd refused a cursor: server-side cursors are not supported"),
            )
            .await;
        }
        if let Some(verdict) = &stmt.emulated {
            let mut inner = self.inner.lock().await;
            if !is_execute {
                return reply(app, wire::ok(0, 0, conn.status(), 0)).await;
            }
            let r = self
                .serve(&mut inner, conn, verdict, &Reach::default(), payload, app)
                .await;
            return match r {
                Ok(o) => o,
                Err(e) => self.failed(&mut inner, conn, e, app).await,
            };
        }
        let writes = is_execute && stmt.writes;
        let mut inner = match self.lock_for(conn.id, writes).await {
            Ok(inner) => inner,
            Err(msg) => {
                return reply(app, wire::err(wire::ER_LOCK_WAIT_TIMEOUT, b"HY000", &msg)).await
            }
        };
        let r = self
            .execute_in(&mut inner, conn, stmt, writes, payload, app)
            .await;
        match r {
            Ok(o) => o,
            Err(e) => self.failed(&mut inner, conn, e, app).await,
        }
    }

    pub(super) async fn execute_in<W: AsyncWrite + Unpin>(
        &self,
        inner: &mut Inner,
        conn: &mut AppConn,
        stmt: PreparedStatement,
        writes: bool,
        payload: &[u8],
        app: &mut PacketWriter<W>,
    ) -> Result<Outcome, ServeError> {
        self.protect_now(inner).await;
        let _running = self.running();
        self.ensure_upstream(inner).await?;
        if let Some(notice) = self.reset_notice(inner, conn) {
            conn.stmts.clear();
            return Ok(reply(app, wire::err(wire::ER_SESSION_RESET, b"70100", &notice)).await);
        }
        if stmt.generation != inner.generation {
            let msg = "Unknown prepared statement handler: it belonged to a session that was reset";
            return Ok(reply(app, wire::err(1243, b"HY000", msg)).await);
        }
        self.switch_to(inner, conn).await?;
        if writes {
            if let Some(why) = self.check_catalog(inner, conn, &stmt.reach).await? {
                return Ok(reply(app, self.refusal(conn, &why)).await);
            }
        }
        self.note_touched(conn, &stmt.reach);
        let mut upstream_payload = payload.to_vec();
        upstream_payload[1..5].copy_from_slice(&stmt.upstream_id.to_le_bytes());
        let reads_tables = !stmt.reach.tables.is_empty();
        self.forward(inner, conn, writes, reads_tables, &upstream_payload, app)
            .await
    }

    /// Sends a statement that passed the policy (text or prepared) and relays its response.
    /// A write holds the write turn while it runs (and after, if its transaction stays open),
    /// and (re)places the connection's savepoint first when needed.
    pub(super) async fn forward<W: AsyncWrite + Unpin>(
        &self,
        inner: &mut Inner,
        conn: &mut AppConn,
        writes: bool,
        reads_tables: bool,
        payload: &[u8],
        app: &mut PacketWriter<W>,
    ) -> Result<Outcome, ServeError> {
        inner.statements += 1;
        if !writes {
            // With autocommit off a server opens a transaction when a statement touches a
            // (transactional) table; `SELECT 1` opens none (connectors check IN_TRANS after it).
            if reads_tables {
                conn.tx.before_read();
            }
            self.relay(inner, conn, payload, app).await?;
            return Ok(Outcome::Done);
        }
        inner.turn = Some(conn.id);
        if let Some(sql) = conn.tx.before_write(inner.epoch) {
            if let Some(err) = self.run_internal(inner, &sql).await? {
                self.release_turn(inner, Some(conn));
                return Ok(reply(app, err).await);
            }
        }
        let result = self.relay(inner, conn, payload, app).await;
        inner.epoch += 1;
        if let Ok(true) = result {
            inner.wrote = true;
            conn.tx.after_write(inner.epoch);
        }
        self.release_turn(inner, Some(conn));
        result.map(|_| Outcome::Done)
    }

    /// COM_STMT_CLOSE and COM_STMT_SEND_LONG_DATA: forwarded with the upstream's id; no reply.
    pub async fn statement_no_reply(&self, conn: &mut AppConn, payload: &[u8]) {
        let Some(id) = statement_id(conn, payload) else {
            return;
        };
        let stmt = if payload[0] == 0x19 {
            conn.stmts.remove(&id)
        } else {
            conn.stmts.get(&id).cloned()
        };
        let Some(stmt) = stmt.filter(|s| s.emulated.is_none()) else {
            return;
        };
        let mut inner = self.inner.lock().await;
        if stmt.generation != inner.generation {
            return;
        }
        if let Some(up) = inner.upstream.as_mut() {
            let mut upstream_payload = payload.to_vec();
            upstream_payload[1..5].copy_from_slice(&stmt.upstream_id.to_le_bytes());
            if let Err(e) = up.send(&upstream_payload).await {
                self.lose(&mut inner, format!("the database connection failed: {e}"));
            }
        }
    }

    pub(super) async fn serve<W: AsyncWrite + Unpin>(
        &self,
        inner: &mut Inner,
        conn: &mut AppConn,
        verdict: &Verdict,
        reach: &Reach,
        payload: &[u8],
        app: &mut PacketWriter<W>,
    ) -> Result<Outcome, ServeError> {
        self.protect_now(inner).await;
        let _running = self.running();
        self.ensure_upstream(inner).await?;
        if let Some(notice) = self.reset_notice(inner, conn) {
            return Ok(reply(app, wire::err(wire::ER_SESSION_RESET, b"70100", &notice)).await);
        }
        self.switch_to(inner, conn).await?;
        // Everything that reaches tables or functions on the server is checked against the
        // catalog first, whatever its kind (a SET can call a function; CREATE TEMPORARY TABLE
        // … AS SELECT can read a view).
        if matches!(
            verdict,
            Verdict::Forward(_) | Verdict::SessionSet { .. } | Verdict::CreateTemporary(_)
        ) {
            if let Some(why) = self.check_catalog(inner, conn, reach).await? {
                info!(key = %self.key, conn = conn.id, "refused: {}", printable(&why));
                return Ok(reply(app, self.refusal(conn, &why)).await);
            }
        }
        self.note_touched(conn, reach);
        match verdict {
            Verdict::Forward(f) => {
                let reads_tables = !reach.tables.is_empty();
                self.forward(inner, conn, f.writes, reads_tables, payload, app)
                    .await
            }
            Verdict::Tx(control) => {
                let plan = conn.tx.control(control, inner.epoch);
                self.run_plan_then_ok(inner, conn, plan, app).await
            }
            Verdict::SetAutocommit(on) => {
                let plan = conn.tx.set_autocommit(*on, inner.epoch);
                self.run_plan_then_ok(inner, conn, plan, app).await
            }
            Verdict::Swallow => Ok(reply(app, wire::ok(0, 0, conn.status(), 0)).await),
            Verdict::SessionIsolation(level) => {
                conn.isolation = Some(level.clone());
                Ok(reply(app, wire::ok(0, 0, conn.status(), 0)).await)
            }
            Verdict::SessionView(columns) => {
                let default_isolation = if self.config.consistent_snapshot {
                    "REPEATABLE-READ"
                } else {
                    "READ-COMMITTED"
                };
                let flag = |on: bool| wire::Value::Int(i64::from(on));
                let row: Vec<wire::Value> = columns
                    .iter()
                    .map(|(_, v)| match v {
                        SessionVariable::Autocommit => flag(conn.tx.autocommit()),
                        SessionVariable::InTransaction => flag(conn.tx.in_transaction()),
                        SessionVariable::ReadOnly => flag(false),
                        SessionVariable::Isolation => wire::Value::Text(
                            conn.isolation
                                .clone()
                                .unwrap_or_else(|| default_isolation.into()),
                        ),
                    })
                    .collect();
                let names = view_columns(columns);
                let binary = payload.first() == Some(&COM_STMT_EXECUTE);
                let mut seq = 1;
                for p in wire::typed_result(&names, &[row], conn.status(), binary) {
                    seq = app.queue(seq, &p);
                }
                Ok(match app.flush().await {
                    Ok(()) => Outcome::Done,
                    Err(_) => Outcome::AppGone,
                })
            }
            Verdict::Use(db) => {
                if self.relay(inner, conn, payload, app).await? {
                    conn.db = Some(db.clone());
                    inner.applied_db = Some(db.clone());
                }
                Ok(Outcome::Done)
            }
            Verdict::SessionSet {
                vars,
                autocommit,
                upstream_sql,
                read_back_sql_mode,
            } => {
                // autocommit is emulated first (turning it on commits the app's transaction),
                // so that the OK of the rest shows the connection's new state.
                if let Some(on) = autocommit {
                    let plan = conn.tx.set_autocommit(*on, inner.epoch);
                    if let Some(err) = self.run_plan(inner, conn, plan).await? {
                        return Ok(reply(app, err).await);
                    }
                }
                let (sql, upstream_payload) = match upstream_sql {
                    Some(sql) => {
                        conn.report.upstream_sql = Some(sql.clone());
                        let mut p = vec![0x03];
                        p.extend_from_slice(sql.as_bytes());
                        (sql.clone(), p)
                    }
                    None => (
                        String::from_utf8_lossy(&payload[1..]).into_owned(),
                        payload.to_vec(),
                    ),
                };
                if self.relay(inner, conn, &upstream_payload, app).await? {
                    for v in vars {
                        conn.set_var(v, &sql);
                    }
                    if *read_back_sql_mode {
                        self.read_back_sql_mode(inner, conn).await?;
                    }
                    inner.applied_vars = conn.vars.clone();
                }
                Ok(Outcome::Done)
            }
            Verdict::CreateTemporary(t) => {
                if self.relay(inner, conn, payload, app).await? {
                    if let Some(schema) = t.schema.clone().or_else(|| conn.db.clone()) {
                        inner.temp_tables.insert((schema, t.name.clone()));
                    }
                }
                Ok(Outcome::Done)
            }
            Verdict::DropTemporary(ts) => {
                // Forgotten even when the statement fails: MariaDB drops the tables it found
                // before reporting one it did not, and a name still taken for a temporary
                // table would let writes reach the base table of that name unchecked.
                let result = self.relay(inner, conn, payload, app).await;
                for t in ts {
                    if let Some(schema) = t.schema.clone().or_else(|| conn.db.clone()) {
                        inner.temp_tables.remove(&(schema, t.name.clone()));
                    }
                }
                result?;
                Ok(Outcome::Done)
            }
            Verdict::Admin(AdminCommand::Status) => {
                let columns = [
                    "routing_key",
                    "age_secs",
                    "statements",
                    "holds_writes",
                    "app_connections",
                ];
                let row = vec![
                    self.key.to_string(),
                    self.created.elapsed().as_secs().to_string(),
                    inner.statements.to_string(),
                    if inner.wrote { "yes" } else { "no" }.to_owned(),
                    self.app_conns.load(Ordering::Relaxed).to_string(),
                ];
                let mut seq = 1;
                for p in wire::text_result(&columns, &[row], conn.status()) {
                    seq = app.queue(seq, &p);
                }
                Ok(match app.flush().await {
                    Ok(()) => Outcome::Done,
                    Err(_) => Outcome::AppGone,
                })
            }
            Verdict::Admin(AdminCommand::Reset) => {
                if let Some(up) = inner.upstream.take() {
                    up.close().await;
                }
                self.lose(inner, "reset by the developer (devinprod db reset)".into());
                inner.statements = 0;
                inner.wrote = false;
                Ok(reply(app, wire::ok(0, 0, wire::STATUS_AUTOCOMMIT, 0)).await)
            }
            Verdict::Refuse(why) => Ok(reply(app, self.refusal(conn, why)).await),
        }
    }

    /// Sends the app's command and relays the response with this connection's status flags;
    /// then makes sure the upstream is still inside its transaction. `Ok(true)` if it succeeded.
    pub(super) async fn relay<W: AsyncWrite + Unpin>(
        &self,
        inner: &mut Inner,
        conn: &mut AppConn,
        payload: &[u8],
        app: &mut PacketWriter<W>,
    ) -> Result<bool, ServeError> {
        let tracker = if payload.first() == Some(&0x04) {
            ResponseTracker::field_list()
        } else {
            ResponseTracker::new()
        };
        let (in_trans, autocommit) = (conn.tx.in_transaction(), conn.tx.autocommit());
        let up = upstream(inner)?;
        up.send(payload).await?;
        let mut inserted = None;
        let mut affected = None;
        // Every result is looked at, masking configured: a column the analysis did not expect
        // to be masked is still masked if its definition names a masked column.
        // A prepared statement's rows are binary, in bulk too (INSERT … RETURNING).
        let binary = matches!(
            payload.first(),
            Some(&COM_STMT_EXECUTE | &COM_STMT_BULK_EXECUTE)
        );
        let masking_on = self.config.masking.is_some();
        let mut masker = self
            .config
            .masking
            .as_ref()
            .map(|m| ResultMasker::new(&m.rules, &m.masker, &conn.report.projection, binary));
        let mut rows = 0u64;
        let (tracker, app_ok) = relay_response(up, tracker, app, 1, |position, p| {
            match position {
                Position::Status => {
                    if let Some(id) = wire::ok_last_insert_id(p).filter(|id| *id != 0) {
                        inserted = Some(id);
                    }
                    if let Some(n) = wire::ok_affected_rows(p) {
                        affected = Some(n);
                    }
                    wire::patch_status(p, in_trans, autocommit);
                }
                Position::Row => rows += 1,
                Position::Other if masking_on && p.first() == Some(&0xFF) => {
                    if let Some((code, msg)) = wire::err_info(p) {
                        if let Some(withheld) = crate::mask::withhold_values(code, &msg) {
                            let state: [u8; 5] = p
                                .get(4..9)
                                .and_then(|s| s.try_into().ok())
                                .unwrap_or(*b"HY000");
                            *p = wire::err(code, &state, &withheld);
                        }
                    }
                }
                _ => {}
            }
            if let Some(m) = masker.as_mut() {
                m.on_packet(position, p);
            }
        })
        .await?;
        let masked = masker.map(|m| m.masked).unwrap_or_default();
        if rows > 0 || affected.is_none() {
            conn.report.rows = Some(rows);
        }
        conn.report.affected = affected;
        conn.report.masked = masked;
        conn.report.error = tracker.error.as_ref().map(|(code, msg)| {
            let msg = masking_on
                .then(|| crate::mask::withhold_values(*code, msg))
                .flatten()
                .unwrap_or_else(|| msg.clone());
            format!("{code}: {msg}")
        });
        if let Some(id) = inserted {
            conn.last_insert_id = id;
            inner.applied_last_insert_id = id;
        }
        self.check_still_in_transaction(inner, tracker.status, tracker.error.is_some())
            .await?;
        if !app_ok {
            return Err(ServeError::App);
        }
        Ok(tracker.error.is_none())
    }

    /// After every reply: the server's own IN_TRANS flag must still be set. After an error (a
    /// deadlock rolls back everything) it is asked for explicitly.
    pub(super) async fn check_still_in_transaction(
        &self,
        inner: &mut Inner,
        status: Option<u16>,
        failed: bool,
    ) -> Result<(), ServeError> {
        let status = match (status, failed) {
            (Some(s), false) => Some(s),
            _ => {
                let up = inner.upstream.as_mut().ok_or_else(|| {
                    ServeError::Upstream(UpstreamError::Protocol("no upstream".into()))
                })?;
                up.run("DO 0").await?.ok().and_then(|c| c.status)
            }
        };
        if status.is_some_and(|s| s & wire::STATUS_IN_TRANS == 0) {
            if let Some(up) = inner.upstream.take() {
                up.close().await;
            }
            self.lose(inner, "the database ended the session's transaction (a deadlock or a server-side rollback)".into());
        }
        Ok(())
    }

    /// Runs a statement of the proxy's own; an ERR becomes the packet to give the app.
    pub(super) async fn run_internal(
        &self,
        inner: &mut Inner,
        sql: &str,
    ) -> Result<Option<Vec<u8>>, ServeError> {
        let up = upstream(inner)?;
        let c = up.query(sql).await?;
        match c.error {
            Some((code, msg)) => {
                // Hide the proxy's savepoint prefix from the message where it shows.
                let p = c
                    .packets
                    .last()
                    .cloned()
                    .unwrap_or_else(|| wire::err(code, b"HY000", &msg));
                self.check_still_in_transaction(inner, None, true).await?;
                Ok(Some(p))
            }
            None => {
                self.check_still_in_transaction(inner, c.status, false)
                    .await?;
                Ok(None)
            }
        }
    }

    pub(super) async fn run_plan_then_ok<W: AsyncWrite + Unpin>(
        &self,
        inner: &mut Inner,
        conn: &mut AppConn,
        plan: Plan,
        app: &mut PacketWriter<W>,
    ) -> Result<Outcome, ServeError> {
        Ok(match self.run_plan(inner, conn, plan).await? {
            Some(err) => reply(app, err).await,
            None => reply(app, wire::ok(0, 0, conn.status(), 0)).await,
        })
    }

    /// Runs the statements of an emulated transaction control; `Some`: the error to send.
    pub(super) async fn run_plan(
        &self,
        inner: &mut Inner,
        conn: &mut AppConn,
        plan: Plan,
    ) -> Result<Option<Vec<u8>>, ServeError> {
        conn.report.upstream_sql = Some(plan.statements.join("; "));
        if let Some((code, message)) = plan.error {
            return Ok(Some(wire::err(code, b"42000", &message)));
        }
        if plan.takes_turn {
            inner.turn = Some(conn.id);
        }
        if plan.advances_epoch {
            inner.epoch += 1;
        }
        let mut failed = None;
        for sql in &plan.statements {
            if let Some(err) = self.run_internal(inner, sql).await? {
                failed = Some(err);
                break;
            }
        }
        self.release_turn(inner, Some(conn));
        Ok(failed)
    }

    /// After a SET of sql_mode: what this connection replays is the resulting value, not an
    /// expression (`CONCAT(@@sql_mode, …)` replayed would build on another connection's modes).
    pub(super) async fn read_back_sql_mode(
        &self,
        inner: &mut Inner,
        conn: &mut AppConn,
    ) -> Result<(), ServeError> {
        let up = upstream(inner)?;
        if let Ok(c) = up.run("SELECT @@session.sql_mode").await? {
            if let Some(Some(mode)) = c
                .rows()
                .into_iter()
                .next()
                .and_then(|r| r.into_iter().next())
            {
                // Mode names are letters, digits, '_' and ','; anything else is not replayed.
                if mode
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ',')
                {
                    conn.set_var("sql_mode", &format!("SET SESSION sql_mode = '{mode}'"));
                }
            }
        }
        Ok(())
    }

    /// COM_INIT_DB, and the database named at login.
    pub async fn use_db<W: AsyncWrite + Unpin>(
        &self,
        conn: &mut AppConn,
        db: &str,
        app: &mut PacketWriter<W>,
        seq: u8,
    ) -> Outcome {
        let mut inner = self.inner.lock().await;
        let mut result = self.use_db_upstream(&mut inner, db).await;
        if let Err(e) = &result {
            // A dead upstream ends the session (told to the connections that used it); this
            // one tries again on a new session if it has lost nothing.
            self.lose(&mut inner, format!("the database connection failed: {e}"));
            if !conn.used {
                result = self.use_db_upstream(&mut inner, db).await;
            }
        }
        let packet = match result {
            Ok(c) => match c.error {
                None => {
                    conn.db = Some(db.to_owned());
                    inner.applied_db = Some(db.to_owned());
                    // The upstream now has this connection's database but maybe another's
                    // settings: the next statement of any connection re-applies its own.
                    inner.on = None;
                    wire::ok(0, 0, conn.status(), 0)
                }
                Some(_) => c
                    .packets
                    .last()
                    .cloned()
                    .unwrap_or_else(|| wire::refused("USE failed")),
            },
            Err(e) => wire::err(
                wire::ER_SESSION_RESET,
                b"70100",
                &format!("DevInProd cannot reach the database: {e}"),
            ),
        };
        match app.send(seq, &packet).await {
            Ok(_) => Outcome::Done,
            Err(_) => Outcome::AppGone,
        }
    }

    pub(super) async fn use_db_upstream(
        &self,
        inner: &mut Inner,
        db: &str,
    ) -> Result<Collected, UpstreamError> {
        self.protect_now(inner).await;
        self.ensure_upstream(inner).await?;
        let up = inner
            .upstream
            .as_mut()
            .ok_or_else(|| UpstreamError::Protocol("no upstream".into()))?;
        up.query(&format!("USE `{}`", db.replace('`', "``"))).await
    }

    /// COM_FIELD_LIST: read-only, forwarded.
    pub async fn field_list<W: AsyncWrite + Unpin>(
        &self,
        conn: &mut AppConn,
        payload: &[u8],
        app: &mut PacketWriter<W>,
    ) -> Outcome {
        let mut inner = self.inner.lock().await;
        let r = async {
            self.protect_now(&mut inner).await;
            self.ensure_upstream(&mut inner).await?;
            self.switch_to(&mut inner, conn).await?;
            self.relay(&mut inner, conn, payload, app)
                .await
                .map(|_| Outcome::Done)
        }
        .await;
        match r {
            Ok(o) => o,
            Err(ServeError::App) => Outcome::AppGone,
            Err(ServeError::Catalog(e)) => {
                reply(app, self.refusal(conn, &catalog_refusal(&e))).await
            }
            Err(ServeError::Upstream(e)) => {
                self.lose(&mut inner, format!("the database connection failed: {e}"));
                reply(
                    app,
                    wire::err(
                        wire::ER_SESSION_RESET,
                        b"70100",
                        &format!("DevInProd lost the database session ({e})"),
                    ),
                )
                .await
            }
        }
    }
}
