//! `cargo run --release -p tests --bin bench -- [--smoke] [--out FILE] [--rounds N]`: the
//! benchmark of issue 6 (see BENCHMARKS.md). The scenarios live in `tests::bench`.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(tests::bench::main())
}
