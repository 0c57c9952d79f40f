//! The masking rules of `dbproxy.toml`: `"schema.table.column" = "strategy"`.

use super::strategy::MaskStrategy;
use std::collections::{BTreeMap, HashMap};
use unicode_normalization::UnicodeNormalization;

/// A name as MariaDB compares identifiers (utf8 general collation): without case and without
/// accents (`PRÉNOM`, `prenom` and `prénom` are one column). Folding more than the server does
/// can only mask more.
pub fn fold(name: &str) -> String {
    name.nfd()
        .filter(|c| {
            !matches!(u32::from(*c),
                0x0300..=0x036F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF | 0xFE20..=0xFE2F)
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// Masked columns by (schema, table), all [`fold`]ed (MariaDB compares column names without
/// case or accents, and table names without case on most installations: matching more loosely
/// can only mask more).
#[derive(Debug, Clone, Default)]
pub struct MaskRules {
    tables: HashMap<(String, String), HashMap<String, MaskStrategy>>,
}

impl MaskRules {
    /// From the `[masking.columns]` table. Errors name the offending key.
    pub fn parse(columns: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut tables: HashMap<(String, String), HashMap<String, MaskStrategy>> = HashMap::new();
        for (key, strategy) in columns {
            let parts: Vec<&str> = key.split('.').collect();
            let [schema, table, column] = parts.as_slice() else {
                return Err(format!(
                    "masking.columns: key `{key}` must be `schema.table.column`"
                ));
            };
            if [schema, table, column].iter().any(|p| p.trim().is_empty()) {
                return Err(format!(
                    "masking.columns: key `{key}` has an empty part; expected `schema.table.column`"
                ));
            }
            let strategy: MaskStrategy = strategy
                .parse()
                .map_err(|e| format!("masking.columns.\"{key}\": {e}"))?;
            tables
                .entry((fold(schema), fold(table)))
                .or_default()
                .insert(fold(column), strategy);
        }
        Ok(Self { tables })
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Masked columns of `table` as (schema, table, column). With no schema known (no database
    /// selected), every schema's table of that name counts.
    pub fn masked_columns(
        &self,
        schema: Option<&str>,
        table: &str,
    ) -> Vec<(String, String, String)> {
        let table = fold(table);
        let schema = schema.map(fold);
        self.tables
            .iter()
            .filter(|((s, t), _)| *t == table && schema.as_ref().is_none_or(|want| want == s))
            .flat_map(|((s, t), cols)| cols.keys().map(move |c| (s.clone(), t.clone(), c.clone())))
            .collect()
    }

    /// The strategy for one column, as a result's column definition names it.
    pub fn strategy(&self, schema: &str, table: &str, column: &str) -> Option<&MaskStrategy> {
        self.tables
            .get(&(fold(schema), fold(table)))?
            .get(&fold(column))
    }

    /// Every masked table, as (schema, table).
    pub fn tables(&self) -> impl Iterator<Item = &(String, String)> {
        self.tables.keys()
    }
}
