//! Man pages and shell completions generated from the clap definition, for packaging.
//!
//! `haop __generate-docs OUT_DIR` writes `OUT_DIR/man/*.1` (one page for `haop` and one per
//! subcommand) and `OUT_DIR/completions/{haop.bash,_haop,haop.fish}`. It is checked before the
//! normal argument parsing so it stays out of `--help`; `packaging/build` runs it.

use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;

const HOOK: &str = "__generate-docs";

/// Runs the generator when the first argument is the hidden hook; `None` otherwise.
pub fn maybe_run() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != HOOK {
        return None;
    }
    let Some(out) = args.next() else {
        eprintln!("usage: haop {HOOK} OUT_DIR");
        return Some(ExitCode::from(2));
    };
    match generate(Path::new(&out)) {
        Ok(()) => Some(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!(
                "error: generating docs into {}: {e}",
                Path::new(&out).display()
            );
            Some(ExitCode::from(1))
        }
    }
}

fn generate(out: &Path) -> std::io::Result<()> {
    let man_dir = out.join("man");
    let comp_dir = out.join("completions");
    std::fs::create_dir_all(&man_dir)?;
    std::fs::create_dir_all(&comp_dir)?;

    let cmd = crate::Cli::command();
    write_man_pages(cmd.clone(), &man_dir, &date())?;

    for (shell, file) in [
        (clap_complete::Shell::Bash, "haop.bash"),
        (clap_complete::Shell::Zsh, "_haop"),
        (clap_complete::Shell::Fish, "haop.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "haop", &mut buf);
        std::fs::write(comp_dir.join(file), buf)?;
    }
    Ok(())
}

/// One page per command, named `haop-etcd-recover.1` and so on, skipping hidden ones.
fn write_man_pages(cmd: clap::Command, dir: &Path, date: &str) -> std::io::Result<()> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut stack = vec![cmd];
    while let Some(cmd) = stack.pop() {
        stack.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
        let man = clap_mangen::Man::new(cmd)
            .date(date)
            .manual("haop manual")
            .source(format!("haop {}", env!("CARGO_PKG_VERSION")));
        man.generate_to(dir)?;
    }
    Ok(())
}

/// The pages' date: SOURCE_DATE_EPOCH when set (reproducible builds), else today.
fn date() -> String {
    let now = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or_else(time::OffsetDateTime::now_utc);
    let d = now.date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}
