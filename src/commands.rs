//! One function per command. Each reports through the printer and returns the exit status.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

use crate::catalog::Catalog;
use crate::cli::LabAction;
use crate::config::Settings;
use crate::engine::{Run, Tally};
use crate::error::{Error, Result};
use crate::printer::{Event, Printer};
use crate::state::{self, StateStore};
use crate::step::{Ownership, Registry};

pub struct App<'a> {
    pub settings: &'a Settings,
    pub printer: &'a Printer,
    pub catalog: &'a Catalog,
    pub registry: &'a Registry,
}

fn run_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    format!("{:x}-{:x}", nanos, std::process::id())
}

impl App<'_> {
    fn lab_dir(&self, lab: &str) -> std::path::PathBuf {
        state::lab_dir(&self.settings.state_dir, &self.settings.profile_name, &self.settings.owner, lab)
    }

    pub fn list(&self) -> Result<i32> {
        for entry in self.catalog.entries() {
            let (title, status) = match entry.parse(self.registry) {
                Ok(spec) => {
                    (spec.title, state::peek_status(&self.lab_dir(&entry.name)).unwrap_or_else(|| "not up".into()))
                }
                Err(e) => (e.to_string(), "invalid".into()),
            };
            self.printer.event(Event::Lab { name: entry.name.clone(), title, status, source: entry.source.label() });
        }
        Ok(0)
    }

    pub async fn doctor(&self) -> Result<i32> {
        let mut failed = 0;
        // Each backend once, with the labs that need it.
        let mut checks: Vec<(crate::step::Diagnosis, Vec<String>)> = Vec::new();
        let mut diagnosed: std::collections::HashMap<&str, Vec<crate::step::Diagnosis>> = Default::default();
        for entry in self.catalog.entries() {
            let spec = match entry.parse(self.registry) {
                Ok(spec) => spec,
                Err(e) => {
                    failed += 1;
                    self.printer.event(Event::Doctor {
                        name: format!("lab {}", entry.name),
                        ok: false,
                        detail: e.to_string(),
                        fix: e.hint(),
                    });
                    continue;
                }
            };
            for step in spec.steps.values() {
                let kind = self.registry.get(&step.kind).expect("parse checked the kind");
                if !diagnosed.contains_key(kind.name()) {
                    diagnosed.insert(kind.name(), kind.diagnose().await);
                }
                for d in diagnosed[kind.name()].clone() {
                    match checks.iter_mut().find(|(c, _)| c.name == d.name) {
                        Some((_, labs)) if !labs.contains(&entry.name) => labs.push(entry.name.clone()),
                        Some(_) => {}
                        None => checks.push((d, vec![entry.name.clone()])),
                    }
                }
            }
        }
        for (d, labs) in checks {
            failed += usize::from(!d.ok);
            let detail = format!("{} (needed by {})", d.detail, labs.join(", "));
            self.printer.event(Event::Doctor { name: d.name, ok: d.ok, detail, fix: d.fix });
        }
        let dir = &self.settings.state_dir;
        let writable = std::fs::create_dir_all(dir).and_then(|_| tempfile_in(dir));
        failed += usize::from(writable.is_err());
        self.printer.event(Event::Doctor {
            name: "state dir".into(),
            ok: writable.is_ok(),
            detail: match &writable {
                Ok(()) => format!("{} is writable", dir.display()),
                Err(e) => format!("{}: {e}", dir.display()),
            },
            fix: Some("pass --state-dir / LABCTL_STATE_DIR pointing at a writable folder".into()),
        });
        Ok(if failed > 0 { 1 } else { 0 })
    }

    pub async fn lab(&self, lab: &str, action: LabAction) -> Result<i32> {
        let started = Instant::now();
        let entry = self.catalog.get(lab)?;
        let mut spec = entry.parse(self.registry)?;
        spec.set_params(&self.settings.profile_params(lab), &format!("profile `{}`", self.settings.profile_name))?;
        spec.set_params(&self.settings.params, "--param")?;
        let ownership = Ownership {
            lab: spec.name.clone(),
            owner: self.settings.owner.clone(),
            profile: self.settings.profile_name.clone(),
            run_id: run_id(),
        };
        self.printer.event(Event::Start {
            command: action.name().into(),
            lab: Some(lab.into()),
            owner: ownership.owner.clone(),
            profile: ownership.profile.clone(),
            run_id: ownership.run_id.clone(),
        });
        let run = Run {
            spec: &spec,
            source: &entry.source,
            registry: self.registry,
            printer: self.printer,
            ownership,
            secrets_dir: self.lab_dir(lab),
            force: matches!(action, LabAction::Up { force_conflicts: true }),
        };
        let tally = Mutex::new(Tally::default());

        let result: Result<i32> = match action {
            LabAction::Plan => run.plan().await.map(|t| {
                let code = if t.pending > 0 { 2 } else { 0 };
                *tally.lock().unwrap() = t;
                code
            }),
            LabAction::Status { exit_code } => run.status().await.map(|t| {
                let code = if exit_code && t.pending > 0 { 2 } else { 0 };
                *tally.lock().unwrap() = t;
                code
            }),
            LabAction::Verify => run.verify(&tally).await.map(|_| 0),
            LabAction::Up { .. } => self.mutating(lab, action, async |store| run.up(store, &tally).await).await,
            LabAction::Down { sweep } => {
                if !self.confirm(&format!("Remove everything lab {lab} made for owner {}?", self.settings.owner)) {
                    return Err(Error::usage("cancelled: nothing was removed", "pass --yes to skip the question"));
                }
                self.mutating(lab, action, async |store| run.down(store, &tally, sweep).await).await
            }
        };
        let code = match &result {
            Ok(code) => *code,
            Err(e) => {
                self.printer.error(e);
                e.exit_code()
            }
        };
        let t = tally.into_inner().unwrap();
        self.printer.event(Event::Summary {
            command: action.name().into(),
            ok: result.is_ok(),
            exit_code: code,
            changed: t.changed,
            unchanged: t.unchanged,
            failed: t.failed,
            pending: t.pending,
            checks_passed: t.checks_passed,
            checks_failed: t.checks_failed,
            elapsed_ms: started.elapsed().as_millis(),
        });
        Ok(code)
    }

    /// Runs a mutating command under the lab's lock, with the journal; commits the state when
    /// the command finishes (even on failure, so the journal is compacted), but not when it is
    /// interrupted: then the open journal tells the next run what to finish.
    async fn mutating(
        &self,
        lab: &str,
        action: LabAction,
        body: impl AsyncFnOnce(&Mutex<StateStore>) -> Result<()>,
    ) -> Result<i32> {
        let dir = self.lab_dir(lab);
        let command = format!("{lab} {}", action.name());
        let store = StateStore::open(&dir, &command, self.settings.lock_timeout, |m| self.printer.note(m))?;
        for i in &store.interrupted {
            self.printer.event(Event::Recovered {
                step: i.step.clone(),
                action: i.action.clone(),
                run_id: i.run_id.clone(),
            });
        }
        let store = Mutex::new(store);
        let result = tokio::select! {
            r = body(&store) => r,
            _ = tokio::signal::ctrl_c() => Err(Error::Interrupted),
        };
        if matches!(result, Err(Error::Interrupted)) {
            return result.map(|_| 0);
        }
        let status = match (&result, action) {
            (Ok(()), LabAction::Down { .. }) => "down",
            (Ok(()), _) => "up",
            (Err(e), _) if e.exit_code() == 3 => "verify failed",
            (Err(_), _) => "failed",
        };
        store.lock().unwrap_or_else(|e| e.into_inner()).commit(status)?;
        result.map(|_| 0)
    }

    fn confirm(&self, question: &str) -> bool {
        if self.settings.yes || self.printer.is_json() || !std::io::stdin().is_terminal() {
            return true;
        }
        self.printer.note(&format!("{question} [y/N]"));
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).is_ok() && matches!(answer.trim(), "y" | "Y" | "yes")
    }
}

fn tempfile_in(dir: &std::path::Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(probe)
}
