//! The `meshtest` binary: parse flags, run the subcommand, map errors to exit codes.

fn main() -> std::process::ExitCode {
    meshtest::cli::main()
}
