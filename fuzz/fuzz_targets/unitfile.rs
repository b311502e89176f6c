//! Fuzzes the agent's unit-file reader: arbitrary text through `unitfile::parse`, the typed
//! `[Service]` view the supervisor runs, `$VAR` expansion, time spans and `EnvironmentFile=`
//! text, never a panic.
//!
//! `EnsureUnit` parses the unit text a request carries before anything is written, so this is
//! request input. Beyond "no panic", it checks what the module promises: accepted text holds no
//! control bytes, section names and keys have the shapes the parser admits, values are trimmed,
//! writing the parsed file back out parses to the same sections and entries, and a
//! `ServiceSpec` runs an absolute program with no NUL anywhere in its command line.
#![no_main]

use std::collections::BTreeMap;

use haop_agent::units::unitfile::{self, ServiceSpec, UnitFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    // EnvironmentFile= text is read by the same module when a unit starts.
    for (name, _) in unitfile::parse_env_file(text) {
        assert!(unitfile::is_env_name(&name), "env file name {name:?}");
    }
    let _ = unitfile::parse_time_span(text);

    let Ok(unit) = unitfile::parse(text) else {
        return;
    };
    check_shape(&unit);
    if writable(&unit) {
        let written = write_back(&unit);
        match unitfile::parse(&written) {
            Ok(again) => assert_eq!(
                entries(&again),
                entries(&unit),
                "written back as:\n{written}"
            ),
            Err(e) => panic!("the written-back unit does not parse: {e}\n{written}"),
        }
    }
    for section in unit.sections() {
        for entry in section.entries() {
            let _ = unitfile::parse_time_span(&entry.value);
        }
    }

    let Ok(spec) = ServiceSpec::from_unit(&unit) else {
        return;
    };
    check_spec(&spec);
});

/// What `parse` promises about everything it accepts.
fn check_shape(unit: &UnitFile) {
    for section in unit.sections() {
        let name = section.name();
        assert!(
            !name.is_empty() && !name.contains(['[', ']']),
            "section {name:?}"
        );
        assert!(!name.chars().any(is_refused_control), "section {name:?}");
        for e in section.entries() {
            assert!(
                !e.key.is_empty()
                    && e.key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
                "key {:?}",
                e.key
            );
            assert!(
                !e.value.chars().any(is_refused_control),
                "value {:?}",
                e.value
            );
            assert_eq!(
                e.value,
                e.value.trim(),
                "value {:?} is not trimmed",
                e.value
            );
            assert!(e.line >= 1);
        }
    }
}

fn is_refused_control(c: char) -> bool {
    c.is_control() && c != '\t'
}

/// Whether `write_back` can express the unit. A value may end in an unescaped backslash (as
/// `A=x\ ` does once its trailing blank is trimmed, in systemd too); written as the last thing
/// on its line, that backslash would continue the line.
fn writable(unit: &UnitFile) -> bool {
    unit.sections()
        .iter()
        .flat_map(|s| s.entries())
        .all(|e| e.value.bytes().rev().take_while(|b| *b == b'\\').count() % 2 == 0)
}

/// The unit as a writer would render it: one header per section, one `Key=Value` per entry.
fn write_back(unit: &UnitFile) -> String {
    let mut out = String::new();
    for section in unit.sections() {
        out.push_str(&format!("[{}]\n", section.name()));
        for e in section.entries() {
            out.push_str(&format!("{}={}\n", e.key, e.value));
        }
    }
    out
}

/// Sections and entries without line numbers, which writing back changes.
fn entries(unit: &UnitFile) -> Vec<(String, Vec<(String, String)>)> {
    unit.sections()
        .iter()
        .map(|s| {
            (
                s.name().to_string(),
                s.entries()
                    .iter()
                    .map(|e| (e.key.clone(), e.value.clone()))
                    .collect(),
            )
        })
        .collect()
}

/// What the supervisor relies on when it runs a `ServiceSpec`.
fn check_spec(spec: &ServiceSpec) {
    let exec = &spec.exec_start;
    assert!(exec.program.starts_with('/'), "program {:?}", exec.program);
    assert!(!exec.program.contains('\0'), "program {:?}", exec.program);
    for arg in exec.args.iter().chain(exec.argv0.iter()) {
        assert!(!arg.contains('\0'), "argument {arg:?}");
    }
    for (name, value) in &spec.environment {
        assert!(unitfile::is_env_name(name), "environment name {name:?}");
        assert!(!value.contains('\0'), "environment value {value:?}");
    }
    for file in &spec.environment_files {
        assert!(
            file.path.starts_with('/'),
            "EnvironmentFile {:?}",
            file.path
        );
    }
    if let Some(dir) = &spec.working_directory {
        assert!(dir.path.starts_with('/'), "WorkingDirectory {:?}", dir.path);
    }
    let env: BTreeMap<String, String> = spec.environment.iter().cloned().collect();
    for arg in exec.expanded_args(&env) {
        assert!(!arg.contains('\0'), "expanded argument {arg:?}");
    }
}
