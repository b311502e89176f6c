//! systemd unit files, parsed without IO.
//!
//! The coordinator renders one unit file per service and both backends consume the very same
//! text: systemd reads it itself, the built-in supervisor reads it through this module. For the
//! lab to rehearse what a real host does, the supervisor must understand the file the way
//! systemd does (quoting, escapes, `$VAR` versus `${VAR}`, time spans, the restart table), so
//! those rules are reproduced here from `systemd.syntax(7)`, `systemd.service(5)` and
//! `systemd.exec(5)`, and pinned by tests.
//!
//! Two layers:
//! * [`parse`] turns text into a [`UnitFile`]: sections in order, entries in order, repeated
//!   sections merged, continuation lines joined, comments dropped. It refuses text that could
//!   smuggle something past a reader (NUL and other control bytes, entries outside a section,
//!   malformed headers or keys) instead of skipping it with a warning as systemd does.
//! * [`ServiceSpec::from_unit`] is the typed view of `[Service]` that the supervisor runs.
//!   Settings it does not implement are listed in [`ServiceSpec::ignored_keys`] so that the
//!   caller can say so; they never fail the parse (systemd would honour them, we cannot).
//!
//! Environment variables are substituted at start time, not here ([`ExecCommand::expanded_args`]),
//! because their values come from `EnvironmentFile=` files read when the unit starts.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use nix::sys::signal::Signal;

/// Longest logical line accepted, as systemd's `LONG_LINE_MAX`.
const MAX_LINE: usize = 1024 * 1024;

/// Why a unit file or one of its settings was refused. `line` is 1-based when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: Option<usize>,
    pub message: String,
}

impl ParseError {
    fn at(line: usize, message: impl Into<String>) -> Self {
        ParseError {
            line: Some(line),
            message: message.into(),
        }
    }

    fn whole(message: impl Into<String>) -> Self {
        ParseError {
            line: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ParseError {}

/// One `Key=Value` line (after continuation lines were joined). `line` is where it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub line: usize,
}

/// A `[Name]` section with its entries in file order. Repeated headers are merged into one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    name: String,
    entries: Vec<Entry>,
}

impl Section {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Every entry for `key`, in file order (list settings such as `Environment=`).
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries.iter().filter(move |e| e.key == key)
    }

    /// The last entry for `key` (single-valued settings: the last assignment wins).
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| e.key == key)
    }
}

/// A parsed unit file: its sections in the order they first appear.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitFile {
    sections: Vec<Section>,
}

impl UnitFile {
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    fn section_mut(&mut self, name: &str) -> &mut Section {
        let idx = match self.sections.iter().position(|s| s.name == name) {
            Some(idx) => idx,
            None => {
                self.sections.push(Section {
                    name: name.to_string(),
                    entries: Vec::new(),
                });
                self.sections.len() - 1
            }
        };
        &mut self.sections[idx]
    }
}

fn is_comment(line: &str) -> bool {
    matches!(line.trim_start().chars().next(), Some('#' | ';'))
}

/// Whether the line ends in a backslash that is not itself escaped.
fn ends_in_continuation(line: &str) -> bool {
    let trailing = line.bytes().rev().take_while(|b| *b == b'\\').count();
    trailing % 2 == 1
}

/// Parses unit file text. See the module docs for what is refused.
pub fn parse(text: &str) -> Result<UnitFile, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut unit = UnitFile::default();
    let mut current: Option<String> = None;
    // A logical line being assembled from continuation lines: (first line number, text).
    let mut pending: Option<(usize, String)> = None;

    for (idx, raw) in text.lines().enumerate() {
        let lineno = idx + 1;
        if let Some(pos) = raw.find(|c: char| c.is_control() && c != '\t') {
            let what = if raw[pos..].starts_with('\0') {
                "a NUL byte".to_string()
            } else {
                format!(
                    "control character {:?}",
                    raw[pos..].chars().next().unwrap_or('?')
                )
            };
            return Err(ParseError::at(lineno, format!("contains {what}")));
        }
        let (start, mut logical) = match pending.take() {
            Some((start, acc)) => {
                // Comment lines inside a continuation are skipped (systemd.syntax(7)).
                if is_comment(raw) {
                    pending = Some((start, acc));
                    continue;
                }
                (start, acc + raw)
            }
            None => {
                if is_comment(raw) {
                    continue;
                }
                (lineno, raw.to_string())
            }
        };
        if logical.len() > MAX_LINE {
            return Err(ParseError::at(start, "line is longer than 1 MiB"));
        }
        if ends_in_continuation(&logical) {
            logical.pop();
            logical.push(' ');
            pending = Some((start, logical));
            continue;
        }
        parse_logical_line(&mut unit, &mut current, start, &logical)?;
    }
    if let Some((start, logical)) = pending {
        parse_logical_line(&mut unit, &mut current, start, &logical)?;
    }
    Ok(unit)
}

fn parse_logical_line(
    unit: &mut UnitFile,
    current: &mut Option<String>,
    lineno: usize,
    line: &str,
) -> Result<(), ParseError> {
    let line = line.trim();
    if line.is_empty() || is_comment(line) {
        return Ok(());
    }
    if let Some(rest) = line.strip_prefix('[') {
        let Some(name) = rest.strip_suffix(']') else {
            return Err(ParseError::at(
                lineno,
                format!("section header {line:?} does not end with ']'"),
            ));
        };
        if name.is_empty() || name.contains(['[', ']']) {
            return Err(ParseError::at(
                lineno,
                format!("invalid section header {line:?}"),
            ));
        }
        unit.section_mut(name);
        *current = Some(name.to_string());
        return Ok(());
    }
    let Some(section) = current.as_deref() else {
        return Err(ParseError::at(
            lineno,
            format!("entry {line:?} comes before any section header"),
        ));
    };
    let Some((key, value)) = line.split_once('=') else {
        return Err(ParseError::at(
            lineno,
            format!("{line:?} is not a Key=Value entry"),
        ));
    };
    let key = key.trim();
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ParseError::at(lineno, format!("invalid key {key:?}")));
    }
    let section = section.to_string();
    unit.section_mut(&section).entries.push(Entry {
        key: key.to_string(),
        value: value.trim().to_string(),
        line: lineno,
    });
    Ok(())
}

/// `Type=`. The supervisor runs `notify`, `notify-reload`, `exec` and `idle` like `simple`
/// (it has no notification socket), and refuses `forking` and `dbus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServiceType {
    #[default]
    Simple,
    Exec,
    Notify,
    NotifyReload,
    Forking,
    Oneshot,
    Dbus,
    Idle,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::Simple => "simple",
            ServiceType::Exec => "exec",
            ServiceType::Notify => "notify",
            ServiceType::NotifyReload => "notify-reload",
            ServiceType::Forking => "forking",
            ServiceType::Oneshot => "oneshot",
            ServiceType::Dbus => "dbus",
            ServiceType::Idle => "idle",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "simple" => ServiceType::Simple,
            "exec" => ServiceType::Exec,
            "notify" => ServiceType::Notify,
            "notify-reload" => ServiceType::NotifyReload,
            "forking" => ServiceType::Forking,
            "oneshot" => ServiceType::Oneshot,
            "dbus" => ServiceType::Dbus,
            "idle" => ServiceType::Idle,
            _ => return None,
        })
    }
}

/// How a main process ended, in the terms of systemd's restart table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitClass {
    /// Exit code 0, one of the clean signals (SIGHUP, SIGINT, SIGTERM, SIGPIPE), or any end of a
    /// command prefixed with `-`.
    Clean,
    /// A non-zero exit code.
    UncleanCode,
    /// Killed by any other signal (SIGKILL, SIGSEGV, ...).
    UncleanSignal,
}

/// `Restart=`, with systemd's table of which ends trigger a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    #[default]
    No,
    Always,
    OnSuccess,
    OnFailure,
    OnAbnormal,
    OnAbort,
    /// Restarts only on a watchdog timeout, which the supervisor never detects.
    OnWatchdog,
}

impl RestartPolicy {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "no" => RestartPolicy::No,
            "always" => RestartPolicy::Always,
            "on-success" => RestartPolicy::OnSuccess,
            "on-failure" => RestartPolicy::OnFailure,
            "on-abnormal" => RestartPolicy::OnAbnormal,
            "on-abort" => RestartPolicy::OnAbort,
            "on-watchdog" => RestartPolicy::OnWatchdog,
            _ => return None,
        })
    }

    /// Whether a main process that ended this way is started again (systemd.service(5), the
    /// table under `Restart=`).
    pub fn restarts_after(self, class: ExitClass) -> bool {
        match self {
            RestartPolicy::No | RestartPolicy::OnWatchdog => false,
            RestartPolicy::Always => true,
            RestartPolicy::OnSuccess => class == ExitClass::Clean,
            RestartPolicy::OnFailure => class != ExitClass::Clean,
            RestartPolicy::OnAbnormal | RestartPolicy::OnAbort => class == ExitClass::UncleanSignal,
        }
    }
}

/// The `ExecStart=` command, split and unquoted, with its prefixes decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecCommand {
    /// Absolute path of the program.
    pub program: String,
    /// `@` prefix: the word after the program is passed as `argv[0]`.
    pub argv0: Option<String>,
    /// The arguments after the program (and after `argv[0]` with `@`), before `$VAR`
    /// substitution.
    pub args: Vec<String>,
    /// `-` prefix: a failing exit is recorded but counts as success.
    pub ignore_failure: bool,
    /// `:` prefix turns substitution off.
    pub expand_env: bool,
    /// `+`, `!` or `!!` prefix: run with full privileges. The supervisor drops none anyway.
    pub privileged: bool,
}

impl ExecCommand {
    /// The arguments with environment variables substituted as systemd does: a word that is
    /// exactly `$NAME` becomes the value split at whitespace (zero words when unset); `${NAME}`
    /// anywhere in a word becomes the value as-is (empty when unset); `$$` becomes `$`; any
    /// other `$` stays.
    pub fn expanded_args(&self, env: &BTreeMap<String, String>) -> Vec<String> {
        if !self.expand_env {
            return self.args.clone();
        }
        let mut out = Vec::with_capacity(self.args.len());
        for word in &self.args {
            if let Some(name) = word.strip_prefix('$') {
                if is_env_name(name) {
                    if let Some(value) = env.get(name) {
                        out.extend(split_value_words(value));
                    }
                    continue;
                }
            }
            out.push(replace_braced(word, env));
        }
        out
    }
}

/// `EnvironmentFile=`: a host path; `-` prefix means a missing file is not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentFile {
    pub path: String,
    pub optional: bool,
}

/// `WorkingDirectory=`: an absolute path; `-` prefix means a missing directory is not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkingDirectory {
    pub path: String,
    pub optional: bool,
}

/// The typed `[Service]` view the supervisor runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub service_type: ServiceType,
    pub exec_start: ExecCommand,
    /// `Environment=` assignments in file order; a later one for the same name wins.
    pub environment: Vec<(String, String)>,
    pub environment_files: Vec<EnvironmentFile>,
    pub working_directory: Option<WorkingDirectory>,
    pub restart: RestartPolicy,
    /// Default 100ms, as systemd.
    pub restart_sec: Duration,
    /// `TimeoutStopSec=` (or `TimeoutSec=`); default 10s. `None` means wait forever
    /// (`infinity` or `0`).
    pub timeout_stop_sec: Option<Duration>,
    /// Default SIGTERM.
    pub kill_signal: Signal,
    pub remain_after_exit: bool,
    /// `User=` and `Group=`, recorded; the supervisor runs units as itself.
    pub user: Option<String>,
    pub group: Option<String>,
    /// `[Service]` keys present in the file that this view does not implement, in file order,
    /// without duplicates.
    pub ignored_keys: Vec<String>,
}

const DEFAULT_RESTART_SEC: Duration = Duration::from_millis(100);
const DEFAULT_TIMEOUT_STOP: Duration = Duration::from_secs(10);

const KNOWN_SERVICE_KEYS: &[&str] = &[
    "Type",
    "ExecStart",
    "Environment",
    "EnvironmentFile",
    "WorkingDirectory",
    "Restart",
    "RestartSec",
    "TimeoutStopSec",
    "TimeoutSec",
    "KillSignal",
    "RemainAfterExit",
    "User",
    "Group",
];

impl ServiceSpec {
    /// The `[Service]` section as the supervisor runs it. Exactly one `ExecStart=` is required
    /// (an empty `ExecStart=` resets the list, as in drop-ins); several commands, which systemd
    /// allows for `Type=oneshot`, are refused.
    pub fn from_unit(unit: &UnitFile) -> Result<ServiceSpec, ParseError> {
        let Some(service) = unit.section("Service") else {
            return Err(ParseError::whole("has no [Service] section"));
        };

        let service_type = match service.get("Type") {
            None => ServiceType::default(),
            Some(e) => ServiceType::parse(&e.value)
                .ok_or_else(|| ParseError::at(e.line, format!("unknown Type={:?}", e.value)))?,
        };

        let exec_entries = list_entries(service, "ExecStart");
        let exec_start = match exec_entries.as_slice() {
            [] => return Err(ParseError::whole("has no ExecStart=")),
            [one] => parse_exec(one)?,
            [_, second, ..] => {
                return Err(ParseError::at(
                    second.line,
                    if service_type == ServiceType::Oneshot {
                        "several ExecStart= commands (Type=oneshot with several commands is not \
                         supported)"
                    } else {
                        "a service may have only one ExecStart="
                    },
                ))
            }
        };

        let mut environment = Vec::new();
        for e in list_entries(service, "Environment") {
            let value = resolve_specifiers(&e.value, e.line)?;
            let words = split_words(&value, true).map_err(|m| ParseError::at(e.line, m))?;
            for w in words {
                let Some((name, val)) = w.text.split_once('=') else {
                    return Err(ParseError::at(
                        e.line,
                        format!("Environment= assignment {:?} has no '='", w.text),
                    ));
                };
                if !is_env_name(name) {
                    return Err(ParseError::at(
                        e.line,
                        format!("invalid environment variable name {name:?}"),
                    ));
                }
                environment.push((name.to_string(), val.to_string()));
            }
        }

        let mut environment_files = Vec::new();
        for e in list_entries(service, "EnvironmentFile") {
            let value = resolve_specifiers(&e.value, e.line)?;
            let (optional, path) = match value.strip_prefix('-') {
                Some(rest) => (true, rest.trim()),
                None => (false, value.as_str()),
            };
            if !path.starts_with('/') {
                return Err(ParseError::at(
                    e.line,
                    format!("EnvironmentFile= path {path:?} is not absolute"),
                ));
            }
            environment_files.push(EnvironmentFile {
                path: path.to_string(),
                optional,
            });
        }

        let working_directory = match service.get("WorkingDirectory") {
            None => None,
            Some(e) if e.value.is_empty() => None,
            Some(e) => {
                let value = resolve_specifiers(&e.value, e.line)?;
                let (optional, path) = match value.strip_prefix('-') {
                    Some(rest) => (true, rest.trim()),
                    None => (false, value.as_str()),
                };
                if !path.starts_with('/') {
                    return Err(ParseError::at(
                        e.line,
                        format!(
                            "WorkingDirectory= {path:?} is not absolute ('~' is not supported)"
                        ),
                    ));
                }
                Some(WorkingDirectory {
                    path: path.to_string(),
                    optional,
                })
            }
        };

        let restart = match service.get("Restart") {
            None => RestartPolicy::default(),
            Some(e) => RestartPolicy::parse(&e.value)
                .ok_or_else(|| ParseError::at(e.line, format!("unknown Restart={:?}", e.value)))?,
        };

        let restart_sec = match service.get("RestartSec") {
            None => DEFAULT_RESTART_SEC,
            Some(e) => parse_time_span(&e.value)
                .map_err(|m| ParseError::at(e.line, format!("RestartSec=: {m}")))?
                .ok_or_else(|| ParseError::at(e.line, "RestartSec= cannot be infinity"))?,
        };

        let timeout_stop_sec = match service.get("TimeoutStopSec").or(service.get("TimeoutSec")) {
            None => Some(DEFAULT_TIMEOUT_STOP),
            Some(e) => parse_time_span(&e.value)
                .map_err(|m| ParseError::at(e.line, format!("{}=: {m}", e.key)))?
                .filter(|d| !d.is_zero()),
        };

        let kill_signal = match service.get("KillSignal") {
            None => Signal::SIGTERM,
            Some(e) => parse_signal(&e.value).ok_or_else(|| {
                ParseError::at(e.line, format!("unknown KillSignal={:?}", e.value))
            })?,
        };

        let remain_after_exit = match service.get("RemainAfterExit") {
            None => false,
            Some(e) => parse_bool(&e.value).ok_or_else(|| {
                ParseError::at(
                    e.line,
                    format!("RemainAfterExit={:?} is not a boolean", e.value),
                )
            })?,
        };

        let non_empty = |key: &str| {
            service
                .get(key)
                .map(|e| e.value.clone())
                .filter(|v| !v.is_empty())
        };

        let mut ignored_keys: Vec<String> = Vec::new();
        for e in service.entries() {
            if !KNOWN_SERVICE_KEYS.contains(&e.key.as_str()) && !ignored_keys.contains(&e.key) {
                ignored_keys.push(e.key.clone());
            }
        }

        Ok(ServiceSpec {
            service_type,
            exec_start,
            environment,
            environment_files,
            working_directory,
            restart,
            restart_sec,
            timeout_stop_sec,
            kill_signal,
            remain_after_exit,
            user: non_empty("User"),
            group: non_empty("Group"),
            ignored_keys,
        })
    }
}

/// The entries of a list setting after resets: an empty assignment clears what came before.
fn list_entries<'a>(section: &'a Section, key: &'a str) -> Vec<&'a Entry> {
    let mut out = Vec::new();
    for e in section.get_all(key) {
        if e.value.is_empty() {
            out.clear();
        } else {
            out.push(e);
        }
    }
    out
}

fn parse_exec(entry: &Entry) -> Result<ExecCommand, ParseError> {
    let line = entry.line;
    let value = resolve_specifiers(&entry.value, line)?;
    let words = split_words(&value, true).map_err(|m| ParseError::at(line, m))?;
    if let Some(w) = words.iter().find(|w| !w.quoted && w.text == ";") {
        return Err(ParseError::at(
            line,
            format!(
                "several commands in one ExecStart= (separated by {:?}) are not supported",
                w.text
            ),
        ));
    }
    let mut words = words.into_iter().map(|w| w.text);
    let Some(first) = words.next() else {
        return Err(ParseError::at(line, "ExecStart= has no command"));
    };

    let mut ignore_failure = false;
    let mut use_argv0 = false;
    let mut expand_env = true;
    let mut privileged = false;
    let mut program = first.as_str();
    loop {
        match program.chars().next() {
            Some('-') => ignore_failure = true,
            Some('@') => use_argv0 = true,
            Some(':') => expand_env = false,
            Some('+' | '!') => privileged = true,
            Some('|') => {
                return Err(ParseError::at(
                    line,
                    "the '|' ExecStart= prefix (run through the user's shell) is not supported",
                ))
            }
            _ => break,
        }
        program = &program[1..];
    }
    if !program.starts_with('/') {
        return Err(ParseError::at(
            line,
            format!("ExecStart= program {program:?} is not an absolute path"),
        ));
    }
    let program = program.to_string();
    let argv0 = if use_argv0 {
        Some(words.next().ok_or_else(|| {
            ParseError::at(
                line,
                "ExecStart= with '@' needs an argv[0] after the program",
            )
        })?)
    } else {
        None
    };
    Ok(ExecCommand {
        program,
        argv0,
        args: words.collect(),
        ignore_failure,
        expand_env,
        privileged,
    })
}

/// Unit specifiers: only `%%` (a literal `%`) is supported; anything else is refused rather
/// than passed on with a meaning systemd would have given it.
fn resolve_specifiers(value: &str, line: usize) -> Result<String, ParseError> {
    if !value.contains('%') {
        return Ok(value.to_string());
    }
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some(other) => {
                return Err(ParseError::at(
                    line,
                    format!("unit specifier %{other} is not supported (write %% for a literal %)"),
                ))
            }
            None => return Err(ParseError::at(line, "value ends with a lone '%'")),
        }
    }
    Ok(out)
}

/// A word of a command line or an `Environment=` value. `quoted` is true when any part of it
/// was quoted or escaped (so a quoted `";"` is an argument, not a separator).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Word {
    text: String,
    quoted: bool,
}

/// Splits at unquoted whitespace, removing double and single quotes and decoding C-style
/// escapes (inside and outside quotes), as systemd's `extract_first_word` does with
/// `EXTRACT_UNQUOTE | EXTRACT_CUNESCAPE`. With `strict` false (values of `$VAR` words),
/// a backslash takes the next character literally and an unterminated quote ends at the end.
fn split_words(s: &str, strict: bool) -> Result<Vec<Word>, String> {
    let mut words = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(words);
        }
        let mut text = String::new();
        let mut quoted = false;
        let mut quote: Option<char> = None;
        while let Some(c) = chars.next() {
            match (quote, c) {
                (None, c) if c.is_whitespace() => break,
                (None, '"' | '\'') => {
                    quote = Some(c);
                    quoted = true;
                }
                (Some(q), c) if c == q => quote = None,
                (_, '\\') => {
                    quoted = true;
                    if strict {
                        text.push(unescape_one(&mut chars)?);
                    } else if let Some(next) = chars.next() {
                        text.push(next);
                    }
                }
                (_, c) => text.push(c),
            }
        }
        if quote.is_some() && strict {
            return Err(format!("unterminated quote in {s:?}"));
        }
        words.push(Word { text, quoted });
    }
}

/// Decodes the escape after a backslash (systemd's `cunescape_one`, plus escaped separators).
fn unescape_one(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<char, String> {
    let Some(c) = chars.next() else {
        return Err("a backslash ends the value".into());
    };
    let hex = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>, n: usize| {
        let digits: String = chars.by_ref().take(n).collect();
        if digits.len() != n || !digits.chars().all(|d| d.is_ascii_hexdigit()) {
            return Err(format!("invalid \\{c} escape"));
        }
        u32::from_str_radix(&digits, 16).map_err(|_| format!("invalid \\{c} escape"))
    };
    let code = match c {
        'a' => 0x07,
        'b' => 0x08,
        'f' => 0x0c,
        'n' => 0x0a,
        'r' => 0x0d,
        't' => 0x09,
        'v' => 0x0b,
        's' => 0x20,
        '\\' | '"' | '\'' | ';' | ' ' | '\t' => c as u32,
        'x' => {
            let v = hex(chars, 2)?;
            if v >= 0x80 {
                return Err(format!("byte escape \\x{v:02x} is not ASCII"));
            }
            v
        }
        'u' => hex(chars, 4)?,
        'U' => hex(chars, 8)?,
        '0'..='7' => {
            let mut v = c.to_digit(8).unwrap_or(0);
            for _ in 0..2 {
                match chars.next().and_then(|d| d.to_digit(8)) {
                    Some(d) => v = v * 8 + d,
                    None => return Err("octal escapes need three digits".into()),
                }
            }
            if v >= 0x80 {
                return Err(format!("byte escape \\{v:03o} is not ASCII"));
            }
            v
        }
        other => return Err(format!("unknown escape \\{other}")),
    };
    if code == 0 {
        return Err("escapes may not produce a NUL byte".into());
    }
    char::from_u32(code).ok_or_else(|| format!("escape gives invalid character U+{code:X}"))
}

/// Splits the value of a `$NAME` word (systemd: whitespace, quotes honoured, relaxed).
fn split_value_words(value: &str) -> Vec<String> {
    split_words(value, false)
        .unwrap_or_default()
        .into_iter()
        .map(|w| w.text)
        .collect()
}

/// Replaces `${NAME}` and `$$` inside one word.
fn replace_braced(word: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(word.len());
    let mut rest = word;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(end) if is_env_name(&inner[..end]) => {
                    if let Some(v) = env.get(&inner[..end]) {
                        out.push_str(v);
                    }
                    rest = &inner[end + 1..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A portable environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

/// `SIGTERM`, `TERM` or a number.
fn parse_signal(s: &str) -> Option<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>().ok()
}

/// Parses a systemd time span (`systemd.time(7)`): `5s`, `100ms`, `1min 30s`, `1min30s`,
/// `1.5h`, a bare number meaning seconds. Returns `None` for `infinity`.
pub fn parse_time_span(s: &str) -> Result<Option<Duration>, String> {
    const NS: u128 = 1;
    const US: u128 = 1_000;
    const MS: u128 = 1_000_000;
    const SEC: u128 = 1_000_000_000;
    const MIN: u128 = 60 * SEC;
    const HOUR: u128 = 60 * MIN;
    const DAY: u128 = 24 * HOUR;
    let s = s.trim();
    if s == "infinity" {
        return Ok(None);
    }
    if s.is_empty() {
        return Err("empty time span".into());
    }
    let unit_ns = |unit: &str| -> Option<u128> {
        Some(match unit {
            "" | "s" | "sec" | "second" | "seconds" => SEC,
            "ms" | "msec" => MS,
            "us" | "usec" | "µs" | "μs" => US,
            "ns" | "nsec" => NS,
            "m" | "min" | "minute" | "minutes" => MIN,
            "h" | "hr" | "hour" | "hours" => HOUR,
            "d" | "day" | "days" => DAY,
            "w" | "week" | "weeks" => 7 * DAY,
            // systemd's month and year: 30.44 and 365.25 days.
            "M" | "month" | "months" => 2_629_800 * SEC,
            "y" | "year" | "years" => 31_557_600 * SEC,
            _ => return None,
        })
    };
    let bad = || format!("invalid time span {s:?}");
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..num_len];
        if number.is_empty() {
            return Err(bad());
        }
        rest = rest[num_len..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_alphabetic())
            .unwrap_or(rest.len());
        let unit = unit_ns(&rest[..unit_len]).ok_or_else(bad)?;
        rest = &rest[unit_len..];

        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(bad());
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let mut part = whole.checked_mul(unit).ok_or_else(bad)?;
        let mut scale = unit;
        for d in frac.chars() {
            scale /= 10;
            // The fraction can carry a whole that fits just below u128::MAX over it.
            let digit = u128::from(d.to_digit(10).ok_or_else(bad)?);
            part = part.checked_add(digit * scale).ok_or_else(bad)?;
        }
        total = total.checked_add(part).ok_or_else(bad)?;
    }
    let secs = u64::try_from(total / SEC).map_err(|_| bad())?;
    // The remainder is below one second, so it fits.
    let nanos = (total % SEC) as u32;
    Ok(Some(Duration::new(secs, nanos)))
}

/// Parses `EnvironmentFile=` text as systemd does: `KEY=VALUE` lines, `#` and `;` comments,
/// double quotes (with `\"`, `\\`, `` \` ``, `\$` escapes), single quotes (literal), backslash
/// continuation, trailing unquoted whitespace trimmed; a leading `export ` is tolerated. Lines
/// without `=` or with an invalid name are skipped (systemd logs and skips them too).
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    #[derive(Clone, Copy, PartialEq)]
    enum St {
        PreKey,
        Key,
        Comment,
        PreValue,
        Value,
        Double,
        Single,
    }
    let mut out = Vec::new();
    let mut st = St::PreKey;
    let mut key = String::new();
    let mut value = String::new();
    // Length of `value` that must survive trimming (ends at the last quoted or escaped char).
    let mut keep = 0usize;
    let mut chars = text.chars().peekable();

    let mut emit = |key: &mut String, value: &mut String, keep: usize| {
        let mut k = key.trim().to_string();
        if let Some(rest) = k.strip_prefix("export") {
            if rest.starts_with([' ', '\t']) {
                k = rest.trim().to_string();
            }
        }
        let trimmed_len = value.trim_end().len().max(keep);
        value.truncate(trimmed_len);
        if is_env_name(&k) {
            out.push((k, std::mem::take(value)));
        }
        key.clear();
        value.clear();
    };

    while let Some(c) = chars.next() {
        match st {
            St::PreKey => match c {
                ' ' | '\t' | '\n' | '\r' => {}
                '#' | ';' => st = St::Comment,
                _ => {
                    key.push(c);
                    st = St::Key;
                }
            },
            St::Comment => {
                if c == '\n' {
                    st = St::PreKey;
                }
            }
            St::Key => match c {
                '=' => {
                    st = St::PreValue;
                    keep = 0;
                }
                '\n' => {
                    key.clear();
                    st = St::PreKey;
                }
                _ => key.push(c),
            },
            St::PreValue => match c {
                ' ' | '\t' => {}
                '\n' => {
                    emit(&mut key, &mut value, 0);
                    st = St::PreKey;
                }
                '"' => st = St::Double,
                '\'' => st = St::Single,
                '\\' => {
                    st = St::Value;
                    unquoted_escape(&mut chars, &mut value, &mut keep);
                }
                _ => {
                    value.push(c);
                    st = St::Value;
                }
            },
            St::Value => match c {
                '\n' => {
                    emit(&mut key, &mut value, keep);
                    st = St::PreKey;
                }
                '"' => st = St::Double,
                '\'' => st = St::Single,
                '\\' => unquoted_escape(&mut chars, &mut value, &mut keep),
                _ => value.push(c),
            },
            St::Double => match c {
                '"' => {
                    keep = value.len();
                    st = St::Value;
                }
                '\\' => match chars.next() {
                    Some('\n') => {}
                    Some(e @ ('"' | '\\' | '`' | '$')) => value.push(e),
                    Some(e) => {
                        value.push('\\');
                        value.push(e);
                    }
                    None => value.push('\\'),
                },
                _ => value.push(c),
            },
            St::Single => match c {
                '\'' => {
                    keep = value.len();
                    st = St::Value;
                }
                _ => value.push(c),
            },
        }
    }
    match st {
        St::PreValue | St::Value | St::Double | St::Single => emit(&mut key, &mut value, keep),
        St::PreKey | St::Key | St::Comment => {}
    }
    out
}

/// A backslash outside quotes in an environment file: the next character is literal, and a
/// backslash-newline continues the value on the next line.
fn unquoted_escape(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    value: &mut String,
    keep: &mut usize,
) {
    match chars.next() {
        Some('\n') | None => {}
        Some(e) => {
            value.push(e);
            *keep = value.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed runbook's etcd.service, verbatim from its `[Unit]` line.
    const SEED_ETCD_SERVICE: &str = r#"[Unit]
Description=etcd
Documentation=httpss://github.com/coreos/etcd
Conflicts=etcd.service
Conflicts=etcd2.service

[Service]
EnvironmentFile=/etc/etcd.env
Type=notify
Restart=always
RestartSec=5s
LimitNOFILE=400000
TimeoutStartSec=0

ExecStart=/bin/etcd --name master-0  --data-dir /var/lib/etcd --listen-client-urls https://172.31.31.161:2379,https://127.0.0.1:2379 --advertise-client-urls https://172.31.31.161:2379 --listen-peer-urls https://172.31.31.161:2380 --initial-advertise-peer-urls https://172.31.31.161:2380 --cert-file=/etc/kubernetes/pki/etcd/server.pem --key-file=/etc/kubernetes/pki/etcd/server-key.pem --trusted-ca-file=/etc/kubernetes/pki/etcd/ca.pem --peer-cert-file=/etc/kubernetes/pki/etcd/peer.pem --peer-key-file=/etc/kubernetes/pki/etcd/peer-key.pem --peer-trusted-ca-file=/etc/kubernetes/pki/etcd/ca.pem --initial-cluster master-0=https://etcd1.ledivan.local:2380,master-1=https://etcd2.ledivan.local:2380,master-2=https://etcd3.ledivan.local:2380 --initial-cluster-token my-etcd-token --initial-cluster-state new --client-cert-auth=false --peer-client-cert-auth=false

[Install]
WantedBy=multi-user.target
"#;

    fn spec(text: &str) -> ServiceSpec {
        ServiceSpec::from_unit(&parse(text).unwrap()).unwrap()
    }

    fn spec_err(text: &str) -> ParseError {
        match parse(text) {
            Err(e) => e,
            Ok(unit) => ServiceSpec::from_unit(&unit).unwrap_err(),
        }
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn seed_etcd_service() {
        let unit = parse(SEED_ETCD_SERVICE).unwrap();
        let names: Vec<_> = unit.sections().iter().map(|s| s.name()).collect();
        assert_eq!(names, ["Unit", "Service", "Install"]);
        let conflicts: Vec<_> = unit
            .section("Unit")
            .unwrap()
            .get_all("Conflicts")
            .map(|e| e.value.as_str())
            .collect();
        assert_eq!(conflicts, ["etcd.service", "etcd2.service"]);
        assert_eq!(
            unit.section("Install")
                .unwrap()
                .get("WantedBy")
                .unwrap()
                .value,
            "multi-user.target"
        );

        let s = ServiceSpec::from_unit(&unit).unwrap();
        assert_eq!(s.service_type, ServiceType::Notify);
        assert_eq!(s.restart, RestartPolicy::Always);
        assert_eq!(s.restart_sec, Duration::from_secs(5));
        assert_eq!(s.timeout_stop_sec, Some(Duration::from_secs(10)));
        assert_eq!(s.kill_signal, Signal::SIGTERM);
        assert_eq!(
            s.environment_files,
            [EnvironmentFile {
                path: "/etc/etcd.env".into(),
                optional: false
            }]
        );
        assert_eq!(s.ignored_keys, ["LimitNOFILE", "TimeoutStartSec"]);
        let exec = &s.exec_start;
        assert_eq!(exec.program, "/bin/etcd");
        assert!(!exec.ignore_failure && exec.expand_env && exec.argv0.is_none());
        assert_eq!(exec.args.len(), 26);
        assert_eq!(
            &exec.args[..4],
            ["--name", "master-0", "--data-dir", "/var/lib/etcd"]
        );
        assert_eq!(exec.args.last().unwrap(), "--peer-client-cert-auth=false");
        assert!(exec.args.contains(
            &"master-0=https://etcd1.ledivan.local:2380,master-1=https://etcd2.ledivan.local:2380,master-2=https://etcd3.ledivan.local:2380".to_string()
        ));
    }

    #[test]
    fn environment_quoting() {
        let s = spec(
            r#"[Service]
ExecStart=/bin/true
Environment="A=1 2" B=3 'C=x "y"'
Environment=D=with\sspace "E=tab\there" F=
Environment=B=4
"#,
        );
        assert_eq!(
            s.environment,
            [
                ("A".into(), "1 2".into()),
                ("B".into(), "3".into()),
                ("C".into(), "x \"y\"".into()),
                ("D".into(), "with space".into()),
                ("E".into(), "tab\there".into()),
                ("F".into(), String::new()),
                ("B".into(), "4".into()),
            ]
        );
        // An empty assignment resets the list.
        let s = spec(
            "[Service]\nExecStart=/bin/true\nEnvironment=A=1\nEnvironment=\nEnvironment=B=2\n",
        );
        assert_eq!(s.environment, [("B".into(), "2".into())]);
        assert!(
            spec_err("[Service]\nExecStart=/bin/true\nEnvironment=NOEQUALS\n")
                .message
                .contains("no '='")
        );
        assert!(
            spec_err("[Service]\nExecStart=/bin/true\nEnvironment=1A=x\n")
                .message
                .contains("invalid environment variable name")
        );
    }

    #[test]
    fn exec_start_quoting_and_prefixes() {
        let s = spec(
            r#"[Service]
ExecStart=-/bin/sh -c "echo 'a b'; exit 3" 'single "q"' tab\tsep \x41\101 semi\; "a"b
"#,
        );
        let e = &s.exec_start;
        assert!(e.ignore_failure);
        assert_eq!(e.program, "/bin/sh");
        assert_eq!(
            e.args,
            [
                "-c",
                "echo 'a b'; exit 3",
                "single \"q\"",
                "tab\tsep",
                "AA",
                "semi;",
                "ab"
            ]
        );

        let e = spec("[Service]\nExecStart=@/bin/sleep my-sleeper 5\n").exec_start;
        assert_eq!(e.argv0.as_deref(), Some("my-sleeper"));
        assert_eq!(e.args, ["5"]);
        let e = spec("[Service]\nExecStart=:+/bin/echo $A\n").exec_start;
        assert!(!e.expand_env && e.privileged);
        assert_eq!(e.expanded_args(&env(&[("A", "x")])), ["$A"]);
        let e = spec("[Service]\nExecStart=!!/bin/true\n").exec_start;
        assert!(e.privileged && e.program == "/bin/true");

        assert!(spec_err("[Service]\nExecStart=sleep 5\n")
            .message
            .contains("not an absolute path"));
        assert!(spec_err("[Service]\nExecStart=/bin/a ; /bin/b\n")
            .message
            .contains("several commands"));
        assert!(spec_err("[Service]\nExecStart=/bin/echo \"open\n")
            .message
            .contains("unterminated quote"));
        assert!(spec_err("[Service]\nExecStart=/bin/echo \\q\n")
            .message
            .contains("unknown escape"));
        assert!(spec_err("[Service]\nExecStart=/bin/echo \\x00\n")
            .message
            .contains("NUL"));
        assert!(spec_err("[Service]\nExecStart=/bin/echo %n\n")
            .message
            .contains("specifier %n"));
        assert_eq!(
            spec("[Service]\nExecStart=/usr/bin/printf 100%%\n")
                .exec_start
                .args,
            ["100%"]
        );
    }

    #[test]
    fn variable_substitution_follows_systemd() {
        let e = spec(
            "[Service]\nExecStart=/bin/echo $WORDS ${WORDS} x${ONE}y $UNSET ${UNSET} $$HOME \
             mid$ONE $ONE/x ${bad-name}\n",
        )
        .exec_start;
        let got = e.expanded_args(&env(&[("WORDS", "a  b \"c d\""), ("ONE", "1")]));
        assert_eq!(
            got,
            [
                "a",
                "b",
                "c d",
                "a  b \"c d\"",
                "x1y",
                "",
                "$HOME",
                "mid$ONE",
                "$ONE/x",
                "${bad-name}"
            ]
        );
    }

    #[test]
    fn exactly_one_exec_start() {
        assert_eq!(
            spec_err("[Service]\nType=simple\n").to_string(),
            "has no ExecStart="
        );
        assert!(spec_err("[Service]\nExecStart=/bin/a\nExecStart=/bin/b\n")
            .message
            .contains("only one ExecStart="));
        assert!(
            spec_err("[Service]\nType=oneshot\nExecStart=/bin/a\nExecStart=/bin/b\n")
                .message
                .contains("oneshot")
        );
        // A reset (as a drop-in would write) leaves one.
        let s = spec("[Service]\nExecStart=/bin/a\nExecStart=\nExecStart=/bin/b\n");
        assert_eq!(s.exec_start.program, "/bin/b");
        assert_eq!(
            spec_err("[Unit]\nDescription=x\n").message,
            "has no [Service] section"
        );
    }

    #[test]
    fn line_continuations_and_comments() {
        let unit = parse(
            "[Service]\nExecStart=/bin/echo one \\\n  two \\\n# a comment inside\n; another\n  three\nKey=a\\\\\nOther=b\n",
        )
        .unwrap();
        let svc = unit.section("Service").unwrap();
        let exec = svc.get("ExecStart").unwrap();
        assert_eq!(exec.line, 2);
        assert_eq!(
            spec_words(&exec.value),
            ["/bin/echo", "one", "two", "three"]
        );
        // An escaped backslash at the end is not a continuation.
        assert_eq!(svc.get("Key").unwrap().value, "a\\\\");
        assert_eq!(svc.get("Other").unwrap().value, "b");
        // A continuation at the end of the file ends the entry.
        let unit = parse("[Service]\nExecStart=/bin/true \\").unwrap();
        assert_eq!(
            unit.section("Service")
                .unwrap()
                .get("ExecStart")
                .unwrap()
                .value,
            "/bin/true"
        );
    }

    fn spec_words(s: &str) -> Vec<String> {
        split_words(s, true)
            .unwrap()
            .into_iter()
            .map(|w| w.text)
            .collect()
    }

    #[test]
    fn repeated_sections_merge_and_crlf() {
        let unit = parse(
            "\u{feff}[Unit]\r\nDescription=x\r\n[Service]\r\nExecStart=/bin/a\r\n[Unit]\r\nAfter=y\r\n",
        )
        .unwrap();
        assert_eq!(unit.sections().len(), 2);
        let keys: Vec<_> = unit
            .section("Unit")
            .unwrap()
            .entries()
            .iter()
            .map(|e| e.key.as_str())
            .collect();
        assert_eq!(keys, ["Description", "After"]);
        assert_eq!(
            spec("[Service]\r\nExecStart=/bin/a\r\n").exec_start.program,
            "/bin/a"
        );
    }

    #[test]
    fn bad_inputs_are_refused() {
        let e = parse("[Service]\nExecStart=/bin/a\0b\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("NUL"), "{e}");
        let e = parse("ExecStart=/bin/a\n[Service]\n").unwrap_err();
        assert_eq!(e.line, Some(1));
        assert!(e.message.contains("before any section header"), "{e}");
        assert!(parse("[Service\nA=b\n").is_err());
        assert!(parse("[]\n").is_err());
        assert!(parse("[Service]\njust words\n").is_err());
        assert!(parse("[Service]\nBad Key=1\n").is_err());
        assert!(parse("[Service]\n=1\n").is_err());
        assert!(parse("[Service]\nA=\x1b[31m\n").is_err());
        assert!(spec_err("[Service]\nExecStart=/bin/a\nRestart=sometimes\n")
            .message
            .contains("Restart="));
        assert!(spec_err("[Service]\nExecStart=/bin/a\nType=magic\n")
            .message
            .contains("Type="));
        assert!(
            spec_err("[Service]\nExecStart=/bin/a\nKillSignal=SIGNOPE\n")
                .message
                .contains("KillSignal")
        );
        assert!(spec_err("[Service]\nExecStart=/bin/a\nRestartSec=soon\n")
            .message
            .contains("RestartSec"));
        assert!(
            spec_err("[Service]\nExecStart=/bin/a\nEnvironmentFile=etc/x\n")
                .message
                .contains("not absolute")
        );
        assert!(
            spec_err("[Service]\nExecStart=/bin/a\nWorkingDirectory=~\n")
                .message
                .contains("not absolute")
        );
    }

    #[test]
    fn settings_and_defaults() {
        let s = spec("[Service]\nExecStart=/bin/a\n");
        assert_eq!(s.service_type, ServiceType::Simple);
        assert_eq!(s.restart, RestartPolicy::No);
        assert_eq!(s.restart_sec, Duration::from_millis(100));
        assert_eq!(s.timeout_stop_sec, Some(Duration::from_secs(10)));
        assert_eq!(s.kill_signal, Signal::SIGTERM);
        assert!(s.working_directory.is_none() && !s.remain_after_exit);

        let s = spec(
            "[Service]\nExecStart=/bin/a\nType=oneshot\nRestart=on-failure\nRestartSec=250ms\n\
             TimeoutStopSec=infinity\nKillSignal=INT\nWorkingDirectory=-/var/lib/x\n\
             EnvironmentFile=-/etc/default/x\nRemainAfterExit=yes\nUser=etcd\n",
        );
        assert_eq!(s.service_type, ServiceType::Oneshot);
        assert_eq!(s.restart, RestartPolicy::OnFailure);
        assert_eq!(s.restart_sec, Duration::from_millis(250));
        assert_eq!(s.timeout_stop_sec, None);
        assert_eq!(s.kill_signal, Signal::SIGINT);
        assert_eq!(
            s.working_directory,
            Some(WorkingDirectory {
                path: "/var/lib/x".into(),
                optional: true
            })
        );
        assert!(s.environment_files[0].optional);
        assert!(s.remain_after_exit);
        assert_eq!(s.user.as_deref(), Some("etcd"));
        assert_eq!(
            spec("[Service]\nExecStart=/bin/a\nTimeoutSec=3\n").timeout_stop_sec,
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            spec("[Service]\nExecStart=/bin/a\nTimeoutStopSec=0\n").timeout_stop_sec,
            None
        );
        assert_eq!(
            spec("[Service]\nExecStart=/bin/a\nKillSignal=9\n").kill_signal,
            Signal::SIGKILL
        );
    }

    #[test]
    fn time_spans() {
        let d = |s: &str| parse_time_span(s).unwrap().unwrap();
        assert_eq!(d("5s"), Duration::from_secs(5));
        assert_eq!(d("2"), Duration::from_secs(2));
        assert_eq!(d("100ms"), Duration::from_millis(100));
        assert_eq!(d("1min 30s"), Duration::from_secs(90));
        assert_eq!(d("1min30s"), Duration::from_secs(90));
        assert_eq!(d("1.5s"), Duration::from_millis(1500));
        assert_eq!(d("0.25"), Duration::from_millis(250));
        assert_eq!(d("2h 1m 3s 4ms"), Duration::from_millis(7_263_004));
        assert_eq!(d("1d"), Duration::from_secs(86_400));
        assert_eq!(d("1w"), Duration::from_secs(604_800));
        assert_eq!(d("500us"), Duration::from_micros(500));
        assert_eq!(d(" 5 s "), Duration::from_secs(5));
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(parse_time_span("infinity").unwrap(), None);
        for bad in [
            "",
            "s",
            "5x",
            "-5s",
            "1..5s",
            "1.2.3s",
            "5s junk",
            "99999999999999999999y",
        ] {
            assert!(parse_time_span(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// Found by the `unitfile` fuzz target: a whole part that fits just below u128::MAX
    /// nanoseconds plus a fraction overflowed (a panic with overflow checks, a silently wrapped,
    /// tiny `RestartSec=` without).
    #[test]
    fn time_span_fraction_cannot_overflow() {
        let huge = "340282366920938463463374607431.9s";
        assert!(parse_time_span(huge).is_err(), "{huge:?} accepted");
        let unit = parse(&format!("[Service]\nExecStart=/bin/a\nRestartSec={huge}\n")).unwrap();
        assert!(ServiceSpec::from_unit(&unit).is_err());
    }

    #[test]
    fn restart_table() {
        use ExitClass::*;
        let table = [
            (RestartPolicy::No, [false, false, false]),
            (RestartPolicy::Always, [true, true, true]),
            (RestartPolicy::OnSuccess, [true, false, false]),
            (RestartPolicy::OnFailure, [false, true, true]),
            (RestartPolicy::OnAbnormal, [false, false, true]),
            (RestartPolicy::OnAbort, [false, false, true]),
            (RestartPolicy::OnWatchdog, [false, false, false]),
        ];
        for (policy, expected) in table {
            let got = [Clean, UncleanCode, UncleanSignal].map(|c| policy.restarts_after(c));
            assert_eq!(got, expected, "{policy:?}");
        }
    }

    #[test]
    fn environment_files() {
        let vars = parse_env_file(
            "# etcd settings\n\
             ETCD_NAME=etcd1\n\
             ; another comment\n\
             \n\
             export ETCD_DATA_DIR=/var/lib/etcd\n\
             QUOTED=\"a b \\\"c\\\" \\$HOME\"\n\
             SINGLE='x \"y\" $z'\n\
             TRAILING=value   \n\
             KEEP=\"space \"  \n\
             SPACED = around\n\
             MULTI=\"line1\n\
             line2\"\n\
             CONT=one\\\n\
             two\n\
             EMPTY=\n\
             not a variable\n\
             1BAD=x\n\
             HASH=a#b\n\
             LAST=end",
        );
        let expected = [
            ("ETCD_NAME", "etcd1"),
            ("ETCD_DATA_DIR", "/var/lib/etcd"),
            ("QUOTED", "a b \"c\" $HOME"),
            ("SINGLE", "x \"y\" $z"),
            ("TRAILING", "value"),
            ("KEEP", "space "),
            ("SPACED", "around"),
            ("MULTI", "line1\nline2"),
            ("CONT", "onetwo"),
            ("EMPTY", ""),
            ("HASH", "a#b"),
            ("LAST", "end"),
        ];
        let got: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, expected);
    }
}
