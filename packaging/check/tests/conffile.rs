//! `/etc/haop/agent.toml` as shipped must parse, and its commented values must be the
//! built-in defaults (so the documentation in the file does not drift from the code).

use haop_agent::config::AgentConfig;

const CONFFILE: &str = include_str!("../../haop-agent/agent.toml");

/// The file with its commented settings switched on: `#key = ...` lines and the lines of
/// commented arrays (`#  "..."`, `#]`). Prose comments start with "# " and stay.
fn uncommented() -> String {
    CONFFILE
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest)
                if rest.starts_with(|c: char| c.is_ascii_lowercase())
                    || rest.starts_with("  \"")
                    || rest.starts_with(']') =>
            {
                rest
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn shipped_conffile_parses_to_the_defaults() {
    let cfg = AgentConfig::from_toml(CONFFILE).unwrap();
    cfg.validate().unwrap();
    assert_eq!(format!("{cfg:?}"), format!("{:?}", AgentConfig::default()));
}

#[test]
fn commented_values_are_the_defaults() {
    let text = uncommented();
    // Everything but the placeholders of the enrollment section, which has no default.
    let text = text
        .lines()
        .filter(|l| !l.starts_with("token =") && !l.starts_with("ca_hash ="))
        .collect::<Vec<_>>()
        .join("\n");
    for key in [
        "listen =",
        "managed_roots =",
        "state_dir =",
        "service_manager =",
        "kernel =",
        "root =",
        "allow =",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(key)),
            "{key} is not documented"
        );
    }
    let cfg = AgentConfig::from_toml(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"));
    assert_eq!(format!("{cfg:?}"), format!("{:?}", AgentConfig::default()));
}

#[test]
fn enrollment_placeholders_have_the_right_shape() {
    let text = uncommented();
    let token = text.lines().find(|l| l.starts_with("token =")).unwrap();
    let token = token.split('"').nth(1).unwrap();
    haop_agent::config::parse_token(token, "enroll.token").unwrap();
}
