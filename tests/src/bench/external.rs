//! The scenarios that live in their own binaries (`db-bench`: database; `scale-bench`: relay
//! memory and reconnection at scale). Each prints a markdown section on stdout and exits 0
//! when every measurement ran; the orchestrator runs them after its own scenarios (with its
//! own services stopped), passes `--smoke` on, and includes their sections as they are.

use super::proc::{self, command};
use std::path::Path;
use std::time::Duration;

pub struct External {
    pub markdown: String,
    /// A failed run (non-zero exit, timeout): the benchmark exits non-zero.
    pub failed: bool,
}

/// A section for a binary whose release build failed in this run (an older binary may
/// still be on disk: it is not run).
pub fn build_failed(name: &str, title: &str) -> External {
    External {
        markdown: format!(
            "### {title}\n\n**FAILED**: the release build of the `tests` binaries failed in this run, so \
             `{name}` was not run (see the compiler's output).\n\n"
        ),
        failed: true,
    }
}

/// Runs `target/release/NAME [--smoke]`; reports "not built" when the binary does not exist.
pub fn run(release: &Path, name: &str, title: &str, smoke: bool) -> External {
    let bin = release.join(name);
    if !bin.is_file() {
        return External {
            markdown: format!(
                "### {title}\n\nNot built: `{}` does not exist (its source, `tests/src/bin/{name}.rs`, \
                 is not in this tree yet).\n\n",
                bin.display()
            ),
            failed: false,
        };
    }
    eprintln!("== {title}: {name}{}", if smoke { " --smoke" } else { "" });
    let mut cmd = command(&bin);
    if smoke {
        cmd.arg("--smoke");
    }
    let limit = Duration::from_secs(if smoke { 600 } else { 3600 });
    match proc::run(name, cmd, limit, true) {
        Ok(done) if done.status.success() => {
            let mut md = done.stdout.trim_end().to_owned();
            if !md.starts_with("### ") {
                md = format!("### {title}\n\n{md}");
            }
            md.push_str("\n\n");
            External {
                markdown: md,
                failed: false,
            }
        }
        Ok(done) => {
            let why = match done.status.code() {
                Some(2) => {
                    "something it needs is missing (exit status 2; see its output)".to_owned()
                }
                _ => format!("{}", done.status),
            };
            let mut md = format!(
                "### {title}\n\n**FAILED**: `{name}` {why}. Its output, which is not a result:\n\n"
            );
            if done.stdout.trim().is_empty() {
                md.push_str("(nothing on stdout)\n\n");
            } else {
                md.push_str(done.stdout.trim_end());
                md.push_str("\n\n");
            }
            External {
                markdown: md,
                failed: true,
            }
        }
        Err(e) => External {
            markdown: format!(
                "### {title}\n\n**FAILED**: {}\n\n",
                super::stats::one_line(&e)
            ),
            failed: true,
        },
    }
}
