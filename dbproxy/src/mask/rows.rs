//! Masking values on their way back to the app, packet by packet, in both result formats: text
//! rows (COM_QUERY) and binary rows (COM_STMT_EXECUTE).
//!
//! Which columns to mask comes from each result's column definitions: for a column that is a
//! plain reference to a table column, MariaDB reports the real schema, table and column
//! (`org_table`, `org_name`) even under aliases. Where it does not (an expression — which the
//! [`super::analysis`] only lets through when it involves no masked column), the analysis'
//! reading of the projection is used instead. A binary value whose type cannot carry the
//! masked value (a masked DATE, an INT widened by `digits`) has its column definition changed to
//! one that can (VAR_STRING, LONGLONG) before any row is sent.

use super::analysis::MaskedProjection;
use super::strategy::{MaskStrategy, Masker};
use super::MaskRules;
use crate::upstream::Position;

const TYPE_DECIMAL: u8 = 0;
const TYPE_TINY: u8 = 1;
const TYPE_SHORT: u8 = 2;
const TYPE_LONG: u8 = 3;
const TYPE_FLOAT: u8 = 4;
const TYPE_DOUBLE: u8 = 5;
const TYPE_NULL: u8 = 6;
const TYPE_TIMESTAMP: u8 = 7;
const TYPE_LONGLONG: u8 = 8;
const TYPE_INT24: u8 = 9;
const TYPE_DATE: u8 = 10;
const TYPE_TIME: u8 = 11;
const TYPE_DATETIME: u8 = 12;
const TYPE_YEAR: u8 = 13;
const TYPE_VAR_STRING: u8 = 253;
const FLAG_UNSIGNED: u16 = 0x20;
const UTF8MB4_GENERAL_CI: u16 = 45;

#[derive(Debug, Clone)]
struct ColumnMask {
    strategy: MaskStrategy,
    max_chars: Option<usize>,
    /// The type the server sends (binary rows are decoded by it).
    wire_type: u8,
    unsigned: bool,
}

/// One column as its definition describes it.
#[derive(Debug, Clone)]
struct Column {
    wire_type: u8,
    unsigned: bool,
    mask: Option<ColumnMask>,
}

/// Masks one response. Feed it every packet with its [`Position`].
pub struct ResultMasker<'a> {
    rules: &'a MaskRules,
    masker: &'a Masker,
    projection: &'a MaskedProjection,
    binary: bool,
    columns: Vec<Column>,
    any_masked: bool,
    /// Column names of the result, to know SHOW WARNINGS (Level, Code, Message) when it comes.
    names: Vec<String>,
    /// `schema.table.column` of every column masked so far (for the audit log).
    pub masked: Vec<String>,
    /// Rows seen (all result sets).
    pub rows: u64,
}

impl<'a> ResultMasker<'a> {
    pub fn new(
        rules: &'a MaskRules,
        masker: &'a Masker,
        projection: &'a MaskedProjection,
        binary: bool,
    ) -> Self {
        Self {
            rules,
            masker,
            projection,
            binary,
            columns: Vec::new(),
            any_masked: false,
            names: Vec::new(),
            masked: Vec::new(),
            rows: 0,
        }
    }

    pub fn on_packet(&mut self, position: Position, p: &mut Vec<u8>) {
        match position {
            Position::ResultStart => {
                self.columns.clear();
                self.names.clear();
                self.any_masked = false;
            }
            Position::Column => self.on_column(p),
            Position::Row if !self.binary && self.names == ["Level", "Code", "Message"] => {
                self.rows += 1;
                if let Some(row) = warning_withheld(p) {
                    *p = row;
                }
            }
            Position::Row => {
                self.rows += 1;
                if self.any_masked {
                    let masked = if self.binary {
                        self.binary_row(p)
                    } else {
                        self.text_row(p)
                    };
                    // A row we cannot read is not passed on as it is: every masked column
                    // becomes NULL instead (the row is rebuilt from what could be read, or
                    // emptied of values, but never leaked).
                    *p = masked.unwrap_or_else(|| {
                        tracing::warn!(
                            binary = self.binary,
                            columns = self.columns.len(),
                            "a result row could not be read to mask it: sent as all NULL"
                        );
                        self.all_null_row()
                    });
                }
            }
            _ => {}
        }
    }

    fn on_column(&mut self, p: &mut [u8]) {
        let index = self.columns.len();
        let def = ColumnDef::parse(p);
        self.names
            .push(def.as_ref().map(|d| d.name.clone()).unwrap_or_default());
        let Some(def) = def else {
            // Unreadable definition: mask by position if the analysis knows it, else nothing to
            // key on — treat as masked with `null` to fail closed.
            self.columns.push(Column {
                wire_type: TYPE_VAR_STRING,
                unsigned: false,
                mask: Some(ColumnMask {
                    strategy: MaskStrategy::Null,
                    max_chars: None,
                    wire_type: TYPE_VAR_STRING,
                    unsigned: false,
                }),
            });
            self.any_masked = true;
            return;
        };
        let by_definition = self
            .rules
            .strategy(&def.schema, &def.org_table, &def.org_name)
            .map(|s| {
                (
                    s.clone(),
                    format!("{}.{}.{}", def.schema, def.org_table, def.org_name),
                )
            });
        let by_position = self
            .projection
            .positions
            .as_ref()
            .and_then(|ps| ps.get(index).cloned().flatten())
            .and_then(|(s, t, c)| {
                self.rules
                    .strategy(&s, &t, &c)
                    .map(|st| (st.clone(), format!("{s}.{t}.{c}")))
            });
        let unsigned = def.flags & FLAG_UNSIGNED != 0;
        let mask = by_definition.or(by_position).map(|(strategy, name)| {
            if !self.masked.contains(&name) {
                self.masked.push(name);
            }
            let mbmaxlen = match def.charset {
                63 => 1,
                33 | 83 | 192..=215 | 223 => 3,
                8 | 47 | 48 | 31 => 1,
                _ => 4,
            };
            // Numbers' "length" is a display width, not a limit on what the column can hold.
            let textual = !matches!(
                def.wire_type,
                TYPE_TINY
                    | TYPE_SHORT
                    | TYPE_LONG
                    | TYPE_INT24
                    | TYPE_LONGLONG
                    | TYPE_YEAR
                    | TYPE_FLOAT
                    | TYPE_DOUBLE
                    | TYPE_DECIMAL
                    | 246
            );
            ColumnMask {
                strategy,
                max_chars: textual.then(|| (def.column_length as usize / mbmaxlen).max(1)),
                wire_type: def.wire_type,
                unsigned,
            }
        });
        if let Some(m) = &mask {
            self.any_masked = true;
            if self.binary && !matches!(m.strategy, MaskStrategy::Null) {
                // Give the column a type that can carry the masked value.
                let new_type = match def.wire_type {
                    TYPE_TINY | TYPE_SHORT | TYPE_LONG | TYPE_INT24 | TYPE_YEAR | TYPE_LONGLONG => {
                        Some(TYPE_LONGLONG)
                    }
                    TYPE_FLOAT | TYPE_DOUBLE => Some(TYPE_DOUBLE),
                    TYPE_DATE | TYPE_DATETIME | TYPE_TIMESTAMP | TYPE_TIME | TYPE_NULL => {
                        Some(TYPE_VAR_STRING)
                    }
                    _ => None,
                };
                if let Some(t) = new_type {
                    p[def.type_offset] = t;
                    if t == TYPE_VAR_STRING {
                        p[def.type_offset - 6..def.type_offset - 4]
                            .copy_from_slice(&UTF8MB4_GENERAL_CI.to_le_bytes());
                    }
                }
            }
        }
        self.columns.push(Column {
            wire_type: def.wire_type,
            unsigned,
            mask,
        });
    }

    fn mask_text(&self, m: &ColumnMask, value: &[u8]) -> Option<Vec<u8>> {
        self.masker.mask(&m.strategy, value, m.max_chars)
    }

    fn text_row(&self, p: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(p.len());
        let mut at = 0;
        for col in &self.columns {
            if p.get(at) == Some(&0xFB) {
                out.push(0xFB);
                at += 1;
                continue;
            }
            let (value, next) = lenenc_bytes(p, at)?;
            at = next;
            match &col.mask {
                None => put_lenenc_bytes(&mut out, value),
                Some(m) => match self.mask_text(m, value) {
                    Some(v) => put_lenenc_bytes(&mut out, &v),
                    None => out.push(0xFB),
                },
            }
        }
        (at == p.len()).then_some(out)
    }

    fn binary_row(&self, p: &[u8]) -> Option<Vec<u8>> {
        let n = self.columns.len();
        let bitmap_len = (n + 7 + 2) / 8;
        if p.first() != Some(&0x00) || p.len() < 1 + bitmap_len {
            return None;
        }
        let mut bitmap = p[1..1 + bitmap_len].to_vec();
        let mut values = Vec::with_capacity(p.len());
        let mut at = 1 + bitmap_len;
        for (i, col) in self.columns.iter().enumerate() {
            let (byte, bit) = ((i + 2) / 8, (i + 2) % 8);
            if bitmap[byte] & (1 << bit) != 0 {
                continue;
            }
            let (raw, next) = binary_value(p, at, col.wire_type)?;
            at = next;
            let Some(m) = &col.mask else {
                values.extend_from_slice(raw);
                continue;
            };
            let text = binary_to_text(raw, col.wire_type, col.unsigned)?;
            let masked = if matches!(m.strategy, MaskStrategy::Null) {
                None
            } else {
                self.mask_text(m, &text)
            };
            let encoded = masked.and_then(|v| encode_masked(&v, m));
            match encoded {
                Some(bytes) => values.extend_from_slice(&bytes),
                None => bitmap[byte] |= 1 << bit,
            }
        }
        if at != p.len() {
            return None;
        }
        let mut out = Vec::with_capacity(1 + bitmap_len + values.len());
        out.push(0x00);
        out.extend_from_slice(&bitmap);
        out.extend_from_slice(&values);
        Some(out)
    }

    /// A row whose values could not be read: only NULLs (text) or an all-NULL bitmap (binary).
    fn all_null_row(&self) -> Vec<u8> {
        let n = self.columns.len();
        if self.binary {
            let bitmap_len = (n + 7 + 2) / 8;
            let mut out = vec![0u8; 1 + bitmap_len];
            for i in 0..n {
                out[1 + (i + 2) / 8] |= 1 << ((i + 2) % 8);
            }
            out
        } else {
            vec![0xFB; n]
        }
    }
}

/// A SHOW WARNINGS row (Level, Code, Message) with the values its message quotes withheld;
/// `None` to leave it as it is.
fn warning_withheld(p: &[u8]) -> Option<Vec<u8>> {
    let (level, at) = lenenc_bytes(p, 0)?;
    let (code, at) = lenenc_bytes(p, at)?;
    let (message, end) = lenenc_bytes(p, at)?;
    if end != p.len() {
        return None;
    }
    let code: u16 = std::str::from_utf8(code).ok()?.parse().ok()?;
    let withheld = super::withhold_values(code, &String::from_utf8_lossy(message))?;
    let mut out = Vec::with_capacity(p.len());
    put_lenenc_bytes(&mut out, level);
    put_lenenc_bytes(&mut out, code.to_string().as_bytes());
    put_lenenc_bytes(&mut out, withheld.as_bytes());
    Some(out)
}

/// The masked text value in the (possibly changed) binary type of its column.
fn encode_masked(v: &[u8], m: &ColumnMask) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(v).ok();
    match m.wire_type {
        TYPE_TINY | TYPE_SHORT | TYPE_LONG | TYPE_INT24 | TYPE_YEAR | TYPE_LONGLONG => {
            let t = text?.trim();
            if m.unsigned {
                t.parse::<u64>().ok().map(|n| n.to_le_bytes().to_vec())
            } else {
                t.parse::<i64>().ok().map(|n| n.to_le_bytes().to_vec())
            }
        }
        TYPE_FLOAT | TYPE_DOUBLE => text?
            .trim()
            .parse::<f64>()
            .ok()
            .map(|f| f.to_le_bytes().to_vec()),
        _ => {
            let mut out = Vec::with_capacity(v.len() + 9);
            put_lenenc_bytes(&mut out, v);
            Some(out)
        }
    }
}

/// The parts of a column definition (protocol 41) the masker needs.
struct ColumnDef {
    schema: String,
    name: String,
    org_table: String,
    org_name: String,
    charset: u16,
    column_length: u32,
    wire_type: u8,
    flags: u16,
    type_offset: usize,
}

impl ColumnDef {
    fn parse(p: &[u8]) -> Option<Self> {
        let mut at = 0;
        let mut strings = Vec::with_capacity(6);
        for _ in 0..6 {
            let (s, next) = lenenc_bytes(p, at)?;
            strings.push(String::from_utf8_lossy(s).into_owned());
            at = next;
        }
        // Length of the fixed fields (0x0c), then charset, length, type, flags, decimals.
        let fixed = p.get(at..at + 11)?;
        let charset = u16::from_le_bytes([fixed[1], fixed[2]]);
        let column_length = u32::from_le_bytes([fixed[3], fixed[4], fixed[5], fixed[6]]);
        let wire_type = fixed[7];
        let flags = u16::from_le_bytes([fixed[8], fixed[9]]);
        Some(Self {
            schema: strings[1].clone(),
            name: strings[4].clone(),
            org_table: strings[3].clone(),
            org_name: strings[5].clone(),
            charset,
            column_length,
            wire_type,
            flags,
            type_offset: at + 7,
        })
    }
}

/// A length-encoded integer at `at`: (value, position after it).
fn lenenc_int(p: &[u8], at: usize) -> Option<(u64, usize)> {
    let first = *p.get(at)?;
    let (len, skip) = match first {
        0..=0xFA => return Some((u64::from(first), at + 1)),
        0xFC => (2, 1),
        0xFD => (3, 1),
        0xFE => (8, 1),
        _ => return None,
    };
    let bytes = p.get(at + skip..at + skip + len)?;
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        v |= u64::from(*b) << (8 * i);
    }
    Some((v, at + skip + len))
}

fn lenenc_bytes(p: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let (len, start) = lenenc_int(p, at)?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    Some((p.get(start..end)?, end))
}

fn put_lenenc_bytes(out: &mut Vec<u8>, v: &[u8]) {
    let n = v.len() as u64;
    match n {
        0..=0xFA => out.push(n as u8),
        0xFB..=0xFFFF => {
            out.push(0xFC);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xFF_FFFF => {
            out.push(0xFD);
            out.extend_from_slice(&n.to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xFE);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
    out.extend_from_slice(v);
}

/// One binary-protocol value at `at`: (its bytes as they are on the wire, length prefix
/// included; position after it).
fn binary_value(p: &[u8], at: usize, wire_type: u8) -> Option<(&[u8], usize)> {
    let fixed = match wire_type {
        TYPE_NULL => Some(0),
        TYPE_TINY => Some(1),
        TYPE_SHORT | TYPE_YEAR => Some(2),
        TYPE_LONG | TYPE_INT24 | TYPE_FLOAT => Some(4),
        TYPE_LONGLONG | TYPE_DOUBLE => Some(8),
        TYPE_DATE | TYPE_DATETIME | TYPE_TIMESTAMP | TYPE_TIME => {
            let len = usize::from(*p.get(at)?);
            return Some((p.get(at..at + 1 + len)?, at + 1 + len));
        }
        _ => None,
    };
    match fixed {
        Some(n) => Some((p.get(at..at + n)?, at + n)),
        None => {
            let (_, end) = lenenc_bytes(p, at)?;
            Some((&p[at..end], end))
        }
    }
}

/// The text-protocol form of a binary value (what strategies work on).
fn binary_to_text(raw: &[u8], wire_type: u8, unsigned: bool) -> Option<Vec<u8>> {
    let int = |bytes: &[u8]| -> i128 {
        let mut v: u64 = 0;
        for (i, b) in bytes.iter().enumerate() {
            v |= u64::from(*b) << (8 * i);
        }
        let bits = bytes.len() * 8;
        if unsigned || bits == 0 {
            i128::from(v)
        } else {
            let shift = 64 - bits;
            i128::from(((v << shift) as i64) >> shift)
        }
    };
    let s = match wire_type {
        TYPE_TINY | TYPE_SHORT | TYPE_YEAR | TYPE_LONG | TYPE_INT24 | TYPE_LONGLONG => {
            int(raw).to_string()
        }
        TYPE_FLOAT => f32::from_le_bytes(raw.try_into().ok()?).to_string(),
        TYPE_DOUBLE => f64::from_le_bytes(raw.try_into().ok()?).to_string(),
        TYPE_DATE | TYPE_DATETIME | TYPE_TIMESTAMP => {
            let b = &raw[1..];
            let y = if b.len() >= 2 {
                u16::from_le_bytes([b[0], b[1]])
            } else {
                0
            };
            let g = |i: usize| b.get(i).copied().unwrap_or(0);
            let mut s = format!("{y:04}-{:02}-{:02}", g(2), g(3));
            if wire_type != TYPE_DATE {
                s.push_str(&format!(" {:02}:{:02}:{:02}", g(4), g(5), g(6)));
                if b.len() >= 11 {
                    let micro = u32::from_le_bytes([b[7], b[8], b[9], b[10]]);
                    s.push_str(&format!(".{micro:06}"));
                }
            }
            s
        }
        TYPE_TIME => {
            let b = &raw[1..];
            if b.is_empty() {
                "00:00:00".to_owned()
            } else {
                let neg = b[0] == 1;
                let days = u32::from_le_bytes([b[1], b[2], b[3], b[4]]);
                let hours = days * 24 + u32::from(b[5]);
                let mut s = format!(
                    "{}{hours:02}:{:02}:{:02}",
                    if neg { "-" } else { "" },
                    b[6],
                    b[7]
                );
                if b.len() >= 12 {
                    let micro = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
                    s.push_str(&format!(".{micro:06}"));
                }
                s
            }
        }
        TYPE_DECIMAL => return lenenc_bytes(raw, 0).map(|(v, _)| v.to_vec()),
        _ => return lenenc_bytes(raw, 0).map(|(v, _)| v.to_vec()),
    };
    Some(s.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column_def(schema: &str, table: &str, name: &str, wire_type: u8, length: u32) -> Vec<u8> {
        let mut p = Vec::new();
        for s in ["def", schema, table, table, name, name] {
            put_lenenc_bytes(&mut p, s.as_bytes());
        }
        p.push(0x0c);
        p.extend_from_slice(&45u16.to_le_bytes());
        p.extend_from_slice(&length.to_le_bytes());
        p.push(wire_type);
        p.extend_from_slice(&0u16.to_le_bytes());
        p.extend_from_slice(&[0, 0, 0]);
        p
    }

    fn rules() -> (MaskRules, Masker) {
        let mut columns = std::collections::BTreeMap::new();
        columns.insert("shop.users.email".to_string(), "email".to_string());
        columns.insert("shop.users.ssn".to_string(), "digits".to_string());
        (MaskRules::parse(&columns).unwrap(), Masker::new(&[7u8; 32]))
    }

    #[test]
    fn binary_rows_are_masked_and_retyped() {
        let (rules, masker) = rules();
        let projection = MaskedProjection::default();
        let mut m = ResultMasker::new(&rules, &masker, &projection, true);
        m.on_packet(Position::ResultStart, &mut vec![3]);
        let mut defs = vec![
            column_def("shop", "users", "id", TYPE_LONG, 11),
            column_def("shop", "users", "email", TYPE_VAR_STRING, 256),
            column_def("shop", "users", "ssn", TYPE_LONG, 11),
        ];
        for d in &mut defs {
            m.on_packet(Position::Column, d);
        }
        assert_eq!(defs[2][defs[2].len() - 6], TYPE_LONGLONG, "widened");
        let mut row = vec![0x00, 0x00];
        row.extend_from_slice(&7i32.to_le_bytes());
        put_lenenc_bytes(&mut row, b"ann@example.com");
        row.extend_from_slice(&123456789i32.to_le_bytes());
        m.on_packet(Position::Row, &mut row);
        assert_eq!(&row[2..6], &7i32.to_le_bytes(), "unmasked column untouched");
        let (email, next) = lenenc_bytes(&row, 6).unwrap();
        assert_eq!(
            email,
            masker
                .mask(&MaskStrategy::Email, b"ann@example.com", Some(64))
                .unwrap()
                .as_slice()
        );
        let ssn = i64::from_le_bytes(row[next..next + 8].try_into().unwrap());
        assert_eq!(ssn.to_string().len(), 9);
        assert_ne!(ssn, 123456789);
        assert_eq!(next + 8, row.len());
        assert_eq!(m.masked, ["shop.users.email", "shop.users.ssn"]);
    }

    #[test]
    fn text_rows_are_masked_and_nulls_kept() {
        let (rules, masker) = rules();
        let projection = MaskedProjection::default();
        let mut m = ResultMasker::new(&rules, &masker, &projection, false);
        m.on_packet(Position::ResultStart, &mut vec![2]);
        m.on_packet(
            Position::Column,
            &mut column_def("shop", "users", "email", TYPE_VAR_STRING, 256),
        );
        m.on_packet(
            Position::Column,
            &mut column_def("shop", "users", "ssn", TYPE_LONG, 11),
        );
        let mut row = Vec::new();
        put_lenenc_bytes(&mut row, b"ann@example.com");
        row.push(0xFB);
        m.on_packet(Position::Row, &mut row);
        let (email, next) = lenenc_bytes(&row, 0).unwrap();
        assert_ne!(email, b"ann@example.com");
        assert_eq!(email.len(), 15);
        assert_eq!(&row[next..], &[0xFB]);
    }

    #[test]
    fn lenenc_round_trip() {
        for n in [0usize, 1, 250, 251, 65535, 65536, 70000] {
            let v = vec![b'x'; n];
            let mut out = Vec::new();
            put_lenenc_bytes(&mut out, &v);
            let (back, end) = lenenc_bytes(&out, 0).unwrap();
            assert_eq!(back, &v[..]);
            assert_eq!(end, out.len());
        }
    }

    #[test]
    fn binary_ints_decode_with_sign() {
        assert_eq!(binary_to_text(&[0xFF], TYPE_TINY, false).unwrap(), b"-1");
        assert_eq!(binary_to_text(&[0xFF], TYPE_TINY, true).unwrap(), b"255");
        assert_eq!(
            binary_to_text(&(-123456i32).to_le_bytes(), TYPE_LONG, false).unwrap(),
            b"-123456"
        );
        assert_eq!(
            binary_to_text(&u64::MAX.to_le_bytes(), TYPE_LONGLONG, true).unwrap(),
            u64::MAX.to_string().as_bytes()
        );
    }

    #[test]
    fn binary_dates_decode() {
        // 2024-02-29 13:14:15.000016
        let raw = [11u8, 0xE8, 0x07, 2, 29, 13, 14, 15, 16, 0, 0, 0];
        assert_eq!(
            binary_to_text(&raw, TYPE_DATETIME, false).unwrap(),
            b"2024-02-29 13:14:15.000016"
        );
        assert_eq!(
            binary_to_text(&[0u8], TYPE_DATE, false).unwrap(),
            b"0000-00-00"
        );
    }
}
