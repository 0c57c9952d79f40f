//! The audit log: one JSON line per statement an app sent through the dbproxy.
//!
//! Each [`AuditRecord`] says who (routing key, app connection), what (the original SQL and,
//! when it was rewritten, what went upstream), what the proxy decided and why, and how it
//! ended (rows, affected rows, duration, the server's error). [`AuditLog::record`] writes it
//! as one line of JSON to the audit file and also emits it through `tracing` (target
//! `devinprod::audit`: `info` for allowed/rewritten/emulated, `warn` for refused).
//!
//! ## The file
//! - One line per record, `\n`-terminated; JSON escapes newlines inside SQL, so a record is
//!   never more than one line. Lines are written with a single `write` on a file opened for
//!   append (mode 0600 on unix), so a line is never interleaved with another.
//! - Size-based rotation: when appending a line would make the file exceed
//!   [`AuditConfig::max_bytes`], `audit.log` becomes `audit.log.1` (`.1` → `.2`, …, up to
//!   [`AuditConfig::keep_files`], the oldest is deleted) and a new file is started. A line
//!   is never split across files; a single line larger than `max_bytes` goes alone into a
//!   file of its own.
//! - Hash chain ([`AuditConfig::hash_chain`]): every line ends with
//!   `"prev":"<hex SHA-256 of the previous line's bytes, without its newline>"`; the very
//!   first line of a log carries [`GENESIS`] (64 zeros). The chain goes on across rotation
//!   and across restarts ([`AuditLog::open`] reads the last line of the existing file, or of
//!   `audit.log.1` when the current file is empty). [`verify_chain`] checks it.
//! - A torn last line (the process died in the middle of a write) is cut off on open, with a
//!   warning, so that the file is whole lines again and the chain resumes from the last
//!   complete line.
//!
//! ## Errors
//! [`AuditLog::record`] never fails its caller. When the file cannot be written (disk full,
//! directory gone, …) the error is reported once through `tracing::error` and counted
//! ([`AuditStats::io_errors`]); the record is kept in a bounded queue ([`MAX_PENDING`]) and
//! the write is retried with the next record, oldest first, so a transient error loses
//! nothing. Records pushed out of a full queue are counted in [`AuditStats::dropped`].
//!
//! ## Why a mutex and not a writer thread
//! A record is a few hundred bytes appended to the page cache (no fsync): holding a
//! `std::sync::Mutex` for one `write` costs microseconds, far less than the statement it
//! describes, so it does not block the async runtime in any way that matters (a rotation adds
//! a few renames, once per `max_bytes`). The mutex also makes the order of the lines the
//! order of the hash chain for free, needs no shutdown hand-off (a record is in the file when
//! `record` returns: nothing is lost when the process exits) and has no queue to bound
//! except while the file is failing.
//!
//! ## Time
//! [`AuditRecord::time`] is RFC 3339 UTC with microseconds (`2025-01-31T12:34:56.123456Z`).
//! When a record arrives with an empty `time`, the log fills it in with the current time
//! ([`now_rfc3339`]); a caller that wants the statement's start time sets it itself.

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// The `prev` of the first line of a log: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How many records are kept in memory while the audit file cannot be written; beyond it the
/// oldest are dropped (and counted).
pub const MAX_PENDING: usize = 1024;

/// The `tracing` target of the audit events.
pub const TRACING_TARGET: &str = "devinprod::audit";

/// What the proxy did with a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Sent upstream as the app wrote it; the result passed unchanged.
    Allowed,
    /// Sent upstream as written, but its result was rewritten: masked columns
    /// (`masked_columns`).
    Rewritten,
    /// Not sent upstream; the app got an error (`reason`).
    Refused,
    /// Transaction control emulated by the proxy: `upstream_sql` is what it became (savepoint
    /// statements), possibly nothing.
    Emulated,
    /// Not an app statement: the lock watchdog stopped the session's statement or rolled the
    /// session back to protect production (`reason`).
    Killed,
}

impl Decision {
    /// The name used in the JSON line: `allowed`, `rewritten`, `refused`, `emulated` or
    /// `killed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Rewritten => "rewritten",
            Decision::Refused => "refused",
            Decision::Emulated => "emulated",
            Decision::Killed => "killed",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One statement, as written to the audit log (one JSON object per line, fields in this
/// order; `None` is written as `null`, an empty `masked_columns` is left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// RFC 3339 UTC with microseconds; filled in by [`AuditLog::record`] when empty.
    pub time: String,
    /// The session (a token has exactly one routing key).
    pub routing_key: String,
    /// The app connection id within the session.
    pub conn: u32,
    /// `query`, `prepare`, `execute`, …
    pub command: &'static str,
    /// The SQL the app sent (truncated to [`AuditConfig::max_sql_bytes`]).
    pub sql: String,
    /// What was sent upstream when it differs from `sql`, else `None`.
    pub upstream_sql: Option<String>,
    pub decision: Decision,
    /// Why it was refused, or what was rewritten.
    pub reason: Option<String>,
    /// Rows returned (result sets).
    pub rows: Option<u64>,
    /// Rows affected (OK packets).
    pub affected: Option<u64>,
    pub duration_us: u64,
    /// The server's error, e.g. `1062: Duplicate entry ...`.
    pub error: Option<String>,
    /// `schema.table.column` of the columns masked in the result.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub masked_columns: Vec<String>,
}

impl AuditRecord {
    /// A record of an allowed statement with nothing else known yet: empty `time` (filled in
    /// by the log), no rows, no error, zero duration.
    pub fn new(
        routing_key: impl Into<String>,
        conn: u32,
        command: &'static str,
        sql: impl Into<String>,
    ) -> Self {
        AuditRecord {
            time: String::new(),
            routing_key: routing_key.into(),
            conn,
            command,
            sql: sql.into(),
            upstream_sql: None,
            decision: Decision::Allowed,
            reason: None,
            rows: None,
            affected: None,
            duration_us: 0,
            error: None,
            masked_columns: Vec::new(),
        }
    }
}

/// The current time, RFC 3339 UTC with microseconds: `2025-01-31T12:34:56.123456Z`.
pub fn now_rfc3339() -> String {
    format_rfc3339_micros(time::OffsetDateTime::now_utc())
}

fn format_rfc3339_micros(t: time::OffsetDateTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    let t = t.to_offset(time::UtcOffset::UTC);
    // Formatting only fails for years outside 0..=9999.
    t.format(FORMAT)
        .unwrap_or_else(|_| format!("{}Z", t.unix_timestamp()))
}

/// Truncates `sql` to at most `max_bytes` bytes (at a char boundary) followed by the marker
/// `…[truncated, N bytes]`, N being the original length in bytes. `max_bytes == 0` means no
/// limit.
pub fn truncate_sql(sql: &mut String, max_bytes: usize) {
    if max_bytes == 0 || sql.len() <= max_bytes {
        return;
    }
    let total = sql.len();
    let mut cut = max_bytes;
    while !sql.is_char_boundary(cut) {
        cut -= 1;
    }
    sql.truncate(cut);
    sql.push_str(&format!("…[truncated, {total} bytes]"));
}

/// Where and how the audit log is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// The audit file (`…/audit.log`); `None`: no file, `tracing` only.
    pub path: Option<PathBuf>,
    /// Rotate before a line would make the file larger than this; 0: never rotate.
    pub max_bytes: u64,
    /// How many rotated files (`audit.log.1` … `audit.log.N`) are kept; 0: the full file is
    /// deleted when it is rotated.
    pub keep_files: usize,
    /// Chain the lines with SHA-256 (`"prev"` field).
    pub hash_chain: bool,
    /// SQL longer than this is truncated ([`truncate_sql`]); 0: no limit.
    pub max_sql_bytes: usize,
}

impl Default for AuditConfig {
    /// No file; 64 MiB files, 10 kept, hash chain on, SQL up to 16 KiB.
    fn default() -> Self {
        AuditConfig {
            path: None,
            max_bytes: 64 * 1024 * 1024,
            keep_files: 10,
            hash_chain: true,
            max_sql_bytes: 16 * 1024,
        }
    }
}

/// Counters of an [`AuditLog`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Lines written to the file since open.
    pub written: u64,
    /// Failed I/O operations (writes, opens, rotations) since open.
    pub io_errors: u64,
    /// Records given up because the pending queue was full.
    pub dropped: u64,
    /// Records waiting for the file to become writable again.
    pub pending: usize,
}

/// The audit log. Share it as `Arc<AuditLog>`; see the module doc for its design.
pub struct AuditLog {
    max_sql_bytes: usize,
    writer: Option<Mutex<Writer>>,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("AuditLog");
        match &self.writer {
            Some(w) => d.field("path", &lock(w).path),
            None => d.field("path", &Option::<PathBuf>::None),
        };
        d.finish_non_exhaustive()
    }
}

/// The file side of an enabled log.
struct Writer {
    path: PathBuf,
    max_bytes: u64,
    keep_files: usize,
    /// The open current file; `None` after an error (reopened on the next record).
    file: Option<File>,
    /// Bytes in the current file.
    size: u64,
    /// SHA-256 of the last line written (or [`GENESIS`]); `None` without a hash chain.
    head: Option<[u8; 32]>,
    /// Serialized records (JSON objects without `prev`) not yet written, oldest first.
    pending: VecDeque<String>,
    /// An error has been reported and nothing has succeeded since.
    failing: bool,
    stats: AuditStats,
}

fn lock(w: &Mutex<Writer>) -> MutexGuard<'_, Writer> {
    // A panic while holding the lock cannot leave the writer inconsistent in a way that
    // matters more than losing the audit log: keep going.
    w.lock().unwrap_or_else(|e| e.into_inner())
}

impl AuditLog {
    /// Opens (creating it and its directory) the audit file for append and resumes the hash
    /// chain from its last line. Without `config.path`, the same as [`AuditLog::disabled`]
    /// (with `config.max_sql_bytes`).
    pub fn open(config: AuditConfig) -> io::Result<Self> {
        let Some(path) = config.path else {
            return Ok(AuditLog {
                max_sql_bytes: config.max_sql_bytes,
                writer: None,
            });
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_dir_all_private(dir)?;
        }
        let (mut file, size) = open_current(&path)?;
        let head = if config.hash_chain {
            let mut last = last_line(&mut file, size)?;
            if last.is_none() && config.keep_files > 0 {
                // The current file is empty: the process stopped right after a rotation.
                match File::open(rotated_path(&path, 1)) {
                    Ok(mut f) => {
                        let len = f.metadata()?.len();
                        last = last_line(&mut f, len)?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Some(match last {
                Some(line) => Sha256::digest(&line).into(),
                None => [0; 32],
            })
        } else {
            None
        };
        Ok(AuditLog {
            max_sql_bytes: config.max_sql_bytes,
            writer: Some(Mutex::new(Writer {
                path,
                max_bytes: config.max_bytes,
                keep_files: config.keep_files,
                file: Some(file),
                size,
                head,
                pending: VecDeque::new(),
                failing: false,
                stats: AuditStats::default(),
            })),
        })
    }

    /// A log that only emits `tracing` events and never touches the filesystem.
    pub fn disabled() -> Self {
        AuditLog {
            max_sql_bytes: AuditConfig::default().max_sql_bytes,
            writer: None,
        }
    }

    /// Whether records go to a file.
    pub fn is_enabled(&self) -> bool {
        self.writer.is_some()
    }

    /// Records a statement: fills in an empty `time`, truncates long SQL, emits the `tracing`
    /// event and appends the line. Never fails (see the module doc for I/O errors).
    pub fn record(&self, mut r: AuditRecord) {
        if r.time.is_empty() {
            r.time = now_rfc3339();
        }
        truncate_sql(&mut r.sql, self.max_sql_bytes);
        if let Some(up) = r.upstream_sql.as_mut() {
            truncate_sql(up, self.max_sql_bytes);
        }
        emit_tracing(&r);
        let Some(writer) = &self.writer else { return };
        let body = serialize(&r);
        lock(writer).push(body);
    }

    /// The counters (all zero for a disabled log).
    pub fn stats(&self) -> AuditStats {
        match &self.writer {
            Some(w) => lock(w).stats_now(),
            None => AuditStats::default(),
        }
    }

    /// The hex SHA-256 of the last line written (the `prev` of the next one); `None` for a
    /// disabled log or without a hash chain. Publishing it elsewhere (e.g. in the service log)
    /// makes the last lines of the file verifiable too.
    pub fn chain_head(&self) -> Option<String> {
        let w = self.writer.as_ref()?;
        lock(w).head.map(|h| hex(&h))
    }
}

fn emit_tracing(r: &AuditRecord) {
    macro_rules! event {
        ($level:ident, $msg:literal) => {
            tracing::$level!(
                target: TRACING_TARGET,
                routing_key = %r.routing_key,
                conn = r.conn,
                command = r.command,
                decision = r.decision.as_str(),
                sql = %r.sql,
                upstream_sql = r.upstream_sql.as_deref(),
                reason = r.reason.as_deref(),
                rows = r.rows,
                affected = r.affected,
                duration_us = r.duration_us,
                error = r.error.as_deref(),
                masked_columns = r.masked_columns.len(),
                $msg
            )
        };
    }
    match r.decision {
        Decision::Refused => event!(warn, "statement refused"),
        Decision::Killed => event!(warn, "developer session stopped to protect production"),
        Decision::Allowed | Decision::Rewritten | Decision::Emulated => event!(info, "statement"),
    }
}

/// The record as a JSON object on one line (without `prev`). Never panics: a serializer
/// error (which these field types cannot produce) yields a small object saying so.
fn serialize(r: &AuditRecord) -> String {
    serde_json::to_string(r).unwrap_or_else(|e| {
        serde_json::json!({
            "time": r.time,
            "routing_key": r.routing_key,
            "conn": r.conn,
            "decision": r.decision.as_str(),
            "serialization_error": e.to_string(),
        })
        .to_string()
    })
}

impl Writer {
    fn stats_now(&self) -> AuditStats {
        AuditStats {
            pending: self.pending.len(),
            ..self.stats
        }
    }

    fn push(&mut self, body: String) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.stats.dropped += 1;
        }
        self.pending.push_back(body);
        let errors_before = self.stats.io_errors;
        while let Some(body) = self.pending.front() {
            let line = chain_line(body, self.head.as_ref());
            match self.write_line(&line) {
                Ok(()) => {
                    if let Some(head) = self.head.as_mut() {
                        *head = Sha256::digest(line.as_bytes()).into();
                    }
                    self.pending.pop_front();
                    self.stats.written += 1;
                }
                Err(e) => {
                    self.note_error(&e, "writing");
                    return;
                }
            }
        }
        if self.failing && self.stats.io_errors == errors_before {
            self.failing = false;
            tracing::warn!(
                target: TRACING_TARGET,
                path = %self.path.display(),
                io_errors = self.stats.io_errors,
                dropped = self.stats.dropped,
                "audit log writable again"
            );
        }
    }

    fn note_error(&mut self, e: &io::Error, doing: &str) {
        self.stats.io_errors += 1;
        if !self.failing {
            self.failing = true;
            tracing::error!(
                target: TRACING_TARGET,
                path = %self.path.display(),
                error = %e,
                "audit log: error {doing}; records are kept (up to {MAX_PENDING}) and retried with the next record"
            );
        }
    }

    /// Appends one line (plus its newline), rotating first when needed.
    fn write_line(&mut self, line: &str) -> io::Result<()> {
        let n = line.len() as u64 + 1;
        if self.file.is_none() {
            let (file, size) = open_current(&self.path)?;
            self.file = Some(file);
            self.size = size;
        }
        if self.max_bytes > 0 && self.size > 0 && self.size.saturating_add(n) > self.max_bytes {
            if let Err(e) = self.rotate() {
                if self.file.is_none() {
                    return Err(e);
                }
                // The current file was not moved: better an oversized file than a lost line.
                self.note_error(&e, "rotating");
            }
        }
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("audit file not open"));
        };
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        if let Err(e) = file.write_all(&bytes) {
            // Reopening cuts off whatever part of the line made it to the file.
            self.file = None;
            return Err(e);
        }
        self.size += n;
        Ok(())
    }

    /// `audit.log` → `audit.log.1` (shifting the older ones, deleting the oldest), then a new
    /// `audit.log`. On error before the current file is moved, `self.file` stays open; after,
    /// it is `None`.
    fn rotate(&mut self) -> io::Result<()> {
        if self.keep_files == 0 {
            ignore_not_found(fs::remove_file(&self.path))?;
        } else {
            ignore_not_found(fs::remove_file(rotated_path(&self.path, self.keep_files)))?;
            for i in (1..self.keep_files).rev() {
                ignore_not_found(fs::rename(
                    rotated_path(&self.path, i),
                    rotated_path(&self.path, i + 1),
                ))?;
            }
            ignore_not_found(fs::rename(&self.path, rotated_path(&self.path, 1)))?;
        }
        self.file = None;
        self.size = 0;
        let (file, size) = open_current(&self.path)?;
        self.file = Some(file);
        self.size = size;
        Ok(())
    }
}

/// The line for a serialized record: with `,"prev":"<hex>"` before its closing brace when
/// chained.
fn chain_line(body: &str, head: Option<&[u8; 32]>) -> String {
    match head {
        None => body.to_owned(),
        Some(h) => {
            let open = body.strip_suffix('}').unwrap_or(body);
            format!("{open},\"prev\":\"{}\"}}", hex(h))
        }
    }
}

fn ignore_not_found(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// `audit.log` → `audit.log.N`.
pub fn rotated_path(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The existing files of a log, oldest first: `audit.log.N` … `audit.log.1`, `audit.log`.
pub fn log_files(path: &Path, keep_files: usize) -> Vec<PathBuf> {
    (1..=keep_files)
        .rev()
        .map(|i| rotated_path(path, i))
        .chain(std::iter::once(path.to_path_buf()))
        .filter(|p| p.exists())
        .collect()
}

fn create_dir_all_private(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Opens the current file for append (creating it, mode 0600 on unix) and cuts off a torn
/// last line. Returns the file and its length.
fn open_current(path: &Path) -> io::Result<(File, u64)> {
    let mut options = OpenOptions::new();
    options.read(true).append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    let mut len = file.metadata()?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1))?;
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            let keep = last_newline_before(&mut file, len)?.map_or(0, |p| p + 1);
            file.set_len(keep)?;
            tracing::warn!(
                target: TRACING_TARGET,
                path = %path.display(),
                bytes = len - keep,
                "audit log ended with an incomplete line (interrupted write); cut it off"
            );
            len = keep;
        }
    }
    Ok((file, len))
}

/// The position of the last `\n` before `end`.
fn last_newline_before(file: &mut File, end: u64) -> io::Result<Option<u64>> {
    const CHUNK: u64 = 8192;
    let mut end = end;
    let mut buf = vec![0u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(start + i as u64));
        }
        end = start;
    }
    Ok(None)
}

/// The last line of a file of length `len`, without its newline; `None` when empty.
fn last_line(file: &mut File, len: u64) -> io::Result<Option<Vec<u8>>> {
    if len == 0 {
        return Ok(None);
    }
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    let end = if last[0] == b'\n' { len - 1 } else { len };
    let start = last_newline_before(file, end)?.map_or(0, |p| p + 1);
    let size = usize::try_from(end - start).map_err(io::Error::other)?;
    let mut line = vec![0u8; size];
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(&mut line)?;
    Ok(Some(line))
}

/// Verifies the hash chain of consecutive lines (without their newlines), e.g. the lines of
/// [`log_files`] in order. Returns the number of lines read, or the 1-based number of the
/// first line that breaks the chain and why.
///
/// - Each line must be a JSON object with a `prev` of 64 hex digits.
/// - The first line's `prev` is taken as the anchor: [`GENESIS`] for a complete log, or the
///   hash of a line in a rotated file that has since been deleted. (To require a complete
///   log, check that the first `prev` is [`GENESIS`].)
/// - When line k+1's `prev` is not the hash of line k, line k is reported: an edit of line k
///   is detected at line k (unless the edit is to line k+1's `prev` itself: the message
///   names both lines). A removed line is reported at the line before the gap.
/// - The last line has no successor to vouch for it: compare its hash with
///   [`AuditLog::chain_head`] to cover it.
pub fn verify_chain(lines: impl Iterator<Item = String>) -> Result<usize, (usize, String)> {
    let mut previous: Option<String> = None;
    let mut count = 0;
    for (i, line) in lines.enumerate() {
        let n = i + 1;
        let value: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| (n, format!("line {n} is not valid JSON: {e}")))?;
        let prev = value
            .get("prev")
            .ok_or_else(|| (n, format!("line {n} has no \"prev\" field")))?
            .as_str()
            .ok_or_else(|| (n, format!("line {n}: \"prev\" is not a string")))?;
        if prev.len() != 64 || !prev.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err((
                n,
                format!("line {n}: \"prev\" is not 64 lowercase hex digits"),
            ));
        }
        if let Some(expected) = &previous {
            if prev != expected {
                return Err((
                    n - 1,
                    format!(
                        "line {} does not hash to the \"prev\" recorded by line {n} \
                         (line {} was altered, or line {n}'s \"prev\", or lines were removed \
                         between them): hash {expected}, recorded {prev}",
                        n - 1,
                        n - 1
                    ),
                ));
            }
        }
        previous = Some(hex(&Sha256::digest(line.as_bytes())));
        count = n;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::sync::Arc;

    fn config(dir: &Path, max_bytes: u64, keep_files: usize) -> AuditConfig {
        AuditConfig {
            path: Some(dir.join("audit").join("audit.log")),
            max_bytes,
            keep_files,
            hash_chain: true,
            max_sql_bytes: 1024,
        }
    }

    fn record(i: u32) -> AuditRecord {
        let mut r = AuditRecord::new("rk-alice", i, "query", format!("SELECT {i} FROM t"));
        r.rows = Some(u64::from(i));
        r.duration_us = 17;
        r
    }

    fn read_lines(path: &Path) -> Vec<String> {
        let f = File::open(path).unwrap();
        io::BufReader::new(f).lines().map(|l| l.unwrap()).collect()
    }

    fn all_lines(path: &Path, keep_files: usize) -> Vec<String> {
        log_files(path, keep_files)
            .iter()
            .flat_map(|p| read_lines(p))
            .collect()
    }

    #[test]
    fn lines_are_json_with_all_fields() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 0, 3);
        let path = cfg.path.clone().unwrap();
        let log = AuditLog::open(cfg).unwrap();
        let mut r = AuditRecord::new("rk-bob", 7, "query", "SELECT 1,\n'a\"b'\r\n-- x");
        r.upstream_sql = Some("SELECT 2".into());
        r.decision = Decision::Rewritten;
        r.reason = Some("why".into());
        r.rows = Some(3);
        r.affected = Some(4);
        r.duration_us = 5;
        r.error = Some("1062: Duplicate entry 'x' for key 'PRIMARY'".into());
        r.masked_columns = vec!["shop.users.email".into()];
        log.record(r);
        let mut r = AuditRecord::new("rk-bob", 8, "execute", "DROP TABLE t");
        r.decision = Decision::Refused;
        log.record(r);
        for (decision, command) in [(Decision::Allowed, "prepare"), (Decision::Emulated, "ping")] {
            let mut r = AuditRecord::new("rk-bob", 9, command, "");
            r.decision = decision;
            log.record(r);
        }

        let lines = read_lines(&path);
        assert_eq!(lines.len(), 4);
        let v: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let first = v[0].as_object().unwrap();
        let keys: Vec<&str> = first.keys().map(String::as_str).collect();
        for key in [
            "time",
            "routing_key",
            "conn",
            "command",
            "sql",
            "upstream_sql",
            "decision",
            "reason",
            "rows",
            "affected",
            "duration_us",
            "error",
            "masked_columns",
            "prev",
        ] {
            assert!(keys.contains(&key), "missing {key} in {}", lines[0]);
        }
        assert_eq!(first["routing_key"], "rk-bob");
        assert_eq!(first["conn"], 7);
        assert_eq!(first["command"], "query");
        assert_eq!(first["sql"], "SELECT 1,\n'a\"b'\r\n-- x");
        assert_eq!(first["upstream_sql"], "SELECT 2");
        assert_eq!(first["decision"], "rewritten");
        assert_eq!(first["reason"], "why");
        assert_eq!(first["rows"], 3);
        assert_eq!(first["affected"], 4);
        assert_eq!(first["duration_us"], 5);
        assert_eq!(
            first["error"],
            "1062: Duplicate entry 'x' for key 'PRIMARY'"
        );
        assert_eq!(first["masked_columns"][0], "shop.users.email");
        assert_eq!(first["prev"], GENESIS);

        let second = v[1].as_object().unwrap();
        assert_eq!(second["decision"], "refused");
        assert!(second["upstream_sql"].is_null());
        assert!(second["rows"].is_null());
        assert!(second["error"].is_null());
        assert!(!second.contains_key("masked_columns"));
        assert_eq!(v[2]["decision"], "allowed");
        assert_eq!(v[3]["decision"], "emulated");
        assert_eq!(verify_chain(lines.into_iter()), Ok(4));
        assert_eq!(log.stats().written, 4);
    }

    #[test]
    fn time_is_filled_when_empty_and_kept_when_set() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 0, 0);
        let path = cfg.path.clone().unwrap();
        let log = AuditLog::open(cfg).unwrap();
        log.record(record(1));
        let mut r = record(2);
        r.time = "2024-02-29T23:59:59.000001Z".into();
        log.record(r);
        let lines = read_lines(&path);
        let t0: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        let t0 = t0["time"].as_str().unwrap();
        assert_eq!(t0.len(), "2025-01-31T12:34:56.123456Z".len(), "{t0}");
        let b = t0.as_bytes();
        assert_eq!(
            (b[4], b[7], b[10], b[13], b[16], b[19]),
            (b'-', b'-', b'T', b':', b':', b'.')
        );
        assert!(t0.ends_with('Z'));
        assert!(t0.starts_with("20"));
        let t1: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(t1["time"], "2024-02-29T23:59:59.000001Z");

        let fixed = time::macros::datetime!(2025-01-31 12:34:56.123456789 UTC);
        assert_eq!(format_rfc3339_micros(fixed), "2025-01-31T12:34:56.123456Z");
    }

    #[test]
    fn rotation_at_size_bound_loses_and_splits_no_line() {
        let dir = tempfile::tempdir().unwrap();
        let max_bytes = 4096;
        let keep = 1000;
        let cfg = config(dir.path(), max_bytes, keep);
        let path = cfg.path.clone().unwrap();
        let log = AuditLog::open(cfg).unwrap();
        for i in 0..2000 {
            log.record(record(i));
        }
        let files = log_files(&path, keep);
        assert!(files.len() > 50, "{} files", files.len());
        for f in &files {
            let bytes = fs::read(f).unwrap();
            assert!(
                bytes.len() as u64 <= max_bytes,
                "{} is {} bytes",
                f.display(),
                bytes.len()
            );
            assert!(!bytes.is_empty());
            assert_eq!(bytes.last(), Some(&b'\n'), "{} ends mid-line", f.display());
        }
        // A file was only rotated when the next line did not fit.
        for pair in files.windows(2) {
            let size = fs::metadata(&pair[0]).unwrap().len();
            let next_first = read_lines(&pair[1]).remove(0);
            assert!(size + next_first.len() as u64 + 1 > max_bytes);
        }
        let lines = all_lines(&path, keep);
        assert_eq!(lines.len(), 2000);
        for (i, line) in lines.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["conn"], i as u64);
        }
        assert_eq!(verify_chain(lines.into_iter()), Ok(2000));
        let stats = log.stats();
        assert_eq!(
            (stats.written, stats.io_errors, stats.dropped, stats.pending),
            (2000, 0, 0, 0)
        );
        assert_eq!(log.chain_head().unwrap().len(), 64);
    }

    #[test]
    fn rotation_keeps_only_keep_files() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 2048, 3);
        let path = cfg.path.clone().unwrap();
        let log = AuditLog::open(cfg).unwrap();
        for i in 0..2000 {
            log.record(record(i));
        }
        let in_dir = fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(in_dir, 4, "audit.log and 3 rotated files");
        for n in 1..=3 {
            assert!(rotated_path(&path, n).exists());
        }
        assert!(!rotated_path(&path, 4).exists());
        // What is left is the newest records, consecutive, ending with the last one, and its
        // chain verifies from the oldest kept line on.
        let lines = all_lines(&path, 3);
        let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        let first = first["conn"].as_u64().unwrap();
        for (k, line) in lines.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["conn"].as_u64().unwrap(), first + k as u64);
        }
        assert_eq!(first + lines.len() as u64, 2000);
        assert_eq!(verify_chain(lines.into_iter()), Ok(2000 - first as usize));
    }

    #[test]
    fn keep_zero_deletes_the_full_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 1024, 0);
        let path = cfg.path.clone().unwrap();
        let log = AuditLog::open(cfg).unwrap();
        for i in 0..100 {
            log.record(record(i));
        }
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        let lines = read_lines(&path);
        assert!(fs::metadata(&path).unwrap().len() <= 1024);
        let last: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
        assert_eq!(last["conn"], 99);
    }

    #[test]
    fn hash_chain_continues_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 1500, 100);
        let path = cfg.path.clone().unwrap();
        for round in 0..3 {
            let log = AuditLog::open(cfg.clone()).unwrap();
            for i in 0..20 {
                log.record(record(round * 20 + i));
            }
        }
        let lines = all_lines(&path, 100);
        assert_eq!(lines.len(), 60);
        assert!(lines[0].contains(GENESIS));
        assert_eq!(verify_chain(lines.into_iter()), Ok(60));
    }

    #[test]
    fn reopen_with_empty_current_file_chains_to_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 0, 5);
        let path = cfg.path.clone().unwrap();
        {
            let log = AuditLog::open(cfg.clone()).unwrap();
            for i in 0..5 {
                log.record(record(i));
            }
        }
        // As if the process stopped right after a rotation.
        fs::rename(&path, rotated_path(&path, 1)).unwrap();
        File::create(&path).unwrap();
        let log = AuditLog::open(cfg).unwrap();
        for i in 5..10 {
            log.record(record(i));
        }
        let lines = all_lines(&path, 5);
        assert_eq!(lines.len(), 10);
        assert_eq!(verify_chain(lines.into_iter()), Ok(10));
    }

    #[test]
    fn torn_last_line_is_cut_off_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 0, 5);
        let path = cfg.path.clone().unwrap();
        {
            let log = AuditLog::open(cfg.clone()).unwrap();
            for i in 0..3 {
                log.record(record(i));
            }
        }
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"time\":\"2025-").unwrap();
        drop(f);
        let log = AuditLog::open(cfg).unwrap();
        log.record(record(3));
        let lines = read_lines(&path);
        assert_eq!(lines.len(), 4);
        assert_eq!(verify_chain(lines.into_iter()), Ok(4));
    }

    #[test]
    fn editing_a_line_is_detected_at_that_line() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 0, 0);
        let path = cfg.path.clone().unwrap();
        let log = AuditLog::open(cfg).unwrap();
        for i in 0..20 {
            log.record(record(i));
        }
        let lines = read_lines(&path);
        assert_eq!(verify_chain(lines.clone().into_iter()), Ok(20));

        // One character of the SQL of line 10.
        let mut edited = lines.clone();
        assert!(edited[9].contains("SELECT 9 FROM t"));
        edited[9] = edited[9].replace("SELECT 9 FROM t", "SELECT 9 FROM u");
        let (at, why) = verify_chain(edited.into_iter()).unwrap_err();
        assert_eq!(at, 10, "{why}");

        // One character that breaks the JSON of line 10.
        let mut edited = lines.clone();
        edited[9].insert(1, 'x');
        assert_eq!(verify_chain(edited.into_iter()).unwrap_err().0, 10);

        // A removed line: reported at the line before the gap.
        let mut edited = lines.clone();
        edited.remove(10);
        assert_eq!(verify_chain(edited.into_iter()).unwrap_err().0, 10);

        // Lines without a chain.
        let (at, why) = verify_chain(["{\"a\":1}".to_string()].into_iter()).unwrap_err();
        assert_eq!(at, 1);
        assert!(why.contains("prev"), "{why}");
        assert_eq!(verify_chain(std::iter::empty()), Ok(0));
    }

    #[test]
    fn no_hash_chain_means_no_prev() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), 0, 0);
        cfg.hash_chain = false;
        let path = cfg.path.clone().unwrap();
        let log = AuditLog::open(cfg).unwrap();
        log.record(record(1));
        let v: serde_json::Value = serde_json::from_str(&read_lines(&path)[0]).unwrap();
        assert!(v.get("prev").is_none());
        assert_eq!(v["conn"], 1);
        assert_eq!(log.chain_head(), None);
    }

    #[test]
    fn long_sql_is_truncated_at_a_char_boundary() {
        let mut s = "é".repeat(10); // 20 bytes
        truncate_sql(&mut s, 5);
        assert_eq!(s, "éé…[truncated, 20 bytes]");
        let mut s = "short".to_string();
        truncate_sql(&mut s, 5);
        assert_eq!(s, "short");
        let mut s = "unlimited".to_string();
        truncate_sql(&mut s, 0);
        assert_eq!(s, "unlimited");

        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), 0, 0);
        cfg.max_sql_bytes = 100;
        let path = cfg.path.clone().unwrap();
        let log = AuditLog::open(cfg).unwrap();
        let mut r = AuditRecord::new("rk", 1, "query", format!("SELECT '{}'", "日".repeat(1000)));
        r.upstream_sql = Some("x".repeat(5000));
        r.decision = Decision::Rewritten;
        log.record(r);
        let v: serde_json::Value = serde_json::from_str(&read_lines(&path)[0]).unwrap();
        let sql = v["sql"].as_str().unwrap();
        assert!(sql.ends_with("…[truncated, 3009 bytes]"), "{sql}");
        assert!(sql.len() <= 100 + "…[truncated, 3009 bytes]".len());
        assert_eq!(
            v["upstream_sql"],
            format!("{}…[truncated, 5000 bytes]", "x".repeat(100))
        );
    }

    #[test]
    fn disabled_log_touches_no_filesystem() {
        let log = AuditLog::disabled();
        assert!(!log.is_enabled());
        for i in 0..10 {
            log.record(record(i));
        }
        assert_eq!(log.stats(), AuditStats::default());
        assert_eq!(log.chain_head(), None);

        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(AuditConfig::default()).unwrap();
        assert!(!log.is_enabled());
        log.record(record(1));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn io_errors_are_counted_and_records_retried() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 1, 2); // every line rotates
        let path = cfg.path.clone().unwrap();
        let audit_dir = path.parent().unwrap().to_path_buf();
        let log = AuditLog::open(cfg).unwrap();
        log.record(record(0));
        fs::remove_dir_all(&audit_dir).unwrap();
        for i in 1..4 {
            log.record(record(i));
        }
        let stats = log.stats();
        assert_eq!(stats.written, 1);
        assert_eq!(stats.pending, 3);
        assert!(stats.io_errors >= 3, "{stats:?}");
        fs::create_dir_all(&audit_dir).unwrap();
        log.record(record(4));
        let stats = log.stats();
        assert_eq!((stats.written, stats.pending, stats.dropped), (5, 0, 0));
        let lines = all_lines(&path, 2);
        let conns: Vec<u64> = lines
            .iter()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["conn"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(conns, [2, 3, 4]);
        assert_eq!(verify_chain(lines.into_iter()), Ok(3));
    }

    #[test]
    fn concurrent_records_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 8192, 1000);
        let path = cfg.path.clone().unwrap();
        let log = Arc::new(AuditLog::open(cfg).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    for i in 0..250 {
                        log.record(record(t * 1000 + i));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let lines = all_lines(&path, 1000);
        assert_eq!(lines.len(), 1000);
        assert_eq!(verify_chain(lines.into_iter()), Ok(1000));
    }
}
