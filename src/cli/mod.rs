//! The `floodgate` command line. Not a stable API: the binary is its only user.
#![allow(missing_docs)]

/// Runs the command line and returns the process exit code.
pub fn main() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
