//! The catalog checks of a [`Session`], on a connection of its own (never the session's
//! transaction): what a write reaches must be base tables that exist, use a transactional
//! engine and have no triggers; no stored function may be called, directly or through a view;
//! a masked column must not hide behind a view. Facts are cached for `CATALOG_TTL`; a catalog
//! connection that died is replaced once, and a catalog that cannot be read refuses the
//! statement (fail closed).

use super::*;

impl Session {
    /// Catalog checks on what a statement can reach. Fail closed: a write must name base
    /// tables that exist (exact name), are InnoDB and have no triggers — or the session's own
    /// temporary tables; no stored function or UDF may be called, directly or through a view.
    pub(super) async fn check_catalog(
        &self,
        inner: &mut Inner,
        conn: &AppConn,
        reach: &Reach,
    ) -> Result<Option<String>, ServeError> {
        let stored = if reach.functions.is_empty() && reach.tables.is_empty() {
            HashSet::new()
        } else {
            self.stored_functions(inner).await?
        };
        if let Some(name) = reach.functions.iter().find(|n| stored.contains(*n)) {
            return Ok(Some(format!(
                "DevInProd refused a call to stored function {name}(): stored functions may write to \
                 non-transactional tables or commit, which a rollback would not undo"
            )));
        }
        for t in &reach.tables {
            let writes = reach.write_tables.contains(t);
            let Some(schema) = t.schema.clone().or_else(|| conn.db.clone()) else {
                if writes {
                    return Ok(Some(format!(
                        "DevInProd refused a write to {}: no database is selected on this connection; \
                         USE one or qualify the table",
                        t.name
                    )));
                }
                continue;
            };
            let name = display(t, &schema);
            // A temporary table of the session shadows any other table of that name.
            if inner
                .temp_tables
                .contains(&(schema.clone(), t.name.clone()))
            {
                continue;
            }
            let rows = self.table_facts(inner, &schema, &t.name).await?.rows;
            for r in &rows {
                if r.table_type == "VIEW" {
                    if writes {
                        return Ok(Some(format!(
                            "DevInProd refused a write through view {name}: writes through views cannot be \
                             proven to stay inside the transaction"
                        )));
                    }
                    let definition = r.view_definition.to_ascii_uppercase();
                    if definition.trim().is_empty() {
                        return Ok(Some(format!(
                            "DevInProd refused a read of view {name}: its definition is not visible to the \
                             dbproxy (grant it SHOW VIEW), so its functions cannot be checked"
                        )));
                    }
                    if let Some(masked) = self.masked_behind_view(inner, &r.view_definition).await?
                    {
                        return Ok(Some(format!(
                            "DevInProd refused a read of view {name}: it reads {masked}, which has masked \
                             columns, and a view can compute with them before they could be masked; \
                             query the table itself"
                        )));
                    }
                    if let Some(f) = stored.iter().find(|f| calls(&definition, f)) {
                        return Ok(Some(format!(
                            "DevInProd refused a read of view {name}: it calls stored function {f}(), which may \
                             write outside the transaction"
                        )));
                    }
                }
            }
            if !writes {
                continue;
            }
            let [r] = rows.as_slice() else {
                return Ok(Some(if rows.is_empty() {
                    format!("DevInProd refused a write to {name}: no such table (names are matched exactly)")
                } else {
                    format!(
                        "DevInProd refused a write to {name}: the name is ambiguous in the catalog"
                    )
                }));
            };
            if r.table_type != "BASE TABLE" {
                return Ok(Some(format!(
                    "DevInProd refused a write involving {name}: it is a {}, and writes to it cannot be \
                     proven to stay inside the transaction",
                    r.table_type.to_ascii_lowercase()
                )));
            }
            if !r.engine.eq_ignore_ascii_case("InnoDB") {
                return Ok(Some(format!(
                    "DevInProd refused a write involving {name}: its engine {} is not transactional, \
                     so the write would survive the session's rollback",
                    r.engine
                )));
            }
            if r.triggers > 0 {
                return Ok(Some(format!(
                    "DevInProd refused a write to {name}: it has triggers, which may write outside the transaction"
                )));
            }
        }
        Ok(None)
    }

    /// With masking on: the masked table a view's definition reads, directly or through other
    /// views (MariaDB stores definitions with every name in backquotes, fully qualified).
    pub(super) async fn masked_behind_view(
        &self,
        inner: &mut Inner,
        definition: &str,
    ) -> Result<Option<String>, ServeError> {
        let Some(masking) = self.config.masking.clone() else {
            return Ok(None);
        };
        let masked_names: HashSet<&str> = masking.rules.tables().map(|(_, t)| t.as_str()).collect();
        let mut pending = vec![definition.to_owned()];
        let mut seen = HashSet::new();
        while let Some(def) = pending.pop() {
            let names = backquoted_names(&def);
            // Any name that is a masked table's, in any position (conservative).
            if let Some(n) = names
                .iter()
                .map(|n| crate::mask::fold(n))
                .find(|n| masked_names.contains(n.as_str()))
            {
                return Ok(Some(n));
            }
            for pair in names.windows(2) {
                let key = (pair[0].clone(), pair[1].clone());
                if !def.contains(&format!("{}`.`{}", pair[0], pair[1])) || !seen.insert(key) {
                    continue;
                }
                if seen.len() > 64 {
                    return Ok(Some(
                        "more nested views than the dbproxy follows (64)".into(),
                    ));
                }
                let facts = self.table_facts(inner, &pair[0], &pair[1]).await?;
                pending.extend(
                    facts
                        .rows
                        .into_iter()
                        .filter(|r| r.table_type == "VIEW")
                        .map(|r| r.view_definition),
                );
            }
        }
        Ok(None)
    }

    /// Runs a catalog query on the session's catalog connection, opened on first use. A
    /// connection that failed (the server restarted, or its `wait_timeout` closed it while
    /// idle) is dropped and the query retried once on a new one; if that fails too, the
    /// statement being checked is refused ([`ServeError::Catalog`]) — the session's own
    /// transaction is untouched either way, and the next statement tries again.
    pub(super) async fn catalog_query(
        &self,
        inner: &mut Inner,
        sql: &str,
    ) -> Result<Result<Collected, (u16, String)>, ServeError> {
        let mut last = String::new();
        for _attempt in 0..2 {
            if inner.catalog.is_none() {
                match self.open_catalog().await {
                    Ok(up) => {
                        self.watch
                            .catalog_id
                            .store(up.connection_id, Ordering::Relaxed);
                        inner.catalog = Some(up);
                    }
                    Err(e) => {
                        last = e;
                        continue;
                    }
                }
            }
            let Some(up) = inner.catalog.as_mut() else {
                continue;
            };
            match up.run(sql).await {
                Ok(result) => return Ok(result),
                Err(e) => {
                    warn!(key = %self.key, "catalog connection failed: {e}; opening a new one");
                    last = e.to_string();
                    self.watch.catalog_id.store(0, Ordering::Relaxed);
                    inner.catalog = None;
                }
            }
        }
        Err(ServeError::Catalog(last))
    }

    pub(super) async fn open_catalog(&self) -> Result<Upstream, String> {
        let mut up = Upstream::connect(&self.config.upstream, self.config.max_packet_bytes)
            .await
            .map_err(|e| e.to_string())?;
        match up.run("SET NAMES utf8mb4").await {
            Ok(Ok(_)) => Ok(up),
            Ok(Err((code, msg))) => Err(format!("catalog connection setup failed: {code} {msg}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Stored functions (information_schema.ROUTINES) and UDFs (mysql.func, when readable).
    pub(super) async fn stored_functions(
        &self,
        inner: &mut Inner,
    ) -> Result<HashSet<String>, ServeError> {
        if let Some((at, set)) = &inner.stored_functions {
            if at.elapsed() < CATALOG_TTL {
                return Ok(set.clone());
            }
        }
        let rows = match self
            .catalog_query(
                inner,
                "SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_TYPE = 'FUNCTION'",
            )
            .await?
        {
            Ok(c) => c.rows(),
            Err((code, msg)) => {
                return Err(ServeError::Catalog(format!(
                    "catalog query failed: {code} {msg}"
                )))
            }
        };
        let mut set: HashSet<String> = rows
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .map(|s| s.to_ascii_uppercase())
            .collect();
        // UDFs live in mysql.func; a dbproxy user without SELECT on it cannot see them (the
        // README asks for that grant).
        if let Ok(c) = self
            .catalog_query(inner, "SELECT name FROM mysql.func")
            .await?
        {
            set.extend(
                c.rows()
                    .into_iter()
                    .filter_map(|r| r.into_iter().next().flatten())
                    .map(|s| s.to_ascii_uppercase()),
            );
        }
        inner.stored_functions = Some((Instant::now(), set.clone()));
        Ok(set)
    }

    pub(super) async fn table_facts(
        &self,
        inner: &mut Inner,
        schema: &str,
        name: &str,
    ) -> Result<TableFacts, ServeError> {
        let key = (schema.to_owned(), name.to_owned());
        if let Some(f) = inner
            .tables
            .get(&key)
            .filter(|f| f.at.elapsed() < CATALOG_TTL)
        {
            return Ok(f.clone());
        }
        // Hex literals compared as bytes: no quoting rule can change their meaning, and the
        // match is exact (a case-insensitive match could pick `Audit` for `audit`).
        let sql = format!(
            "SELECT t.TABLE_TYPE, COALESCE(t.ENGINE, ''), \
             (SELECT COUNT(*) FROM information_schema.TRIGGERS g \
              WHERE g.EVENT_OBJECT_SCHEMA = t.TABLE_SCHEMA AND g.EVENT_OBJECT_TABLE = t.TABLE_NAME), \
             COALESCE((SELECT v.VIEW_DEFINITION FROM information_schema.VIEWS v \
              WHERE v.TABLE_SCHEMA = t.TABLE_SCHEMA AND v.TABLE_NAME = t.TABLE_NAME), '') \
             FROM information_schema.TABLES t \
             WHERE BINARY t.TABLE_SCHEMA = X'{}' AND BINARY t.TABLE_NAME = X'{}'",
            hex(schema),
            hex(name)
        );
        let rows = match self.catalog_query(inner, &sql).await? {
            Ok(c) => c.rows(),
            Err((code, msg)) => {
                return Err(ServeError::Catalog(format!(
                    "catalog query failed: {code} {msg}"
                )))
            }
        };
        let rows = rows
            .into_iter()
            .map(|r| {
                let get = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
                TableRow {
                    table_type: get(0),
                    engine: get(1),
                    // Unreadable counts are treated as "has triggers": fail closed.
                    triggers: get(2).parse().unwrap_or(1),
                    view_definition: get(3),
                }
            })
            .collect();
        let facts = TableFacts {
            at: Instant::now(),
            rows,
        };
        inner.tables.insert(key, facts.clone());
        Ok(facts)
    }
}
