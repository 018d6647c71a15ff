//! `k8s-apply`: server-side apply (field manager `labctl`) of every manifest in a folder, in a
//! namespace per owner; prune of this step's objects that left the manifests; a strict rollout
//! wait with the reason when it fails; verification through the cluster (a port-forward to a
//! ready pod behind each Service); delete that waits until everything is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Service};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::kube::{KubeBackend, api_error};
use crate::catalog::typed_config;
use crate::error::{Error, Result};
use crate::probe;
use crate::step::{
    Action, CheckResult, Diagnosis, LABEL_INPUT, LABEL_RUN, Observation, Outputs, Ownership, StepCtx, StepKind,
};

pub struct K8sApply {
    pub kube: Arc<KubeBackend>,
    /// Where the images are built: loaded from there into kind nodes when the profile says so.
    pub docker: Arc<super::docker::DockerBackend>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Folder of manifests (`*.yaml`, multi-document), relative to the spec.
    manifests: String,
    namespace: String,
    /// Values for `{{ name }}` placeholders in the manifests.
    #[serde(default)]
    vars: BTreeMap<String, Value>,
    /// Seconds the rollout may take.
    #[serde(default = "default_timeout", skip_serializing)]
    timeout: u64,
    /// `verify` fetches this path through each Service and expects this text.
    #[serde(default, skip_serializing)]
    check: Option<HttpCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpCheck {
    #[serde(default = "root")]
    path: String,
    body_contains: String,
}

fn default_timeout() -> u64 {
    180
}

fn root() -> String {
    "/".into()
}

/// Annotation on a namespace labctl made (only those are deleted by `down`).
const CREATED_NS: &str = "labctl.io/created-namespace";
/// Hash of the manifest labctl last applied: a live object that differs while this matches was
/// changed by someone else (drift); a different hash means the lab itself changed.
const APPLIED: &str = "labctl.io/applied-hash";

/// Kinds looked at for pruning and deletion, besides those in the manifests.
const KNOWN_KINDS: [(&str, &str); 8] = [
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "DaemonSet"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "PersistentVolumeClaim"),
    ("batch/v1", "Job"),
];

/// One manifest document, ready to apply.
struct Object {
    kind: String,
    name: String,
    resource: ApiResource,
    namespaced: bool,
    body: Value,
}

impl Object {
    fn id(&self) -> String {
        format!("{}/{}", self.kind.to_lowercase(), self.name)
    }
}

/// What `observe` found for one object.
struct Seen {
    details: Vec<(String, String)>,
    verdict: Verdict,
}

enum Verdict {
    Same,
    /// What `up` will do to it: create, update.
    Change(&'static str),
    /// Why it differs from what labctl applied.
    Drift(String),
}

/// The labels every object and the namespace get: ownership, without the run id and input
/// hash (they change from run to run and would make every apply a change).
fn stable_labels(o: &Ownership, step: &str) -> BTreeMap<String, String> {
    let mut labels = o.labels(step, "");
    labels.remove(LABEL_RUN);
    labels.remove(LABEL_INPUT);
    labels
}

fn selector(o: &Ownership, step: Option<&str>) -> String {
    o.selector(step).join(",")
}

impl K8sApply {
    fn api(&self, client: &kube::Client, resource: &ApiResource, namespaced: bool, ns: &str) -> Api<DynamicObject> {
        if namespaced {
            Api::namespaced_with(client.clone(), ns, resource)
        } else {
            Api::all_with(client.clone(), resource)
        }
    }

    /// Reads, fills in and parses the manifests; resolves each kind through discovery.
    async fn objects(&self, ctx: &StepCtx<'_>, config: &Config) -> Result<Vec<Object>> {
        let tree = ctx.source.resolve_dir(&config.manifests)?;
        let mut out = Vec::new();
        for file in tree.files()?.into_iter().filter(|f| f.path.ends_with(".yaml") || f.path.ends_with(".yml")) {
            let text =
                String::from_utf8(file.contents).map_err(|_| Error::backend(format!("{} is not UTF-8", file.path)))?;
            let text = crate::spec::fill_placeholders(&text, &config.vars, &file.path)?;
            for (i, doc) in split_documents(&text).into_iter().enumerate() {
                let at = |message: &str| format!("{} document {}: {message}", file.path, i + 1);
                let body: Value = serde_saphyr::from_str(&doc)
                    .map_err(|e| Error::backend(at(e.to_string().lines().next().unwrap_or_default())))?;
                if body.is_null() {
                    continue;
                }
                let field = |f: &str| body.pointer(f).and_then(Value::as_str).map(String::from);
                let (Some(api_version), Some(kind), Some(name)) =
                    (field("/apiVersion"), field("/kind"), field("/metadata/name"))
                else {
                    return Err(Error::backend(at("apiVersion, kind and metadata.name are required")));
                };
                let (resource, namespaced) = self.kube.resolve(&api_version, &kind).await.map_err(|e| match e {
                    Error::Backend { message, detail, hint } => Error::Backend { message: at(&message), detail, hint },
                    other => other,
                })?;
                let mut body = body;
                let meta = body["metadata"].as_object_mut().expect("metadata is an object: it has a name");
                if namespaced {
                    meta.insert("namespace".into(), Value::from(config.namespace.clone()));
                }
                let labels = meta.entry("labels").or_insert_with(|| json!({}));
                for (k, v) in stable_labels(ctx.ownership, ctx.step) {
                    labels[k] = Value::from(v);
                }
                let hash = super::input_hash(&[serde_json::to_string(&body).expect("json").as_bytes()]);
                let annotations =
                    body["metadata"].as_object_mut().expect("object").entry("annotations").or_insert_with(|| json!({}));
                annotations[APPLIED] = Value::from(hash);
                out.push(Object { kind, name, resource, namespaced, body });
            }
        }
        if out.is_empty() {
            return Err(Error::backend(format!("no manifest in {}", tree.describe())));
        }
        Ok(out)
    }

    async fn namespace(&self, ns: &str) -> Result<Option<Namespace>> {
        let (client, _) = self.kube.client().await?;
        Api::<Namespace>::all(client.clone()).get_opt(ns).await.map_err(|e| api_error("reading the namespace", e))
    }

    /// This owner's objects of the step (or lab) in any namespace, for the known kinds and `extra`.
    async fn owned(
        &self,
        ctx: &StepCtx<'_>,
        step: Option<&str>,
        extra: &[(String, String)],
    ) -> Result<Vec<(ApiResource, DynamicObject)>> {
        let (client, _) = self.kube.client().await?;
        let mut kinds: BTreeSet<(String, String)> =
            KNOWN_KINDS.iter().map(|(a, k)| (a.to_string(), k.to_string())).collect();
        kinds.extend(extra.iter().cloned());
        let params = ListParams::default().labels(&selector(ctx.ownership, step));
        // One list per kind, all at once: with the discovery this is the bulk of a no-op `up`.
        let params = &params;
        let lists = kinds.into_iter().map(|(api_version, kind)| async move {
            let Ok((resource, _)) = self.kube.resolve(&api_version, &kind).await else { return Ok(Vec::new()) };
            let list = Api::<DynamicObject>::all_with(client.clone(), &resource)
                .list(params)
                .await
                .map_err(|e| api_error(&format!("listing {kind}s"), e))?;
            Ok::<_, Error>(list.items.into_iter().map(|o| (resource.clone(), o)).collect())
        });
        Ok(futures_util::future::try_join_all(lists).await?.into_iter().flatten().collect())
    }

    /// This step's objects in the cluster that its manifests no longer name: to prune.
    async fn strays(&self, ctx: &StepCtx<'_>, objects: &[Object]) -> Result<Vec<(ApiResource, DynamicObject)>> {
        let named: BTreeSet<(String, String)> = objects.iter().map(|o| (o.kind.clone(), o.name.clone())).collect();
        let kinds: Vec<(String, String)> =
            objects.iter().map(|o| (o.resource.api_version.clone(), o.kind.clone())).collect();
        let owned = self.owned(ctx, Some(ctx.step), &kinds).await?;
        Ok(owned
            .into_iter()
            .filter(|(r, live)| !named.contains(&(r.kind.clone(), live.metadata.name.clone().unwrap_or_default())))
            .collect())
    }

    async fn apply_one(&self, ctx: &StepCtx<'_>, ns: &str, obj: &Object, dry_run: bool) -> Result<DynamicObject> {
        let (client, _) = self.kube.client().await?;
        let mut params = PatchParams::apply("labctl");
        if ctx.force {
            params = params.force();
        }
        params.dry_run = dry_run;
        self.api(client, &obj.resource, obj.namespaced, ns)
            .patch(&obj.name, &params, &Patch::Apply(&obj.body))
            .await
            .map_err(|e| api_error(&format!("applying {}", obj.id()), e))
    }

    /// One object against the cluster: missing, as applied, changed by the lab, or drifted;
    /// for a Deployment or StatefulSet also its rollout, revision and restarts.
    async fn observe_object(&self, ctx: &StepCtx<'_>, ns: &str, obj: &Object, ns_exists: bool) -> Result<Seen> {
        let (client, _) = self.kube.client().await?;
        let api = self.api(client, &obj.resource, obj.namespaced, ns);
        let live = if ns_exists { api.get_opt(&obj.name).await.map_err(|e| api_error("reading", e))? } else { None };
        let Some(live) = live else {
            return Ok(Seen { details: Vec::new(), verdict: Verdict::Change("create") });
        };
        if !ctx.ownership.owns(&live.metadata.labels.clone().unwrap_or_default().into_iter().collect()) {
            return Err(Error::not_ours(
                &format!("{} in namespace {ns}", obj.id()),
                &ctx.ownership.owner,
                "delete it, or pick another namespace",
            ));
        }
        let mut details = Vec::new();
        if let Some(rollout) = Rollout::of(&obj.kind, &live)? {
            details.push((obj.id(), format!("{}, revision {}", rollout.progress, rollout.revision)));
            let pods = Api::<Pod>::namespaced(client.clone(), ns)
                .list(&ListParams::default().labels(&rollout.selector))
                .await
                .map_err(|e| api_error("listing pods", e))?;
            let restarts: i32 = pods
                .items
                .iter()
                .flat_map(|p| p.status.clone().unwrap_or_default().container_statuses.unwrap_or_default())
                .map(|c| c.restart_count)
                .sum();
            details.push(("restarts".into(), restarts.to_string()));
        }
        let applied_same = live.metadata.annotations.as_ref().and_then(|a| a.get(APPLIED))
            == obj
                .body
                .pointer(&format!("/metadata/annotations/{}", APPLIED.replace('/', "~1")))
                .and_then(Value::as_str)
                .map(String::from)
                .as_ref();
        let verdict = match self.apply_one(ctx, ns, obj, true).await {
            Ok(dry) if comparable(&dry) == comparable(&live) => Verdict::Same,
            Ok(_) if applied_same => Verdict::Drift("changed behind labctl's back".into()),
            Ok(_) => Verdict::Change("update"),
            Err(e) if matches!(e.root(), Error::Backend { hint: Some(h), .. } if h.contains("force-conflicts")) => {
                Verdict::Drift("fields taken by another manager: `up --force-conflicts` takes them back".into())
            }
            Err(e) => return Err(e),
        };
        Ok(Seen { details, verdict })
    }

    /// Pods behind a label selector, with a one-line account of why each is not ready.
    async fn pod_problems(&self, ns: &str, selector: &str) -> Result<(Vec<String>, bool)> {
        let (client, _) = self.kube.client().await?;
        let pods = Api::<Pod>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|e| api_error("listing pods", e))?;
        let mut problems = Vec::new();
        let mut fatal = false;
        for pod in &pods.items {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let status = pod.status.clone().unwrap_or_default();
            for c in status.container_statuses.unwrap_or_default() {
                if let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
                    let reason = waiting.reason.clone().unwrap_or_default();
                    fatal |= matches!(
                        reason.as_str(),
                        "ErrImageNeverPull" | "InvalidImageName" | "CreateContainerConfigError"
                    );
                    problems.push(format!("pod {name}: {reason}: {}", waiting.message.clone().unwrap_or_default()));
                } else if !c.ready {
                    let event = self.last_event(ns, &name).await.unwrap_or_default();
                    problems.push(format!(
                        "pod {name}: container {} not ready (restarts {}) {event}",
                        c.name, c.restart_count
                    ));
                }
            }
            for cond in status.conditions.unwrap_or_default() {
                if cond.type_ == "PodScheduled" && cond.status == "False" {
                    problems.push(format!("pod {name}: unschedulable: {}", cond.message.unwrap_or_default()));
                }
            }
        }
        Ok((problems, fatal))
    }

    async fn last_event(&self, ns: &str, pod: &str) -> Option<String> {
        let (client, _) = self.kube.client().await.ok()?;
        let events = Api::<Event>::namespaced(client.clone(), ns)
            .list(&ListParams::default().fields(&format!("involvedObject.name={pod}")))
            .await
            .ok()?;
        events
            .items
            .into_iter()
            .rfind(|e| e.type_.as_deref() == Some("Warning"))
            .map(|e| format!("— {}: {}", e.reason.unwrap_or_default(), e.message.unwrap_or_default().trim()))
    }
}

/// `k=v,k2=v2`, as list calls take it.
fn label_selector(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Where a workload's rollout stands, read like `kubectl rollout status` but strictly: the
/// stock checks return at once after a re-apply, before the controller has seen it.
#[derive(Debug)]
struct Rollout {
    done: bool,
    progress: String,
    revision: String,
    /// The label selector of its pods.
    selector: String,
}

impl Rollout {
    const KINDS: [&str; 2] = ["Deployment", "StatefulSet"];

    /// `None` for kinds that do not roll out.
    fn of(kind: &str, live: &DynamicObject) -> Result<Option<Rollout>> {
        fn typed<T: serde::de::DeserializeOwned>(live: &DynamicObject) -> Result<T> {
            serde_json::from_value(serde_json::to_value(live).expect("json")).map_err(|e| Error::backend(e.to_string()))
        }
        Ok(match kind {
            "Deployment" => Some(Self::deployment(&typed(live)?)),
            "StatefulSet" => Some(Self::stateful_set(&typed(live)?)),
            _ => None,
        })
    }

    /// observedGeneration ≥ generation and updated = ready = available = total = desired.
    fn deployment(d: &Deployment) -> Rollout {
        let generation = d.metadata.generation.unwrap_or(0);
        let spec = d.spec.clone().unwrap_or_default();
        let desired = spec.replicas.unwrap_or(1);
        let s = d.status.clone().unwrap_or_default();
        let (updated, ready, available) =
            (s.updated_replicas.unwrap_or(0), s.ready_replicas.unwrap_or(0), s.available_replicas.unwrap_or(0));
        let total = s.replicas.unwrap_or(0);
        let done = s.observed_generation.unwrap_or(0) >= generation
            && updated == desired
            && ready == desired
            && available == desired
            && total == desired;
        let revision = d.metadata.annotations.as_ref().and_then(|a| a.get("deployment.kubernetes.io/revision"));
        Rollout {
            done,
            progress: format!("{ready}/{desired} ready, {updated} updated, {available} available, {total} total"),
            revision: revision.cloned().unwrap_or_default(),
            selector: label_selector(&spec.selector.match_labels.unwrap_or_default()),
        }
    }

    /// observedGeneration ≥ generation, ready = total = desired, and with a rolling update the
    /// pods above the partition updated (and, without a partition, the update revision current).
    /// With `OnDelete` there is no rollout to wait for: ready pods are all there is.
    fn stateful_set(set: &StatefulSet) -> Rollout {
        let generation = set.metadata.generation.unwrap_or(0);
        let spec = set.spec.clone().unwrap_or_default();
        let desired = spec.replicas.unwrap_or(1);
        let strategy = spec.update_strategy.unwrap_or_default();
        let rolling = strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate";
        let partition = strategy.rolling_update.and_then(|r| r.partition).unwrap_or(0);
        let s = set.status.clone().unwrap_or_default();
        let (ready, updated, total) = (s.ready_replicas.unwrap_or(0), s.updated_replicas.unwrap_or(0), s.replicas);
        let revision = s.update_revision.clone().unwrap_or_default();
        let done = s.observed_generation.unwrap_or(0) >= generation
            && ready == desired
            && total == desired
            && (!rolling
                || (updated >= desired - partition && (partition > 0 || s.current_revision == s.update_revision)));
        Rollout {
            done,
            progress: format!("{ready}/{desired} ready, {updated} updated, {total} total"),
            revision,
            selector: label_selector(&spec.selector.match_labels.unwrap_or_default()),
        }
    }
}

/// What the step reports: its namespace and the objects it applied.
fn outputs(ns: &str, objects: &[Object]) -> Outputs {
    Outputs::from_iter([
        ("namespace".to_string(), Value::from(ns)),
        ("objects".to_string(), Value::from(objects.iter().map(Object::id).collect::<Vec<_>>().join(", "))),
    ])
}

/// Splits a multi-document YAML stream on `---` lines.
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else {
            let doc = docs.last_mut().expect("never empty");
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.into_iter().filter(|d| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))).collect()
}

/// What an apply leaves for the server to decide: dropped before comparing live and desired.
fn comparable(o: &DynamicObject) -> Value {
    let mut v = serde_json::to_value(o).expect("objects serialize");
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in ["resourceVersion", "generation", "managedFields", "creationTimestamp", "uid", "selfLink"] {
            meta.remove(k);
        }
        if let Some(ann) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            ann.remove("deployment.kubernetes.io/revision");
        }
    }
    if let Some(obj) = v.as_object_mut() {
        obj.remove("status");
    }
    v
}

#[async_trait]
impl StepKind for K8sApply {
    fn name(&self) -> &'static str {
        "k8s-apply"
    }

    fn validate(&self, config: &Value) -> std::result::Result<(), String> {
        let c: Config = typed_config(config)?;
        if !crate::spec::is_name(&c.namespace) && !c.namespace.contains(crate::spec::PENDING) {
            return Err(format!("field `namespace`: `{}` is not a valid namespace name", c.namespace));
        }
        Ok(())
    }

    async fn observe(&self, ctx: &StepCtx<'_>, desired: &Value, pending: bool) -> Result<Observation> {
        let config: Config = typed_config(desired).map_err(Error::backend)?;
        let ns = &config.namespace;
        let namespace = self.namespace(ns).await?;
        if let Some(n) = &namespace {
            let labels = n.metadata.labels.clone().unwrap_or_default();
            let ours = ctx.ownership.owns(&labels.into_iter().collect());
            if !ours && n.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(CREATED_NS)) {
                return Err(Error::backend(format!(
                    "namespace {ns} was made by labctl for another owner: labctl will not touch it"
                )));
            }
        }
        // Parsed and resolved even when nothing exists yet: a bad manifest fails `plan`, and
        // `up` before it builds or makes anything.
        let objects = self.objects(ctx, &config).await?;
        if pending && namespace.is_none() {
            return Ok(Observation::absent(format!("create namespace {ns} and apply {}", config.manifests)));
        }
        let mut changes = Vec::new();
        let mut drifted = Vec::new();
        let mut details = vec![("namespace".to_string(), ns.clone())];
        // Every object and the prune listing at once: each is a few independent reads.
        let each = objects.iter().map(|obj| self.observe_object(ctx, ns, obj, namespace.is_some()));
        let (seen, strays) = tokio::try_join!(futures_util::future::try_join_all(each), self.strays(ctx, &objects))?;
        for (obj, seen) in objects.iter().zip(seen) {
            details.extend(seen.details);
            match seen.verdict {
                Verdict::Same => {}
                Verdict::Change(what) => changes.push(format!("{what} {}", obj.id())),
                Verdict::Drift(why) => drifted.push(format!("{} ({why})", obj.id())),
            }
        }
        for (resource, live) in strays {
            changes.push(format!("prune {}/{}", resource.kind.to_lowercase(), live.metadata.name.unwrap_or_default()));
        }
        if !drifted.is_empty() {
            details.push(("drift".into(), drifted.join("; ")));
        }
        let (action, reason) = if namespace.is_none() {
            (Action::Create, format!("create namespace {ns}; {}", changes.join(", ")))
        } else if changes.is_empty() && drifted.is_empty() {
            (Action::None, format!("{} objects in {ns} are as applied", objects.len()))
        } else {
            (Action::Update, changes.iter().chain(&drifted).cloned().collect::<Vec<_>>().join(", "))
        };
        let outputs = if namespace.is_some() { outputs(ns, &objects) } else { Outputs::new() };
        Ok(Observation { action, reason, outputs, details, drift: !drifted.is_empty() })
    }

    async fn apply(&self, ctx: &StepCtx<'_>, desired: &Value, _observed: &Observation) -> Result<Outputs> {
        let config: Config = typed_config(desired).map_err(Error::backend)?;
        let ns = &config.namespace;
        let (client, _) = self.kube.client().await?;
        // Images first: a cluster that cannot get them should not be left with a new namespace.
        let objects = self.objects(ctx, &config).await?;
        if let Some(cluster) = self.kube.kind_cluster() {
            let images: Vec<String> = objects.iter().flat_map(|o| super::kind_load::images_in(&o.body)).collect();
            super::kind_load::load(&self.docker, ctx, cluster, &images).await?;
        }
        if self.namespace(ns).await?.is_none() {
            ctx.log(&format!("creating namespace {ns}"));
            let mut n = Namespace::default();
            n.metadata.name = Some(ns.clone());
            n.metadata.labels = Some(stable_labels(ctx.ownership, ctx.step).into_iter().collect());
            n.metadata.annotations = Some([(CREATED_NS.to_string(), "true".to_string())].into_iter().collect());
            Api::<Namespace>::all(client.clone())
                .create(&PostParams::default(), &n)
                .await
                .map_err(|e| api_error("creating the namespace", e))?;
        }
        for obj in &objects {
            ctx.log(&format!("applying {}", obj.id()));
            self.apply_one(ctx, ns, obj, false).await?;
        }
        for (resource, live) in self.strays(ctx, &objects).await? {
            let name = live.metadata.name.clone().unwrap_or_default();
            ctx.log(&format!("pruning {}/{name}", resource.kind.to_lowercase()));
            let live_ns = live.metadata.namespace.clone().unwrap_or_default();
            let api = self.api(client, &resource, live.metadata.namespace.is_some(), &live_ns);
            api.delete(&name, &DeleteParams::default()).await.map_err(|e| api_error("pruning", e))?;
        }
        Ok(outputs(ns, &objects))
    }

    async fn wait(&self, ctx: &StepCtx<'_>, desired: &Value, _outputs: &Outputs) -> Result<()> {
        let config: Config = typed_config(desired).map_err(Error::backend)?;
        let (client, _) = self.kube.client().await?;
        let deadline = Instant::now() + Duration::from_secs(config.timeout);
        for obj in self.objects(ctx, &config).await?.iter().filter(|o| Rollout::KINDS.contains(&o.kind.as_str())) {
            let api = self.api(client, &obj.resource, obj.namespaced, &config.namespace);
            let mut last_progress: Option<String> = None;
            loop {
                let live = api.get(&obj.name).await.map_err(|e| api_error(&format!("reading {}", obj.id()), e))?;
                let Some(Rollout { done, progress, selector, .. }) = Rollout::of(&obj.kind, &live)? else { break };
                if done {
                    break;
                }
                let (problems, fatal) = self.pod_problems(&config.namespace, &selector).await?;
                if fatal || Instant::now() >= deadline {
                    let why = if fatal {
                        "cannot start: its pods fail in a way waiting will not fix".to_string()
                    } else {
                        format!("did not roll out within {}s", config.timeout)
                    };
                    return Err(Error::Backend {
                        message: format!("{} {why} ({progress})", obj.id()),
                        detail: Some(problems.join("\n")),
                        hint: Some(
                            "the lines above say why each pod is not ready (`labctl <lab> status` shows more)".into(),
                        ),
                    });
                }
                if last_progress.as_deref() != Some(progress.as_str()) {
                    ctx.log(&format!("{}: {progress}", obj.id()));
                    last_progress = Some(progress);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        Ok(())
    }

    async fn verify(&self, ctx: &StepCtx<'_>, desired: &Value, _outputs: &Outputs) -> Result<Vec<CheckResult>> {
        let config: Config = typed_config(desired).map_err(Error::backend)?;
        let (client, _) = self.kube.client().await?;
        let ns = &config.namespace;
        let mut checks = Vec::new();
        let objects = self.objects(ctx, &config).await?;
        for obj in objects.iter().filter(|o| Rollout::KINDS.contains(&o.kind.as_str())) {
            let live = self
                .api(client, &obj.resource, obj.namespaced, ns)
                .get_opt(&obj.name)
                .await
                .map_err(|e| api_error("reading", e))?;
            let rollout = live.map(|l| Rollout::of(&obj.kind, &l)).transpose()?.flatten();
            let (ok, detail) = rollout.map(|r| (r.done, r.progress)).unwrap_or((false, "missing".into()));
            checks.push(CheckResult { name: format!("{} is rolled out", obj.id()), ok, detail });
        }
        let Some(check) = &config.check else { return Ok(checks) };
        for obj in objects.iter().filter(|o| o.kind == "Service") {
            let name = format!("GET {} through {} answers {:?}", check.path, obj.id(), check.body_contains);
            let result = self.through_service(ns, &obj.name, &check.path).await;
            let (ok, detail) = match result {
                Ok(r) if r.status == 200 && r.body.contains(&check.body_contains) => {
                    (true, format!("HTTP {} {}", r.status, r.body.trim()))
                }
                Ok(r) => (false, format!("HTTP {} {}", r.status, r.body.trim())),
                Err(e) => (false, e),
            };
            checks.push(CheckResult { name, ok, detail });
        }
        Ok(checks)
    }

    async fn destroy(&self, ctx: &StepCtx<'_>, step: Option<&str>) -> Result<Vec<String>> {
        let (client, _) = self.kube.client().await?;
        let mut removed = Vec::new();
        let owned = self.owned(ctx, step, &[]).await?;
        for (resource, live) in &owned {
            let name = live.metadata.name.clone().unwrap_or_default();
            let ns = live.metadata.namespace.clone().unwrap_or_default();
            let api = self.api(client, resource, live.metadata.namespace.is_some(), &ns);
            ctx.log(&format!("deleting {}/{name} in {ns}", resource.kind.to_lowercase()));
            // Background propagation (as kubectl): the garbage collector removes the pods; the
            // wait below covers the objects and the namespace.
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => removed.push(format!("{}/{name}", resource.kind.to_lowercase())),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(api_error("deleting", e)),
            }
        }
        // Namespaces labctl made for this owner (never one it found).
        let namespaces = Api::<Namespace>::all(client.clone())
            .list(&ListParams::default().labels(&selector(ctx.ownership, step)))
            .await
            .map_err(|e| api_error("listing namespaces", e))?;
        for n in namespaces
            .items
            .iter()
            .filter(|n| n.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(CREATED_NS)))
        {
            let name = n.metadata.name.clone().unwrap_or_default();
            ctx.log(&format!("deleting namespace {name}"));
            match Api::<Namespace>::all(client.clone()).delete(&name, &DeleteParams::default()).await {
                Ok(_) => removed.push(format!("namespace/{name}")),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(api_error("deleting the namespace", e)),
            }
        }
        // Wait until everything is really gone; on timeout say what holds it.
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let mut left = Vec::new();
            for (resource, live) in &owned {
                let name = live.metadata.name.clone().unwrap_or_default();
                let ns = live.metadata.namespace.clone().unwrap_or_default();
                let api = self.api(client, resource, live.metadata.namespace.is_some(), &ns);
                if let Some(o) = api.get_opt(&name).await.map_err(|e| api_error("reading", e))? {
                    let finalizers = o.metadata.finalizers.unwrap_or_default();
                    left.push(format!(
                        "{}/{name} (finalizers: {})",
                        resource.kind.to_lowercase(),
                        finalizers.join(", ")
                    ));
                }
            }
            for n in &namespaces.items {
                let name = n.metadata.name.clone().unwrap_or_default();
                if let Some(live) =
                    Api::<Namespace>::all(client.clone()).get_opt(&name).await.map_err(|e| api_error("reading", e))?
                {
                    let phase = live.status.and_then(|s| s.phase).unwrap_or_default();
                    if n.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(CREATED_NS)) {
                        left.push(format!("namespace/{name} ({phase})"));
                    }
                }
            }
            if left.is_empty() {
                return Ok(removed);
            }
            if Instant::now() >= deadline {
                return Err(Error::Backend {
                    message: "objects still exist 180s after deletion".into(),
                    detail: Some(left.join("\n")),
                    hint: Some("a finalizer holds them: see `kubectl get -o yaml` on each".into()),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn diagnose(&self) -> Vec<Diagnosis> {
        let mut out = vec![self.kube.diagnose().await];
        if let Some(cluster) = self.kube.kind_cluster() {
            out.push(super::kind_load::diagnose(&self.docker, cluster).await);
        }
        out
    }
}

impl K8sApply {
    /// GET through the cluster: a port-forward (via the API server) to a ready pod behind the
    /// Service, on the Service's target port.
    async fn through_service(
        &self,
        ns: &str,
        service: &str,
        path: &str,
    ) -> std::result::Result<probe::Response, String> {
        let (client, _) = self.kube.client().await.map_err(|e| e.to_string())?;
        let svc = Api::<Service>::namespaced(client.clone(), ns).get(service).await.map_err(|e| e.to_string())?;
        let spec = svc.spec.unwrap_or_default();
        let selector = label_selector(&spec.selector.unwrap_or_default());
        let port = spec.ports.unwrap_or_default().first().and_then(|p| p.target_port.clone());
        let port = match port {
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p)) => p as u16,
            _ => return Err("the service has no numeric targetPort".into()),
        };
        let pods = Api::<Pod>::namespaced(client.clone(), ns);
        // Right after a rollout, old pods are still terminating (and may still say Ready):
        // only a ready pod that is not being deleted counts; a few tries ride out the churn.
        let mut last = String::from("no ready pod behind the service");
        for _ in 0..5 {
            let list = pods.list(&ListParams::default().labels(&selector)).await.map_err(|e| e.to_string())?;
            let ready = list.items.into_iter().find(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            });
            if let Some(pod) = ready.and_then(|p| p.metadata.name) {
                match self.forward_get(&pods, &pod, port, path).await {
                    Ok(r) => return Ok(r),
                    Err(e) => last = e,
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Err(last)
    }

    async fn forward_get(
        &self,
        pods: &Api<Pod>,
        pod: &str,
        port: u16,
        path: &str,
    ) -> std::result::Result<probe::Response, String> {
        let mut forward = pods.portforward(pod, &[port]).await.map_err(|e| format!("port-forward to {pod}: {e}"))?;
        let stream = forward.take_stream(port).ok_or("port-forward gave no stream")?;
        let response = tokio::time::timeout(Duration::from_secs(10), probe::exchange(stream, "localhost", path))
            .await
            .map_err(|_| "no answer through the port-forward within 10s".to_string())?;
        drop(forward);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(body: Value) -> DynamicObject {
        serde_json::from_value(body).unwrap()
    }

    fn deployment(generation: i64, observed: i64, replicas: i32, updated: i32, ready: i32) -> DynamicObject {
        live(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "generation": generation,
                         "annotations": {"deployment.kubernetes.io/revision": "2"}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "x"}}, "template": {}},
            "status": {"observedGeneration": observed, "replicas": replicas, "updatedReplicas": updated,
                       "readyReplicas": ready, "availableReplicas": ready}
        }))
    }

    fn stateful_set(strategy: Value, status: Value) -> DynamicObject {
        live(json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db", "generation": 2},
            "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                     "template": {}, "updateStrategy": strategy},
            "status": status
        }))
    }

    #[test]
    fn a_deployment_is_done_only_when_the_controller_saw_the_spec_and_every_replica_is_new_and_ready() {
        let done = Rollout::of("Deployment", &deployment(2, 2, 3, 3, 3)).unwrap().unwrap();
        assert!(done.done, "{done:?}");
        assert_eq!((done.revision.as_str(), done.selector.as_str()), ("2", "app=x"));
        // Right after a re-apply: the old status still looks complete.
        assert!(!Rollout::of("Deployment", &deployment(3, 2, 3, 3, 3)).unwrap().unwrap().done);
        // Surge: a new pod on top of the old ones.
        assert!(!Rollout::of("Deployment", &deployment(2, 2, 4, 1, 3)).unwrap().unwrap().done);
        assert!(
            Rollout::of("Service", &live(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}})))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_stateful_set_waits_for_the_update_revision_unless_partitioned_or_on_delete() {
        let status = |ready: i32, updated: i32, current: &str| {
            json!({"observedGeneration": 2, "replicas": 2, "readyReplicas": ready, "updatedReplicas": updated,
                   "currentRevision": current, "updateRevision": "db-new"})
        };
        let rolling = json!({"type": "RollingUpdate"});
        let done = Rollout::of("StatefulSet", &stateful_set(rolling.clone(), status(2, 2, "db-new"))).unwrap().unwrap();
        assert!(done.done && done.revision == "db-new" && done.selector == "app=db", "{done:?}");
        // Ready, but still on the old revision: the rolling update is under way.
        assert!(
            !Rollout::of("StatefulSet", &stateful_set(rolling.clone(), status(2, 1, "db-old"))).unwrap().unwrap().done
        );
        assert!(!Rollout::of("StatefulSet", &stateful_set(rolling, status(1, 2, "db-new"))).unwrap().unwrap().done);
        // A partition of 1: only the pod above it is updated, and that is the whole rollout.
        let partitioned = json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 1}});
        assert!(Rollout::of("StatefulSet", &stateful_set(partitioned, status(2, 1, "db-old"))).unwrap().unwrap().done);
        let on_delete = json!({"type": "OnDelete"});
        assert!(Rollout::of("StatefulSet", &stateful_set(on_delete, status(2, 0, "db-old"))).unwrap().unwrap().done);
    }
}
