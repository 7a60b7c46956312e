//! `floodgate perf-gate` in a repository that is not floodgate: a throwaway Rust project made
//! here, outside this checkout, with an instruction-count bench. `init` writes a starting
//! perf-gate.toml, a baseline is recorded, the same code passes, and a deliberate slowdown
//! fails with a markdown table naming the metric.

mod util;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn gate(dir: &Path, args: &[&str]) -> Output {
    util::output_within(
        Command::new(env!("CARGO_BIN_EXE_floodgate"))
            .arg("perf-gate")
            .args(args)
            .current_dir(dir)
            // The project's own target directory, not this checkout's.
            .env_remove("CARGO_TARGET_DIR"),
        Duration::from_secs(300),
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The library's work: `rounds` rounds of a small mixing loop per operation.
fn library(rounds: u32) -> String {
    format!(
        "pub fn mix(x: u64) -> u64 {{\n    let mut h = x;\n    for _ in 0..{rounds} {{\n        \
         h = h.rotate_left(5) ^ h.wrapping_mul(0x9E37_79B9_7F4A_7C15);\n    }}\n    h\n}}\n"
    )
}

#[test]
fn a_throwaway_project_records_a_baseline_passes_and_catches_a_slowdown() {
    let valgrind = Command::new("valgrind").arg("--version").output().is_ok();
    if !valgrind {
        assert!(
            std::env::var_os("FLOODGATE_TEST_REQUIRE_PYTHON").is_none(),
            "valgrind is required here (scripts/setup installs it)"
        );
        eprintln!("skipped: valgrind not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("throwaway-gate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::create_dir_all(dir.join("benches")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"throwaway\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [workspace]\n\n[[bench]]\nname = \"instructions\"\nharness = false\n",
    )
    .unwrap();
    std::fs::write(dir.join("src/lib.rs"), library(8)).unwrap();
    // The instruction harness: `<path> <ops>` runs `ops` operations of `path`.
    std::fs::write(
        dir.join("benches/instructions.rs"),
        "fn main() {\n    let args: Vec<String> = std::env::args().collect();\n    \
         let ops: u64 = args[2].parse().unwrap();\n    let mut acc = 0u64;\n    \
         for i in 0..ops {\n        acc ^= std::hint::black_box(throwaway::mix(i));\n    }\n    \
         assert_eq!(args[1], \"mix\");\n    std::hint::black_box(acc);\n}\n",
    )
    .unwrap();

    // 1. init writes a starting file (and will not overwrite it).
    let out = gate(&dir, &["init"]);
    assert!(out.status.success(), "{}", text(&out));
    let init = std::fs::read_to_string(dir.join("perf-gate.toml")).unwrap();
    assert!(
        init.contains("# [instructions]") && init.contains("baseline ="),
        "{init}"
    );
    assert_eq!(gate(&dir, &["init"]).status.code(), Some(2));
    // The user fills in the instructions suite, as the comments show.
    std::fs::write(
        dir.join("perf-gate.toml"),
        init.replace(
            "# [instructions]\n# bench = \"instructions\"\n# paths = { parse = 10000 }",
            "[instructions]\nbench = \"instructions\"\npaths = { mix = 20000 }",
        ),
    )
    .unwrap();

    // 2. A baseline, recorded where the file says.
    let out = gate(&dir, &["--update-baseline"]);
    assert!(out.status.success(), "{}", text(&out));
    let baseline: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("perf/baseline.json")).unwrap())
            .unwrap();
    let recorded = baseline["metrics"]["instructions/mix"]["value"]
        .as_f64()
        .unwrap();
    assert!(recorded > 8.0, "{baseline}");

    // 3. The same code passes.
    let out = gate(&dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let table = std::fs::read_to_string(dir.join("target/perf-gate.md")).unwrap();
    assert!(table.contains("`instructions/mix`"), "{table}");

    // 4. Twice the rounds: a regression, named in a readable markdown table, exit 1.
    std::fs::write(dir.join("src/lib.rs"), library(16)).unwrap();
    let out = gate(&dir, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let row = table
        .lines()
        .find(|l| l.contains("`instructions/mix`"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.starts_with('|') && row.contains("REGRESSION"),
        "{table}"
    );
    assert!(table.contains("FAILED"), "{table}");
    std::fs::remove_dir_all(&dir).unwrap();
}
