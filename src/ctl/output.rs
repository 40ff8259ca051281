//! How nodectl speaks: the exit outcome, lines on stdout (a closed pipe is
//! not an error), JSON documents and aligned tables.

use std::io::Write;

use serde::Serialize;

use crate::core::{Error, Result};

/// How a command ended (errors are returned as `Err`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0.
    Success,
    /// Exit 1: the command ran, and what it checked failed.
    Failed,
    /// Exit 3: done, but some nodes were unreachable.
    Partial,
}

impl Outcome {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::Failed => 1,
            Outcome::Partial => 3,
        }
    }
}

/// Prints `value` as one pretty JSON document.
pub fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Invalid(format!("cannot encode JSON: {e}")))?;
    write_stdout(&format!("{text}\n"))
}

/// Prints rows aligned in columns under `header`.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (cell, w) in cells.zip(&widths) {
            text.push_str(&format!("{cell:<w$}  "));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    write_stdout(&out)
}

/// Writes one line to stdout, ignoring a closed pipe.
pub fn say_line(text: &str) {
    let _ = write_stdout(&format!("{text}\n"));
}

/// Writes to stdout; a closed pipe (`nodectl list | head -1`) is not an error.
pub fn write_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::io("stdout")(e)),
        _ => Ok(()),
    }
}
