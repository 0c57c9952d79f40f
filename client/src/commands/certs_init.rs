//! `devinprod certs init --dir DIR [--relay-name NAME]...`

use anyhow::Context;
use std::path::Path;

pub fn run(dir: &Path, relay_names: &[String]) -> anyhow::Result<i32> {
    let outcomes = certs::ensure_pki(dir, relay_names)
        .with_context(|| format!("cannot create the PKI in {}", dir.display()))?;
    for o in outcomes {
        match o {
            certs::FileOutcome::Created(p) => println!("created {}", p.display()),
            certs::FileOutcome::Kept(p) => println!("kept    {}", p.display()),
        }
    }
    Ok(0)
}
