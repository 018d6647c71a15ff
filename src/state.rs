//! Per-(profile, owner, lab) state: a lock, a journal of side effects, and a compacted state file.
//!
//! Every side effect is journaled before (intent) and after (done/failed). A run that dies leaves
//! intents without results; the next run replays the journal, reports what was interrupted and
//! re-observes those steps (resources are found again by name and ownership labels, so the run
//! adopts or finishes what was left). The state file is a record for `list` and `status`; the
//! backend's own listing stays the truth.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LabState {
    pub status: String,
    pub last_run: String,
    pub updated_at: u64,
    pub steps: BTreeMap<String, StepRecord>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StepRecord {
    pub kind: String,
    pub outputs: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Intent,
    Done,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JournalEntry {
    pub ts: u64,
    pub run_id: String,
    pub step: String,
    pub kind: String,
    pub action: String,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Map<String, Value>>,
}

/// What an earlier, interrupted run left unfinished (`step` empty: the run as a whole).
#[derive(Debug, Clone, PartialEq)]
pub struct Interrupted {
    pub step: String,
    pub action: String,
    pub run_id: String,
}

/// Folds a journal onto a state: results update step records, intents without a result are
/// reported as interrupted. Pure, so it is unit-tested without touching the disk.
pub fn replay(state: &mut LabState, entries: &[JournalEntry]) -> Vec<Interrupted> {
    let mut open: Vec<Interrupted> = Vec::new();
    for e in entries {
        open.retain(|i| i.step != e.step);
        match e.phase {
            Phase::Intent => {
                open.push(Interrupted { step: e.step.clone(), action: e.action.clone(), run_id: e.run_id.clone() })
            }
            Phase::Done => {
                if e.action == "delete" {
                    state.steps.remove(&e.step);
                } else {
                    let outputs = e.outputs.clone().unwrap_or_default();
                    state.steps.insert(e.step.clone(), StepRecord { kind: e.kind.clone(), outputs });
                }
            }
            Phase::Failed => {}
        }
        state.last_run = e.run_id.clone();
    }
    if !open.is_empty() {
        state.status = "interrupted".into();
    }
    open
}

pub struct StateStore {
    dir: PathBuf,
    _lock: File,
    journal: File,
    pub state: LabState,
    pub interrupted: Vec<Interrupted>,
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `<root>/<profile>/<owner>/<lab>`
pub fn lab_dir(root: &Path, profile: &str, owner: &str, lab: &str) -> PathBuf {
    root.join(profile).join(owner).join(lab)
}

fn private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating state dir {}", dir.display()), e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("securing {}", dir.display()), e))
}

fn open_private(path: &Path, append: bool) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .read(true)
        .append(append)
        .write(!append)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))
}

/// Reads the recorded status without taking the lock (for `labctl list`).
pub fn peek_status(dir: &Path) -> Option<String> {
    let text = fs::read_to_string(dir.join("state.json")).ok()?;
    let state: LabState = serde_json::from_str(&text).ok()?;
    let journal_open = fs::metadata(dir.join("journal.jsonl")).map(|m| m.len() > 0).unwrap_or(false);
    Some(if journal_open { "interrupted".into() } else { state.status })
}

impl StateStore {
    /// Opens the state of one lab, waiting up to `lock_timeout` for another labctl to finish.
    pub fn open(dir: &Path, command: &str, lock_timeout: Duration, on_wait: impl Fn(&str)) -> Result<StateStore> {
        private_dir(dir)?;
        let lock_path = dir.join("lock");
        let lock = open_private(&lock_path, false)?;
        let started = Instant::now();
        let mut told = false;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) => {
                    let holder = fs::read_to_string(dir.join("lock.info")).unwrap_or_else(|_| "unknown".into());
                    let holder = holder.trim().to_string();
                    if started.elapsed() >= lock_timeout {
                        return Err(Error::Locked { path: lock_path, holder });
                    }
                    if !told {
                        on_wait(&format!("waiting for the lock held by {holder} ..."));
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(Error::io(format!("locking {}", lock_path.display()), e));
                }
            }
        }
        let info = format!("pid {} running `labctl {command}`", std::process::id());
        write_atomic(&dir.join("lock.info"), info.as_bytes())?;

        let mut state: LabState = match fs::read_to_string(dir.join("state.json")) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_default(),
            Err(_) => LabState::default(),
        };
        let journal_path = dir.join("journal.jsonl");
        let entries = read_journal(&journal_path);
        let mut interrupted = replay(&mut state, &entries);
        // A journal that was never compacted means the last run stopped before it finished,
        // even if each of its side effects had completed (e.g. killed while waiting).
        if interrupted.is_empty()
            && let Some(last) = entries.last()
        {
            interrupted.push(Interrupted {
                step: String::new(),
                action: "its final checks".into(),
                run_id: last.run_id.clone(),
            });
            state.status = "interrupted".into();
        }
        let journal = open_private(&journal_path, true)?;
        Ok(StateStore { dir: dir.to_path_buf(), _lock: lock, journal, state, interrupted })
    }

    pub fn record(&mut self, entry: JournalEntry) -> Result<()> {
        let mut line = serde_json::to_string(&entry).expect("journal entries serialize");
        line.push('\n');
        self.journal
            .write_all(line.as_bytes())
            .and_then(|_| self.journal.sync_data())
            .map_err(|e| Error::io("writing the journal", e))?;
        replay(&mut self.state, std::slice::from_ref(&entry));
        Ok(())
    }

    /// Writes the compacted state atomically and empties the journal: the run is accounted for.
    pub fn commit(&mut self, status: &str) -> Result<()> {
        self.state.status = status.to_string();
        self.state.updated_at = now();
        let text = serde_json::to_vec_pretty(&self.state).expect("state serializes");
        write_atomic(&self.dir.join("state.json"), &text)?;
        self.journal.set_len(0).map_err(|e| Error::io("truncating the journal", e))?;
        Ok(())
    }
}

fn read_journal(path: &Path) -> Vec<JournalEntry> {
    let Ok(file) = File::open(path) else {
        return Vec::new();
    };
    // A line torn by a crash mid-write is skipped: its side effect is re-observed anyway.
    BufReader::new(file).lines().map_while(|l| l.ok()).filter_map(|l| serde_json::from_str(&l).ok()).collect()
}

/// Write to a temporary file in the same folder (0600), fsync, rename over the target.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(format!("renaming onto {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(step: &str, action: &str, phase: Phase, run: &str) -> JournalEntry {
        let outputs =
            (phase == Phase::Done).then(|| Map::from_iter([("id".to_string(), Value::from(format!("{step}-id")))]));
        JournalEntry {
            ts: 0,
            run_id: run.into(),
            step: step.into(),
            kind: "fake".into(),
            action: action.into(),
            phase,
            outputs,
        }
    }

    #[test]
    fn replay_reports_intents_without_results() {
        let mut state = LabState::default();
        let entries = vec![
            entry("image", "create", Phase::Intent, "r1"),
            entry("image", "create", Phase::Done, "r1"),
            entry("app", "create", Phase::Intent, "r1"),
        ];
        let open = replay(&mut state, &entries);
        assert_eq!(open, vec![Interrupted { step: "app".into(), action: "create".into(), run_id: "r1".into() }]);
        assert_eq!(state.steps["image"].outputs["id"], Value::from("image-id"));
        assert!(!state.steps.contains_key("app"));
        assert_eq!(state.status, "interrupted");
    }

    #[test]
    fn replay_of_a_complete_run_leaves_nothing_open_and_deletes_forget_steps() {
        let mut state = LabState::default();
        let entries = vec![
            entry("app", "create", Phase::Intent, "r1"),
            entry("app", "create", Phase::Done, "r1"),
            entry("app", "delete", Phase::Intent, "r2"),
            entry("app", "delete", Phase::Done, "r2"),
            entry("x", "create", Phase::Intent, "r2"),
            entry("x", "create", Phase::Failed, "r2"),
        ];
        assert!(replay(&mut state, &entries).is_empty());
        assert!(state.steps.is_empty());
        assert_eq!(state.last_run, "r2");
    }

    #[test]
    fn store_survives_a_crash_and_commit_compacts() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("p/o/lab");
        {
            let mut store = StateStore::open(&dir, "up", Duration::ZERO, |_| {}).unwrap();
            store.record(entry("image", "create", Phase::Intent, "r1")).unwrap();
            // dropped without commit: a crash
        }
        let mut store = StateStore::open(&dir, "up", Duration::ZERO, |_| {}).unwrap();
        assert_eq!(store.interrupted.len(), 1);
        assert_eq!(peek_status(&dir), None, "no state file was ever committed");
        store.record(entry("image", "create", Phase::Done, "r2")).unwrap();
        store.commit("up").unwrap();
        let mode = fs::metadata(dir.join("state.json")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::metadata(dir.join("journal.jsonl")).unwrap().len(), 0);
        assert_eq!(peek_status(&dir).as_deref(), Some("up"));
    }

    #[test]
    fn a_second_store_on_the_same_lab_fails_clearly_while_locked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("lab");
        let _held = StateStore::open(&dir, "td4 up", Duration::ZERO, |_| {}).unwrap();
        let err = StateStore::open(&dir, "td4 up", Duration::from_millis(300), |_| {}).err().unwrap();
        assert!(matches!(err, Error::Locked { .. }));
        assert!(err.to_string().contains("labctl td4 up"), "{err}");
    }
}
