//! One error type for the whole program. Each variant carries what a user needs to act on it,
//! `hint()` says how to fix it and `exit_code()` maps it to the documented exit status.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown lab `{name}`")]
    UnknownLab { name: String, known: Vec<String> },

    /// A lab spec that does not parse or does not make sense. `line` is 1-based, 0 when unknown.
    #[error("{file}:{line}: {message}")]
    Spec { file: String, line: u64, message: String },

    #[error("{file}: {message}")]
    Config { file: String, message: String },

    /// Bad command-line or environment input (owner, param, flag value).
    #[error("{message}")]
    Usage { message: String, hint: Option<String> },

    #[error("cannot reach {backend}: {message}")]
    Unreachable { backend: String, message: String, fix: String },

    /// A step kind's own failure, with an optional detail block (e.g. the tail of a build log).
    #[error("{message}")]
    Backend { message: String, detail: Option<String>, hint: Option<String> },

    #[error("step `{step}` failed: {source}")]
    Step { step: String, source: Box<Error> },

    #[error("{failed} of {total} checks failed")]
    VerifyFailed { failed: usize, total: usize },

    #[error("the state of this lab is locked by another labctl ({holder})")]
    Locked { path: PathBuf, holder: String },

    #[error("interrupted")]
    Interrupted,

    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

impl Error {
    pub fn backend(message: impl Into<String>) -> Self {
        Error::Backend { message: message.into(), detail: None, hint: None }
    }

    pub fn usage(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Usage { message: message.into(), hint: Some(hint.into()) }
    }

    /// A resource with the name labctl would use exists but is not this owner's: labctl never
    /// adopts, changes or removes it. `how` says how the user can free the name.
    pub fn not_ours(what: &str, owner: &str, how: &str) -> Self {
        Error::Backend {
            message: format!("{what} exists and was not made by labctl for owner `{owner}`"),
            detail: None,
            hint: Some(format!("labctl will not touch it: {how}, or use another owner")),
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }

    pub fn in_step(self, step: &str) -> Self {
        match self {
            // Interruption and already-attributed errors keep their identity.
            Error::Interrupted | Error::Step { .. } => self,
            other => Error::Step { step: step.to_string(), source: Box::new(other) },
        }
    }

    /// The innermost error, past the step attribution.
    pub fn root(&self) -> &Error {
        match self {
            Error::Step { source, .. } => source.root(),
            other => other,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self.root() {
            Error::VerifyFailed { .. } => 3,
            Error::Interrupted => 130,
            _ => 1,
        }
    }

    /// Extra lines shown under the error: a build-log tail, a parser's snippet.
    pub fn detail(&self) -> Option<&str> {
        match self.root() {
            Error::Backend { detail, .. } => detail.as_deref(),
            _ => None,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self.root() {
            Error::UnknownLab { known, .. } => Some(format!(
                "known labs: {} (see `labctl list`; add one with a spec file in --labs-dir)",
                known.join(", ")
            )),
            Error::Spec { .. } => Some("fix the lab spec, then check it with `labctl <lab> plan`".into()),
            Error::Config { .. } => {
                Some("fix the config file, or point --config / LABCTL_CONFIG at another one".into())
            }
            Error::Usage { hint, .. } | Error::Backend { hint, .. } => hint.clone(),
            Error::Unreachable { fix, .. } => Some(fix.clone()),
            Error::VerifyFailed { .. } => {
                Some("see the failed checks above; `labctl <lab> status` shows the live state".into())
            }
            Error::Locked { path, .. } => Some(format!(
                "wait for the other run to finish (or pass --lock-timeout); the lock file is {}",
                path.display()
            )),
            Error::Interrupted => Some("run the same command again: it resumes from the journal".into()),
            _ => None,
        }
    }
}
