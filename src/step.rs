//! The step-kind contract. A step kind is a plug-in: the engine drives it through this trait and
//! knows nothing of Docker, AWS or Kubernetes. Adding a backend = adding kinds to the registry.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::error::Result;
use crate::files::SpecSource;
use crate::printer::Activity;

pub type Outputs = Map<String, Value>;

/// Who owns a resource. Every resource a kind makes carries these as labels/tags, and every
/// lookup filters on them, so one owner's run can never see or touch another's resources.
#[derive(Debug, Clone)]
pub struct Ownership {
    pub lab: String,
    pub owner: String,
    pub profile: String,
    pub run_id: String,
}

pub const LABEL_MANAGED: &str = "labctl.managed";
pub const LABEL_LAB: &str = "labctl.lab";
pub const LABEL_OWNER: &str = "labctl.owner";
pub const LABEL_PROFILE: &str = "labctl.profile";
pub const LABEL_STEP: &str = "labctl.step";
pub const LABEL_RUN: &str = "labctl.run-id";
/// Hash of the desired configuration a resource was made from: equal hash = nothing to do.
pub const LABEL_INPUT: &str = "labctl.input-hash";

impl Ownership {
    /// The labels a resource of `step` carries.
    pub fn labels(&self, step: &str, input_hash: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_MANAGED.into(), "true".into()),
            (LABEL_LAB.into(), self.lab.clone()),
            (LABEL_OWNER.into(), self.owner.clone()),
            (LABEL_PROFILE.into(), self.profile.clone()),
            (LABEL_STEP.into(), step.into()),
            (LABEL_RUN.into(), self.run_id.clone()),
            (LABEL_INPUT.into(), input_hash.into()),
        ])
    }

    /// Label selectors (`key=value`) for this owner's resources of one step, or of the whole lab.
    pub fn selector(&self, step: Option<&str>) -> Vec<String> {
        let mut s = vec![
            format!("{LABEL_MANAGED}=true"),
            format!("{LABEL_LAB}={}", self.lab),
            format!("{LABEL_OWNER}={}", self.owner),
            format!("{LABEL_PROFILE}={}", self.profile),
        ];
        if let Some(step) = step {
            s.push(format!("{LABEL_STEP}={step}"));
        }
        s
    }

    /// True when `labels` mark a resource as this owner's (profile and lab included).
    pub fn owns(&self, labels: &std::collections::HashMap<String, String>) -> bool {
        let is = |k: &str, v: &str| labels.get(k).is_some_and(|x| x == v);
        is(LABEL_MANAGED, "true")
            && is(LABEL_LAB, &self.lab)
            && is(LABEL_OWNER, &self.owner)
            && is(LABEL_PROFILE, &self.profile)
    }
}

/// What a step sees of the run.
pub struct StepCtx<'a> {
    pub step: &'a str,
    pub ownership: &'a Ownership,
    pub source: &'a SpecSource,
    /// This (profile, owner, lab)'s private folder (0700): where generated secrets go.
    pub secrets_dir: &'a std::path::Path,
    /// `up --force-conflicts`: take ownership of fields another manager holds.
    pub force: bool,
    pub activity: Option<&'a Activity<'a>>,
}

impl StepCtx<'_> {
    pub fn log(&self, line: &str) {
        if let Some(a) = self.activity {
            a.log(line);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    Create,
    Update,
    Replace,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::None => "none",
            Action::Create => "create",
            Action::Update => "update",
            Action::Replace => "replace",
        }
    }

    /// Past tense, for result lines.
    pub fn done(self) -> &'static str {
        match self {
            Action::None => "unchanged",
            Action::Create => "created",
            Action::Update => "updated",
            Action::Replace => "replaced",
        }
    }
}

/// The result of `observe`: what exists, and what `apply` would do about it.
#[derive(Debug, Clone)]
pub struct Observation {
    pub action: Action,
    pub reason: String,
    /// Outputs of the existing resource (empty when absent).
    pub outputs: Outputs,
    /// Live facts for `status` (state, ids, health).
    pub details: Vec<(String, String)>,
    /// Something changed behind labctl's back (status reports it, `--exit-code` exits 2).
    pub drift: bool,
}

impl Observation {
    pub fn absent(reason: impl Into<String>) -> Self {
        Observation {
            action: Action::Create,
            reason: reason.into(),
            outputs: Outputs::new(),
            details: vec![],
            drift: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CheckResult {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// A named health check of a backend, for `labctl doctor`.
#[derive(Debug, Clone)]
pub struct Diagnosis {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    pub fix: Option<String>,
}

#[async_trait]
pub trait StepKind: Send + Sync {
    /// The `kind:` name in lab specs.
    fn name(&self) -> &'static str;

    /// Checks the shape of a step's config (rendered with pending values); the message names the field.
    fn validate(&self, config: &Value) -> std::result::Result<(), String>;

    /// Read-only: what exists now, and the action that would make it match `desired`.
    /// `pending` is true when part of `desired` depends on a step that has not run yet.
    async fn observe(&self, ctx: &StepCtx<'_>, desired: &Value, pending: bool) -> Result<Observation>;

    /// Checks that must pass before anything at all is mutated (ports free, inputs present).
    async fn preflight(&self, _ctx: &StepCtx<'_>, _desired: &Value, _observed: &Observation) -> Result<()> {
        Ok(())
    }

    /// Makes it so. Idempotent; called only when the action is not `None`.
    async fn apply(&self, ctx: &StepCtx<'_>, desired: &Value, observed: &Observation) -> Result<Outputs>;

    /// Readiness (with a timeout and the reason when not ready). Read-only.
    async fn wait(&self, _ctx: &StepCtx<'_>, _desired: &Value, _outputs: &Outputs) -> Result<()> {
        Ok(())
    }

    /// The step's own checks, beyond readiness.
    async fn verify(&self, _ctx: &StepCtx<'_>, _desired: &Value, _outputs: &Outputs) -> Result<Vec<CheckResult>> {
        Ok(vec![])
    }

    /// Removes what this owner's step made (found by labels; `step: None` = the whole lab, for
    /// sweeps) and waits until it is gone. Returns a description of each removed resource.
    async fn destroy(&self, ctx: &StepCtx<'_>, step: Option<&str>) -> Result<Vec<String>>;

    /// Backend checks for `labctl doctor`.
    async fn diagnose(&self) -> Vec<Diagnosis>;
}

/// The step kinds this binary knows, by name.
#[derive(Default, Clone)]
pub struct Registry {
    kinds: Vec<Arc<dyn StepKind>>,
}

impl Registry {
    pub fn with(mut self, kind: Arc<dyn StepKind>) -> Self {
        self.kinds.push(kind);
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn StepKind>> {
        self.kinds.iter().find(|k| k.name() == name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.iter().map(|k| k.name()).collect()
    }
}
