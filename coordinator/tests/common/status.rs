//! `haop status -o json` for the lab tests: every report checked against
//! docs/status-schema.json, and polled until a condition holds.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::haop;

pub struct Status {
    pub code: i32,
    pub json: Value,
    pub elapsed: Duration,
}

/// `haop status -o json` with `extra` arguments; the output is checked against the schema
/// and its verdict against the exit code.
pub fn status(state: &Path, inv: &str, extra: &[&str]) -> Status {
    let started = Instant::now();
    let mut args = vec!["status", "-f", inv, "-o", "json"];
    args.extend_from_slice(extra);
    let out = haop(state, &args);
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "status printed no JSON ({e}):\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_valid(&json);
    let code = out.status.code().expect("exited");
    assert_eq!(json["verdict"]["exit_code"], code, "{json:#}");
    Status {
        code,
        json,
        elapsed,
    }
}

/// Panics with every schema violation of `json`.
pub fn assert_valid(json: &Value) {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/status-schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(json)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}\n{json:#}");
}

/// Polls status until `done` holds; panics with the last report after `within`.
pub fn wait_status(
    state: &Path,
    inv: &str,
    within: Duration,
    what: &str,
    done: impl Fn(&Status) -> bool,
) -> Status {
    let deadline = Instant::now() + within;
    loop {
        let s = status(state, inv, &[]);
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within {within:?}; last report:\n{:#}",
            s.json
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
