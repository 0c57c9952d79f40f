//! The masking rules of `dbproxy.toml`: `"schema.table.column" = "strategy"`.

use super::strategy::MaskStrategy;
use std::collections::{BTreeMap, HashMap};

/// Masked columns by (schema, table), all lower-cased (MariaDB compares column names without
/// case, and table names without case on most installations: matching without case can only
/// mask more).
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
                .entry((schema.to_ascii_lowercase(), table.to_ascii_lowercase()))
                .or_default()
                .insert(column.to_ascii_lowercase(), strategy);
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
        let table = table.to_ascii_lowercase();
        let schema = schema.map(|s| s.to_ascii_lowercase());
        self.tables
            .iter()
            .filter(|((s, t), _)| *t == table && schema.as_ref().is_none_or(|want| want == s))
            .flat_map(|((s, t), cols)| cols.keys().map(move |c| (s.clone(), t.clone(), c.clone())))
            .collect()
    }

    /// The strategy for one column, as a result's column definition names it.
    pub fn strategy(&self, schema: &str, table: &str, column: &str) -> Option<&MaskStrategy> {
        self.tables
            .get(&(schema.to_ascii_lowercase(), table.to_ascii_lowercase()))?
            .get(&column.to_ascii_lowercase())
    }

    /// Every masked table, as (schema, table).
    pub fn tables(&self) -> impl Iterator<Item = &(String, String)> {
        self.tables.keys()
    }
}
