//! How a command prints: a table for people, JSON for scripts (`-o json`).
//!
//! One enum for every command that has the two forms, so `-o` means the same everywhere.
//! (`haop status` has its own, with YAML as well.)

use clap::ValueEnum;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, Default)]
pub enum Format {
    /// Aligned columns or lines for a terminal.
    #[default]
    #[value(alias = "text")]
    Table,
    /// One JSON document on stdout.
    Json,
}
