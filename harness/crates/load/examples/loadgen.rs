//! Stand-alone `meshtest load` for benchmarks: parses LoadArgs and calls run_load.
//!
//! `cargo run --release -p meshtest-load --example loadgen -- URL --connections 32 -d 10s`
//! `... --example loadgen -- compare BASE CUR` runs the report comparison instead.
//! Exit codes as `meshtest`'s: 0 ok, 1 failed (a threshold, nothing answered,
//! a regression), 2 bad input, 3 could not check.

use clap::{Parser, Subcommand};
use meshtest_load::{CompareArgs, LoadArgs};

#[derive(Parser)]
#[command(name = "loadgen", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    load: Option<LoadArgs>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Compare two reports.
    Compare(CompareArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match (cli.cmd, cli.load) {
        (Some(Cmd::Compare(args)), _) => match meshtest_load::run_compare(args) {
            Ok(regressed) => i32::from(regressed),
            Err(e) => {
                eprintln!("loadgen: {e}");
                if e.is_input() { 2 } else { 3 }
            }
        },
        (None, Some(args)) => {
            // One thread: the bench pins the generator to one core, where a
            // current-thread runtime avoids cross-thread wakeups.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            match rt.block_on(meshtest_load::run_load(args)) {
                Ok(outcome) => i32::from(!outcome.passed()),
                Err(e) => {
                    eprintln!("loadgen: {e}");
                    if e.is_input() { 2 } else { 3 }
                }
            }
        }
        (None, None) => {
            eprintln!("loadgen: a URL is required");
            2
        }
    };
    std::process::exit(code);
}
