//! Any SQL text a developer's app can send: the statement policy, the bounded parser and the
//! masking analysis must answer (allow, emulate or refuse) and never panic or overflow the
//! stack — one query must never take a process down (issue 15).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::sync::OnceLock;

fn rules() -> &'static dbproxy::mask::MaskRules {
    static RULES: OnceLock<dbproxy::mask::MaskRules> = OnceLock::new();
    RULES.get_or_init(|| {
        let mut columns = BTreeMap::new();
        columns.insert("shop.users.email".to_string(), "email".to_string());
        columns.insert("shop.users.ssn".to_string(), "digits".to_string());
        dbproxy::mask::MaskRules::parse(&columns).expect("rules")
    })
}

fuzz_target!(|data: &[u8]| {
    let sql = String::from_utf8_lossy(data);
    let _ = dbproxy::policy::classify(&sql);
    if let Some(statement) = dbproxy::policy::parse_statement(&sql) {
        let _ = dbproxy::mask::analysis::check(&statement, rules(), Some("shop"));
    }
});
