//! The `floodgate` command: `serve`, `token` and `bench`. See `floodgate --help`.
fn main() -> std::process::ExitCode {
    floodgate::cli::main()
}
