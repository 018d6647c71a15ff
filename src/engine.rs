//! The engine: walks a lab's step graph for plan / up / status / verify / down. It knows step
//! kinds only through the `StepKind` trait, the state only through the journal, and the user
//! only through the printer.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

use futures_util::future::LocalBoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::files::SpecSource;
use crate::printer::{Event, Printer};
use crate::probe;
use crate::spec::{LabSpec, Rendered, Scope};
use crate::state::{JournalEntry, Phase, StateStore, now};
use crate::step::{Action, CheckResult, Observation, Outputs, Ownership, Registry, StepCtx, StepKind};

/// Counts for the final summary.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub changed: usize,
    pub unchanged: usize,
    pub failed: usize,
    /// Steps with changes pending (plan) or drifted/missing (status).
    pub pending: usize,
    pub checks_passed: usize,
    pub checks_failed: usize,
}

/// One step's planned action.
pub struct StepPlan {
    pub step: String,
    pub desired: Rendered,
    pub observation: Observation,
}

pub struct Run<'a> {
    pub spec: &'a LabSpec,
    pub source: &'a SpecSource,
    pub registry: &'a Registry,
    pub printer: &'a Printer,
    pub ownership: Ownership,
    pub secrets_dir: std::path::PathBuf,
    pub force: bool,
}

type StepFuture<'f> = LocalBoxFuture<'f, (String, Result<Outputs>)>;

impl<'a> Run<'a> {
    fn kind(&self, step: &str) -> &'a dyn StepKind {
        let kind = &self.spec.steps[step].kind;
        // Catalog::parse checked every kind exists before a Run is made.
        self.registry.get(kind).map(|k| k.as_ref()).expect("kinds are checked when the spec is loaded")
    }

    fn ctx<'c>(&'c self, step: &'c str, activity: Option<&'c crate::printer::Activity<'c>>) -> StepCtx<'c> {
        StepCtx {
            step,
            ownership: &self.ownership,
            source: self.source,
            secrets_dir: &self.secrets_dir,
            force: self.force,
            activity,
        }
    }

    /// What the lab's templates see, with the outputs known so far.
    fn scope<'s>(&'s self, outputs: &'s HashMap<String, Outputs>) -> Scope<'s> {
        Scope {
            lab: &self.spec.name,
            owner: &self.ownership.owner,
            profile: &self.ownership.profile,
            params: &self.spec.params,
            outputs,
        }
    }

    fn render(&self, step: &str, outputs: &HashMap<String, Outputs>) -> Result<Rendered> {
        let scope = self.scope(outputs);
        scope.render(&self.spec.steps[step].config).map_err(|m| Error::backend(m).in_step(step))
    }

    /// Read-only pass over the whole graph in dependency order. A step's outputs feed the next
    /// steps if it will not change or only be updated in place; otherwise they are "known after
    /// apply".
    pub async fn observe_all(&self) -> Result<Vec<StepPlan>> {
        let mut known: HashMap<String, Outputs> = HashMap::new();
        let mut plans = Vec::new();
        for step in self.spec.topo_order() {
            let desired = self.render(&step, &known)?;
            let observation = self
                .kind(&step)
                .observe(&self.ctx(&step, None), &desired.value, desired.pending)
                .await
                .map_err(|e| e.in_step(&step))?;
            // An in-place update keeps the resource's identity (id, name): later steps can use it.
            let keeps_identity = observation.action == Action::Update && !observation.outputs.is_empty();
            if observation.action == Action::None || keeps_identity {
                known.insert(step.clone(), observation.outputs.clone());
            }
            plans.push(StepPlan { step, desired, observation });
        }
        Ok(plans)
    }

    pub async fn plan(&self) -> Result<Tally> {
        let mut tally = Tally::default();
        for p in self.observe_all().await? {
            self.printer.event(Event::Planned {
                step: p.step.clone(),
                kind: self.spec.steps[&p.step].kind.clone(),
                action: p.observation.action.as_str().into(),
                reason: p.observation.reason.clone(),
            });
            match p.observation.action {
                Action::None => tally.unchanged += 1,
                _ => tally.pending += 1,
            }
        }
        Ok(tally)
    }

    /// Walks the graph, launching each step once the steps it depends on (or, in reverse, the
    /// steps that depend on it) are done; independent steps run concurrently. Stops launching
    /// after the first failure, lets running steps finish, and returns that failure.
    async fn walk<'f>(
        &self,
        reverse: bool,
        mut launch: impl FnMut(&str, &HashMap<String, Outputs>) -> Result<StepFuture<'f>>,
    ) -> Result<HashMap<String, Outputs>> {
        let order = self.spec.topo_order();
        let blockers = |step: &str| -> Vec<String> {
            if reverse { self.spec.dependents(step) } else { self.spec.steps[step].deps.clone() }
        };
        let mut outputs: HashMap<String, Outputs> = HashMap::new();
        let mut done: HashSet<String> = HashSet::new();
        let mut started: HashSet<String> = HashSet::new();
        let mut running = FuturesUnordered::new();
        let mut first_error: Option<Error> = None;
        loop {
            if first_error.is_none() {
                for step in &order {
                    if !started.contains(step) && blockers(step).iter().all(|b| done.contains(b)) {
                        started.insert(step.clone());
                        match launch(step, &outputs) {
                            Ok(fut) => running.push(fut),
                            Err(e) => {
                                first_error = Some(e);
                                break;
                            }
                        }
                    }
                }
            }
            match running.next().await {
                None => break,
                Some((step, Ok(outs))) => {
                    outputs.insert(step.clone(), outs);
                    done.insert(step);
                }
                Some((step, Err(e))) => {
                    first_error.get_or_insert(e.in_step(&step));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(outputs),
        }
    }

    fn journal(
        &self,
        store: &Mutex<StateStore>,
        step: &str,
        action: &str,
        phase: Phase,
        outputs: Option<Outputs>,
    ) -> Result<()> {
        let entry = JournalEntry {
            ts: now(),
            run_id: self.ownership.run_id.clone(),
            step: step.to_string(),
            kind: self.spec.steps[step].kind.clone(),
            action: action.to_string(),
            phase,
            outputs,
        };
        store.lock().unwrap_or_else(|e| e.into_inner()).record(entry)
    }

    /// Converges every step, then verifies. Nothing is mutated unless every preflight passes.
    pub async fn up(&self, store: &Mutex<StateStore>, tally: &Mutex<Tally>) -> Result<()> {
        let plans = self.observe_all().await?;
        for p in &plans {
            if p.observation.action != Action::None {
                let ctx = self.ctx(&p.step, None);
                self.kind(&p.step)
                    .preflight(&ctx, &p.desired.value, &p.observation)
                    .await
                    .map_err(|e| e.in_step(&p.step))?;
            }
        }
        let mut planned: HashMap<String, StepPlan> = plans.into_iter().map(|p| (p.step.clone(), p)).collect();
        let outputs = self
            .walk(false, |step, outputs| {
                let plan = planned.remove(step).expect("each step is launched once");
                let desired = self.render(step, outputs)?;
                let step = step.to_string();
                Ok(Box::pin(async move {
                    let result = self.converge(&step, plan, desired, store, tally).await;
                    if let Err(e) = &result {
                        tally.lock().unwrap().failed += 1;
                        self.printer.event(Event::Failed { step: step.clone(), error: e.to_string() });
                    }
                    (step, result)
                }) as StepFuture)
            })
            .await?;
        self.check_all(&outputs, tally).await?;
        self.print_outputs(&outputs);
        Ok(())
    }

    async fn converge(
        &self,
        step: &str,
        plan: StepPlan,
        desired: Rendered,
        store: &Mutex<StateStore>,
        tally: &Mutex<Tally>,
    ) -> Result<Outputs> {
        let kind = self.kind(step);
        let started = Instant::now();
        // Inputs that were unknown at plan time are known now: look again.
        let observation = if plan.desired != desired {
            kind.observe(&self.ctx(step, None), &desired.value, desired.pending).await?
        } else {
            plan.observation
        };
        let activity = self.printer.activity(step, &format!("{} …", observation.reason));
        let ctx = self.ctx(step, Some(&activity));
        let outputs = if observation.action == Action::None {
            observation.outputs.clone()
        } else {
            let action = observation.action;
            self.printer.event(Event::Started {
                step: step.into(),
                kind: kind.name().into(),
                action: action.as_str().into(),
            });
            self.journal(store, step, action.as_str(), Phase::Intent, None)?;
            match kind.apply(&ctx, &desired.value, &observation).await {
                Ok(outputs) => {
                    self.journal(store, step, action.as_str(), Phase::Done, Some(outputs.clone()))?;
                    outputs
                }
                Err(e) => {
                    self.journal(store, step, action.as_str(), Phase::Failed, None)?;
                    return Err(e);
                }
            }
        };
        kind.wait(&ctx, &desired.value, &outputs).await?;
        drop(activity);
        let shown = Value::Object(outputs.clone());
        if observation.action == Action::None {
            tally.lock().unwrap().unchanged += 1;
            self.printer.event(Event::Unchanged { step: step.into(), outputs: shown });
        } else {
            tally.lock().unwrap().changed += 1;
            self.printer.event(Event::Changed {
                step: step.into(),
                action: observation.action.done().into(),
                outputs: shown,
                elapsed_ms: started.elapsed().as_millis(),
            });
        }
        Ok(outputs)
    }

    /// Live state of every step; drifted or missing steps count as pending.
    pub async fn status(&self) -> Result<Tally> {
        let mut tally = Tally::default();
        let mut outputs = HashMap::new();
        for p in self.observe_all().await? {
            let obs = &p.observation;
            let state = match obs.action {
                Action::None => "up to date".to_string(),
                Action::Create => format!("missing ({})", obs.reason),
                _ => format!("out of date ({})", obs.reason),
            };
            if obs.action != Action::None || obs.drift {
                tally.pending += 1;
            } else {
                tally.unchanged += 1;
            }
            self.printer.event(Event::Status {
                step: p.step.clone(),
                kind: self.spec.steps[&p.step].kind.clone(),
                state,
                drift: obs.drift,
                details: obs.details.clone(),
            });
            if obs.action == Action::None {
                outputs.insert(p.step.clone(), obs.outputs.clone());
            }
        }
        self.print_outputs(&outputs);
        Ok(tally)
    }

    /// Runs every check against what exists; a step that is not up is a failed check.
    pub async fn verify(&self, tally: &Mutex<Tally>) -> Result<()> {
        let mut outputs = HashMap::new();
        for p in self.observe_all().await? {
            if p.observation.action == Action::None {
                outputs.insert(p.step, p.observation.outputs);
            } else {
                self.report_check(
                    tally,
                    CheckResult {
                        name: format!("step `{}` is up", p.step),
                        ok: false,
                        detail: format!("{} (run `labctl {} up`)", p.observation.reason, self.spec.name),
                    },
                );
            }
        }
        self.check_all(&outputs, tally).await
    }

    async fn check_all(&self, outputs: &HashMap<String, Outputs>, tally: &Mutex<Tally>) -> Result<()> {
        for step in self.spec.topo_order() {
            let Some(outs) = outputs.get(&step) else {
                continue;
            };
            let desired = self.render(&step, outputs)?;
            let ctx = self.ctx(&step, None);
            for check in self.kind(&step).verify(&ctx, &desired.value, outs).await.map_err(|e| e.in_step(&step))? {
                self.report_check(tally, check);
            }
        }
        let scope = self.scope(outputs);
        let checks = self.spec.verify.iter().map(|check| async {
            match scope.render_str(&check.http.url) {
                Ok(url) if !url.pending => probe::run_check(check, url.value.as_str().unwrap_or_default()).await,
                Ok(_) => CheckResult {
                    name: check.http.url.clone(),
                    ok: false,
                    detail: "depends on a step that is not up".into(),
                },
                Err(m) => CheckResult { name: check.http.url.clone(), ok: false, detail: m },
            }
        });
        for result in futures_util::future::join_all(checks).await {
            self.report_check(tally, result);
        }
        let t = tally.lock().unwrap();
        if t.checks_failed > 0 {
            return Err(Error::VerifyFailed { failed: t.checks_failed, total: t.checks_failed + t.checks_passed });
        }
        Ok(())
    }

    fn report_check(&self, tally: &Mutex<Tally>, check: CheckResult) {
        let mut t = tally.lock().unwrap();
        if check.ok {
            t.checks_passed += 1
        } else {
            t.checks_failed += 1
        }
        self.printer.event(Event::Check { name: check.name, ok: check.ok, detail: check.detail });
    }

    fn print_outputs(&self, outputs: &HashMap<String, Outputs>) {
        let scope = self.scope(outputs);
        let mut shown = Map::new();
        for (name, template) in &self.spec.outputs {
            if let Some(r) = scope.render_str(template).ok().filter(|r| !r.pending) {
                shown.insert(name.clone(), r.value);
            }
        }
        if !shown.is_empty() {
            self.printer.event(Event::Outputs { outputs: Value::Object(shown) });
        }
    }

    /// Removes every step's resources in reverse dependency order (found by ownership labels,
    /// not by the state file). `sweep` also removes this owner's leftovers of the lab that no
    /// current step claims (a renamed step, a killed run of an older spec).
    pub async fn down(&self, store: &Mutex<StateStore>, tally: &Mutex<Tally>, sweep: bool) -> Result<()> {
        self.walk(true, |step, _| {
            let step = step.to_string();
            Ok(Box::pin(async move {
                let result = self.destroy(&step, Some(&step), store, tally).await;
                if let Err(e) = &result {
                    tally.lock().unwrap().failed += 1;
                    self.printer.event(Event::Failed { step: step.clone(), error: e.to_string() });
                }
                (step, result.map(|_| Outputs::new()))
            }) as StepFuture)
        })
        .await?;
        if sweep {
            let mut seen = HashSet::new();
            for step in self.spec.topo_order().into_iter().rev() {
                let kind = self.kind(&step);
                if seen.insert(kind.name()) {
                    let label = format!("sweep:{}", kind.name());
                    self.destroy(&step, None, store, tally).await.map_err(|e| e.in_step(&label))?;
                }
            }
        }
        Ok(())
    }

    async fn destroy(
        &self,
        step: &str,
        only: Option<&str>,
        store: &Mutex<StateStore>,
        tally: &Mutex<Tally>,
    ) -> Result<()> {
        let kind = self.kind(step);
        let started = Instant::now();
        let label = if only.is_some() { step.to_string() } else { format!("sweep:{}", kind.name()) };
        let activity = self.printer.activity(&label, "deleting …");
        let ctx = self.ctx(step, Some(&activity));
        if only.is_some() {
            self.journal(store, step, "delete", Phase::Intent, None)?;
        }
        let removed = kind.destroy(&ctx, only).await?;
        if only.is_some() {
            self.journal(store, step, "delete", Phase::Done, None)?;
        }
        drop(activity);
        if removed.is_empty() {
            tally.lock().unwrap().unchanged += 1;
            self.printer.event(Event::Unchanged {
                step: label,
                outputs: Value::Object(Map::from_iter([("removed".to_string(), Value::from("nothing"))])),
            });
        } else {
            tally.lock().unwrap().changed += 1;
            let outputs = Value::Object(Map::from_iter([("removed".to_string(), Value::from(removed.join(", ")))]));
            self.printer.event(Event::Changed {
                step: label,
                action: "deleted".into(),
                outputs,
                elapsed_ms: started.elapsed().as_millis(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The engine against an in-memory step kind: graph order, concurrency, outputs wiring,
    //! idempotence, failure and journal — no backend involved.
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::printer::Verbosity;
    use crate::step::Diagnosis;

    #[derive(Default)]
    struct Fake {
        /// step → the config it was last applied with (the "backend").
        made: Mutex<HashMap<String, Value>>,
        calls: Mutex<Vec<String>>,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
    }

    #[async_trait]
    impl StepKind for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn validate(&self, _: &Value) -> std::result::Result<(), String> {
            Ok(())
        }
        async fn observe(&self, ctx: &StepCtx<'_>, desired: &Value, pending: bool) -> Result<Observation> {
            let made = self.made.lock().unwrap().get(ctx.step).cloned();
            Ok(match made {
                None => Observation::absent("make it"),
                Some(v) if pending || &v != desired => Observation {
                    action: Action::Replace,
                    reason: "changed".into(),
                    outputs: Outputs::new(),
                    details: vec![],
                    drift: false,
                },
                Some(_) => Observation {
                    action: Action::None,
                    reason: "same".into(),
                    outputs: Outputs::from_iter([("id".into(), Value::from(format!("{}-id", ctx.step)))]),
                    details: vec![],
                    drift: false,
                },
            })
        }
        async fn apply(&self, ctx: &StepCtx<'_>, desired: &Value, _: &Observation) -> Result<Outputs> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.calls.lock().unwrap().push(format!("apply {}", ctx.step));
            if desired.get("fail").is_some() {
                return Err(Error::backend("boom"));
            }
            self.made.lock().unwrap().insert(ctx.step.to_string(), desired.clone());
            Ok(Outputs::from_iter([("id".into(), Value::from(format!("{}-id", ctx.step)))]))
        }
        async fn destroy(&self, ctx: &StepCtx<'_>, step: Option<&str>) -> Result<Vec<String>> {
            self.calls.lock().unwrap().push(format!("destroy {}", ctx.step));
            let gone = self.made.lock().unwrap().remove(step.unwrap_or(ctx.step));
            Ok(gone.into_iter().map(|_| ctx.step.to_string()).collect())
        }
        async fn diagnose(&self) -> Vec<Diagnosis> {
            vec![]
        }
    }

    const SPEC: &str = r#"
lab: demo
title: demo
params: { n: 1 }
steps:
  base: { kind: fake }
  left: { kind: fake, from: "{{ steps.base.id }}" }
  right: { kind: fake, from: "{{ steps.base.id }}", n: "{{ params.n }}" }
  top: { kind: fake, after: [left, right] }
"#;

    struct Harness {
        fake: Arc<Fake>,
        registry: Registry,
        printer: Printer,
        source: SpecSource,
        dir: tempfile::TempDir,
    }

    impl Harness {
        fn new() -> Self {
            let fake = Arc::new(Fake::default());
            Harness {
                registry: Registry::default().with(fake.clone()),
                fake,
                printer: Printer::new(false, Verbosity::Quiet),
                source: SpecSource::Builtin { file: "demo.yaml".into() },
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn run<'a>(&'a self, spec: &'a LabSpec) -> Run<'a> {
            let ownership =
                Ownership { lab: "demo".into(), owner: "o".into(), profile: "p".into(), run_id: "r".into() };
            Run {
                spec,
                source: &self.source,
                registry: &self.registry,
                printer: &self.printer,
                ownership,
                secrets_dir: self.dir.path().to_path_buf(),
                force: false,
            }
        }

        fn store(&self) -> Mutex<StateStore> {
            Mutex::new(StateStore::open(self.dir.path(), "test", Duration::ZERO, |_| {}).unwrap())
        }

        fn calls(&self) -> Vec<String> {
            std::mem::take(&mut *self.fake.calls.lock().unwrap())
        }
    }

    #[tokio::test]
    async fn up_follows_the_graph_runs_independent_steps_together_and_is_idempotent() {
        let h = Harness::new();
        let spec = LabSpec::parse("demo.yaml", SPEC).unwrap();
        let plan = h.run(&spec).plan().await.unwrap();
        assert_eq!(plan.pending, 4);

        let tally = Mutex::new(Tally::default());
        h.run(&spec).up(&h.store(), &tally).await.unwrap();
        let calls = h.calls();
        assert_eq!(calls.first().map(String::as_str), Some("apply base"));
        assert_eq!(calls.last().map(String::as_str), Some("apply top"));
        assert_eq!(h.fake.max_in_flight.load(Ordering::SeqCst), 2, "left and right ran concurrently");
        assert_eq!(h.fake.made.lock().unwrap()["left"]["from"], "base-id", "outputs feed later steps");
        assert_eq!(tally.lock().unwrap().changed, 4);

        let tally = Mutex::new(Tally::default());
        h.run(&spec).up(&h.store(), &tally).await.unwrap();
        assert!(h.calls().is_empty(), "a second up applies nothing");
        assert_eq!(tally.lock().unwrap().unchanged, 4);
        assert_eq!(h.run(&spec).plan().await.unwrap().pending, 0);
    }

    #[tokio::test]
    async fn a_changed_param_replaces_only_what_depends_on_it() {
        let h = Harness::new();
        let mut spec = LabSpec::parse("demo.yaml", SPEC).unwrap();
        h.run(&spec).up(&h.store(), &Mutex::new(Tally::default())).await.unwrap();
        h.calls();
        spec.set_params(&indexmap::IndexMap::from([("n".to_string(), "2".to_string())]), "test").unwrap();
        let tally = Mutex::new(Tally::default());
        h.run(&spec).up(&h.store(), &tally).await.unwrap();
        assert_eq!(h.calls(), ["apply right"]);
        let t = tally.into_inner().unwrap();
        assert_eq!((t.changed, t.unchanged), (1, 3));
    }

    #[tokio::test]
    async fn down_walks_the_graph_in_reverse_and_twice_is_a_no_op() {
        let h = Harness::new();
        let spec = LabSpec::parse("demo.yaml", SPEC).unwrap();
        h.run(&spec).up(&h.store(), &Mutex::new(Tally::default())).await.unwrap();
        h.calls();
        h.run(&spec).down(&h.store(), &Mutex::new(Tally::default()), false).await.unwrap();
        let calls = h.calls();
        let pos = |s: &str| calls.iter().position(|c| c == s).unwrap();
        assert_eq!(pos("destroy top"), 0);
        assert!(pos("destroy left") < pos("destroy base") && pos("destroy right") < pos("destroy base"));
        let tally = Mutex::new(Tally::default());
        h.run(&spec).down(&h.store(), &tally, false).await.unwrap();
        let t = tally.into_inner().unwrap();
        assert_eq!((t.changed, t.unchanged), (0, 4));
    }

    #[tokio::test]
    async fn a_failing_step_stops_its_dependents_and_is_journaled() {
        let h = Harness::new();
        let spec = LabSpec::parse("demo.yaml", &SPEC.replace("left: { kind: fake,", "left: { kind: fake, fail: yes,"))
            .unwrap();
        let store = h.store();
        let err = h.run(&spec).up(&store, &Mutex::new(Tally::default())).await.unwrap_err();
        assert!(err.to_string().starts_with("step `left` failed: boom"), "{err}");
        assert!(!h.calls().contains(&"apply top".to_string()), "top depends on left: never started");
        let store = store.into_inner().unwrap();
        assert!(store.state.steps.contains_key("base") && !store.state.steps.contains_key("left"));
        drop(store);
        // Reopening: the failure was recorded as a result, so nothing is reported interrupted
        // beyond the uncommitted run itself.
        let reopened = h.store().into_inner().unwrap();
        assert!(reopened.interrupted.iter().all(|i| i.step.is_empty()));
    }
}
