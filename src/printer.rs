//! The one printer. Every byte labctl writes goes through here, so `--json` and `-q` cannot be
//! bypassed: human mode draws step lines, spinners and tables; JSON mode writes one event per
//! line on stdout and nothing else.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::Value;

use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

/// One line of `--json` output. The `event` field names the variant.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Start {
        command: String,
        lab: Option<String>,
        owner: String,
        profile: String,
        run_id: String,
    },
    Recovered {
        step: String,
        action: String,
        run_id: String,
    },
    Planned {
        step: String,
        kind: String,
        action: String,
        reason: String,
    },
    Started {
        step: String,
        kind: String,
        action: String,
    },
    Log {
        step: String,
        line: String,
    },
    Changed {
        step: String,
        action: String,
        outputs: Value,
        elapsed_ms: u128,
    },
    Unchanged {
        step: String,
        outputs: Value,
    },
    Failed {
        step: String,
        error: String,
    },
    Status {
        step: String,
        kind: String,
        state: String,
        drift: bool,
        details: Vec<(String, String)>,
    },
    Check {
        name: String,
        ok: bool,
        detail: String,
    },
    Outputs {
        outputs: Value,
    },
    Lab {
        name: String,
        title: String,
        status: String,
        source: String,
    },
    Doctor {
        name: String,
        ok: bool,
        detail: String,
        fix: Option<String>,
    },
    Error {
        message: String,
        hint: Option<String>,
        exit_code: i32,
    },
    Summary {
        command: String,
        ok: bool,
        exit_code: i32,
        changed: usize,
        unchanged: usize,
        failed: usize,
        pending: usize,
        checks_passed: usize,
        checks_failed: usize,
        elapsed_ms: u128,
    },
}

pub struct Printer {
    json: bool,
    verbosity: Verbosity,
    progress: Option<MultiProgress>,
    out: Mutex<()>,
}

impl Printer {
    pub fn new(json: bool, verbosity: Verbosity) -> Self {
        // Spinners only for a person at a terminal; never in JSON or quiet mode.
        let progress = (!json && verbosity != Verbosity::Quiet && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Printer { json, verbosity, progress, out: Mutex::new(()) }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Writes one line to stdout. A closed pipe (`labctl status | head`) is not an error.
    fn line(&self, text: &str) {
        let _guard = self.out.lock().unwrap_or_else(|e| e.into_inner());
        match &self.progress {
            Some(mp) if !self.json => {
                let _ = mp.println(text);
            }
            _ => {
                let mut stdout = std::io::stdout().lock();
                let _ = writeln!(stdout, "{text}");
                let _ = stdout.flush();
            }
        }
    }

    fn human(&self, text: &str) {
        if !self.json && self.verbosity != Verbosity::Quiet {
            self.line(text);
        }
    }

    /// Emits an event: as JSON in JSON mode, as a formatted line otherwise.
    pub fn event(&self, event: Event) {
        if self.json {
            let text = serde_json::to_string(&event).expect("events serialize");
            self.line(&text);
            return;
        }
        match &event {
            Event::Start { command, lab, owner, profile, .. } => {
                let what = lab.as_ref().map(|l| format!("{l} {command}")).unwrap_or(command.clone());
                self.human(&format!("labctl {what}  (owner {owner}, profile {profile})"));
            }
            Event::Recovered { step, action, run_id } => {
                let step = if step.is_empty() { "(run)" } else { step.as_str() };
                self.human(&format!(
                    "  ! {step:<10} run {run_id} was interrupted during {action}: re-observing and converging"
                ))
            }
            Event::Planned { step, action, reason, .. } => {
                let sign = match action.as_str() {
                    "create" => "+",
                    "delete" => "-",
                    "replace" => "±",
                    "none" => "=",
                    _ => "~",
                };
                self.human(&format!("  {sign} {step:<10} {action:<8} {reason}"));
            }
            Event::Started { .. } => {}
            Event::Log { line, .. } => {
                if self.verbosity == Verbosity::Verbose || self.progress.is_none() {
                    self.human(&format!("      │ {line}"));
                }
            }
            Event::Changed { step, action, outputs, elapsed_ms } => {
                self.human(&format!("  ✓ {step:<10} {action} {}  ({})", summarize(outputs), seconds(*elapsed_ms)))
            }
            Event::Unchanged { step, outputs } => {
                self.human(&format!("  = {step:<10} unchanged {}", summarize(outputs)))
            }
            Event::Failed { step, error } => self.human(&format!("  ✗ {step:<10} {error}")),
            Event::Status { step, kind, state, drift, details } => {
                let mark = if *drift { "!" } else { " " };
                self.human(&format!("{mark} {step:<10} {kind:<18} {state}"));
                for (k, v) in details {
                    self.human(&format!("      {k:<12} {v}"));
                }
            }
            Event::Check { name, ok, detail } => {
                let mark = if *ok { "✓" } else { "✗" };
                let sep = if detail.is_empty() { "" } else { " — " };
                self.human(&format!("  {mark} {name}{sep}{detail}"));
            }
            Event::Outputs { outputs } => {
                if let Some(map) = outputs.as_object().filter(|m| !m.is_empty()) {
                    self.human("outputs:");
                    for (k, v) in map {
                        self.human(&format!("  {k} = {}", crate::spec::plain(v)));
                    }
                }
            }
            Event::Lab { name, title, status, .. } => {
                self.line(&format!("{name:<6} {status:<12} {title}"));
            }
            Event::Doctor { name, ok, detail, fix } => {
                let mark = if *ok { "✓" } else { "✗" };
                self.line(&format!("{mark} {name:<18} {detail}"));
                if let Some(fix) = fix.as_ref().filter(|_| !ok) {
                    self.line(&format!("  fix: {fix}"));
                }
            }
            Event::Error { .. } => {}
            Event::Summary {
                command,
                ok,
                changed,
                unchanged,
                failed,
                pending,
                checks_passed,
                checks_failed,
                elapsed_ms,
                ..
            } => {
                let mut parts = Vec::new();
                let nothing_counted = changed + unchanged + failed + pending + checks_passed + checks_failed == 0;
                if !*ok && nothing_counted {
                    // Stopped before any step ran (the error follows): no counts to show.
                } else if command == "plan" {
                    parts.push(format!("{pending} to change, {unchanged} unchanged"));
                } else if command != "verify" && command != "status" {
                    parts.push(format!("{changed} changed, {unchanged} unchanged, {failed} failed"));
                } else if command == "status" && *pending > 0 {
                    parts.push(format!("{pending} drifted or missing"));
                }
                if checks_passed + checks_failed > 0 {
                    parts.push(format!("{checks_passed}/{} checks passed", checks_passed + checks_failed));
                }
                parts.push(seconds(*elapsed_ms));
                let head = if *ok { "done" } else { "failed" };
                self.human(&format!("{head}: {}", parts.join(" · ")));
            }
        }
    }

    /// Reports an error: on stderr in human mode (with its hint and detail), as an event in JSON.
    pub fn error(&self, err: &Error) {
        if self.json {
            self.event(Event::Error { message: err.to_string(), hint: err.hint(), exit_code: err.exit_code() });
            return;
        }
        let mut text = format!("error: {err}");
        if let Some(detail) = err.detail() {
            text.push('\n');
            for l in detail.lines() {
                text.push_str(&format!("  │ {l}\n"));
            }
            text.pop();
        }
        if let Some(hint) = err.hint() {
            text.push_str(&format!("\n  hint: {hint}"));
        }
        let _guard = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(std::io::stderr(), "{text}");
    }

    /// A note for a person (waiting for a lock, etc.); silent in JSON and quiet modes.
    pub fn note(&self, text: &str) {
        if !self.json && self.verbosity != Verbosity::Quiet {
            let _guard = self.out.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(std::io::stderr(), "{text}");
        }
    }

    /// Plain text output for commands whose product is text (completions).
    pub fn raw(&self, text: &str) {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    }

    /// Plain text on stderr (usage errors before settings are known).
    pub fn raw_err(&self, text: &str) {
        let _ = std::io::stderr().write_all(text.as_bytes());
    }

    /// A spinner for one running step; log lines stream under it.
    pub fn activity(&self, step: &str, message: &str) -> Activity<'_> {
        let bar = self.progress.as_ref().map(|mp| {
            let bar = mp.add(ProgressBar::new_spinner());
            bar.set_style(ProgressStyle::with_template("  {spinner} {prefix:<10} {wide_msg}").expect("valid template"));
            bar.set_prefix(step.to_string());
            bar.set_message(message.to_string());
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Activity { printer: self, step: step.to_string(), bar }
    }
}

pub struct Activity<'a> {
    printer: &'a Printer,
    step: String,
    bar: Option<ProgressBar>,
}

impl Activity<'_> {
    pub fn log(&self, line: &str) {
        let line = strip_ansi(line);
        let line = line.trim_end();
        if line.is_empty() {
            return;
        }
        if let Some(bar) = &self.bar {
            bar.set_message(line.chars().take(100).collect::<String>());
        }
        self.printer.event(Event::Log { step: self.step.clone(), line: line.to_string() });
    }
}

impl Drop for Activity<'_> {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn summarize(outputs: &Value) -> String {
    match outputs.as_object() {
        Some(map) if !map.is_empty() => {
            map.iter().map(|(k, v)| format!("{k}={}", shorten_id(&crate::spec::plain(v)))).collect::<Vec<_>>().join(" ")
        }
        _ => String::new(),
    }
}

/// `sha256:<64 hex>` or a bare 64-hex id → its first 12 hex digits, as `docker ps` shows them.
fn shorten_id(v: &str) -> String {
    let hex = v.strip_prefix("sha256:").unwrap_or(v);
    if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) { hex[..12].to_string() } else { v.to_string() }
}

/// Removes terminal escape sequences (npm colours its stderr) from a log line.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                while let Some(&n) = chars.peek() {
                    chars.next();
                    if n.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn seconds(ms: u128) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_lose_colour_codes_and_ids_are_shortened() {
        assert_eq!(strip_ansi("\u{1b}[91mnpm notice\u{1b}[0m"), "npm notice");
        let id = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(shorten_id(&id), "abababababab");
        assert_eq!(shorten_id("sample-app"), "sample-app");
    }

    #[test]
    fn json_events_are_tagged_single_lines() {
        let e = Event::Check { name: "GET /".into(), ok: true, detail: "200\nHello".into() };
        let line = serde_json::to_string(&e).unwrap();
        assert!(!line.contains('\n'));
        assert!(line.starts_with(r#"{"event":"check""#), "{line}");
    }
}
