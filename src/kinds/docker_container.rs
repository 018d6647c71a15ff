//! `docker-container`: runs one container from an image, ports published on a host address
//! (127.0.0.1 by default), waits until it answers HTTP. Found again by name; a container of the
//! same name that is not this owner's is never touched.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::docker::{DockerBackend, api_error, engine_message, is_not_found, label_filters, short_id};
use super::input_hash;
use crate::catalog::typed_config;
use crate::error::{Error, Result};
use crate::probe;
use crate::step::{Action, CheckResult, Diagnosis, LABEL_INPUT, Observation, Outputs, StepCtx, StepKind};

pub struct DockerContainer {
    pub docker: Arc<DockerBackend>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Config {
    name: String,
    image: String,
    #[serde(default)]
    ports: Vec<Port>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default, skip_serializing)]
    ready: Option<Ready>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Port {
    #[serde(default = "loopback")]
    host_ip: String,
    host_port: u16,
    container_port: u16,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ready {
    /// URL that must answer (any status below 500) for the container to count as ready.
    http: String,
    #[serde(default = "default_ready_timeout")]
    timeout: u64,
}

fn loopback() -> String {
    "127.0.0.1".into()
}

fn default_ready_timeout() -> u64 {
    60
}

impl Config {
    /// Everything that, when changed, means the container must be replaced.
    fn hash(&self) -> String {
        input_hash(&[&serde_json::to_vec(self).expect("config serializes")])
    }

    fn published(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("{}:{}->{}", p.host_ip, p.host_port, p.container_port))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

struct Existing {
    id: String,
    running: bool,
    state: String,
    hash: String,
    ports: Vec<String>,
    started: String,
    health: Option<String>,
    image: String,
}

impl DockerContainer {
    /// The container named `name`, if it exists. A same-named container that is not this
    /// owner's is an error: labctl never adopts or removes what it did not make.
    async fn existing(&self, ctx: &StepCtx<'_>, name: &str) -> Result<Option<Existing>> {
        let docker = self.docker.client().await?;
        let info = match docker.inspect_container(name, None).await {
            Ok(info) => info,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(api_error(&format!("inspecting container {name}"), e)),
        };
        let config = info.config.unwrap_or_default();
        let labels = config.labels.unwrap_or_default();
        if !ctx.ownership.owns(&labels) {
            return Err(Error::not_ours(
                &format!("a container named `{name}`"),
                &ctx.ownership.owner,
                &format!("remove or rename it yourself (`docker rm -f {name}`)"),
            ));
        }
        let state = info.state.unwrap_or_default();
        let ports = info
            .host_config
            .and_then(|h| h.port_bindings)
            .unwrap_or_default()
            .into_iter()
            .flat_map(|(cport, binds)| {
                binds.unwrap_or_default().into_iter().map(move |b| {
                    format!("{}:{}->{}", b.host_ip.unwrap_or_default(), b.host_port.unwrap_or_default(), cport)
                })
            })
            .collect();
        Ok(Some(Existing {
            id: info.id.unwrap_or_default(),
            running: state.running.unwrap_or(false),
            state: state.status.map(|s| s.to_string()).unwrap_or_else(|| "unknown".into()),
            hash: labels.get(LABEL_INPUT).cloned().unwrap_or_default(),
            ports,
            started: state.started_at.unwrap_or_default(),
            health: state.health.and_then(|h| h.status).map(|s| s.to_string()),
            image: config.image.unwrap_or_default(),
        }))
    }

    async fn remove(&self, id_or_name: &str) -> Result<()> {
        let docker = self.docker.client().await?;
        let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match docker.remove_container(id_or_name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(api_error(&format!("removing container {id_or_name}"), e)),
        }
    }

    async fn logs_tail(&self, name: &str) -> String {
        let Ok(docker) = self.docker.client().await else {
            return String::new();
        };
        let options = LogsOptionsBuilder::default().stdout(true).stderr(true).tail("20").build();
        let mut logs = docker.logs(name, Some(options));
        let mut out = String::new();
        while let Some(Ok(chunk)) = logs.next().await {
            out.push_str(&chunk.to_string());
        }
        out
    }

    fn outputs(config: &Config, id: &str) -> Outputs {
        Outputs::from_iter([
            ("id".to_string(), Value::from(id.to_string())),
            ("name".to_string(), Value::from(config.name.clone())),
            ("ports".to_string(), Value::from(config.published())),
        ])
    }
}

#[async_trait]
impl StepKind for DockerContainer {
    fn name(&self) -> &'static str {
        "docker-container"
    }

    fn validate(&self, config: &Value) -> std::result::Result<(), String> {
        let c: Config = typed_config(config)?;
        if c.name.is_empty() || !c.name.chars().all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch)) {
            return Err(format!("field `name`: `{}` is not a valid container name", c.name));
        }
        Ok(())
    }

    async fn observe(&self, ctx: &StepCtx<'_>, desired: &Value, pending: bool) -> Result<Observation> {
        let config: Config = typed_config(desired).map_err(Error::backend)?;
        let Some(existing) = self.existing(ctx, &config.name).await? else {
            return Ok(Observation::absent(format!("run {} on {}", config.name, config.published())));
        };
        let mut details: Vec<(String, String)> = vec![
            ("container".into(), format!("{} {}", config.name, short_id(&existing.id))),
            ("state".into(), existing.state.clone()),
            ("started".into(), existing.started.clone()),
            ("ports".into(), existing.ports.join(", ")),
            ("image".into(), short_id(&existing.image)),
        ]
        .into_iter()
        .chain(existing.health.clone().map(|h| ("health".to_string(), h)))
        .collect();
        let mut unhealthy = false;
        if let (Some(ready), true) = (&config.ready, existing.running) {
            let probe = match probe::get(&ready.http, Duration::from_secs(3)).await {
                Ok(r) => {
                    unhealthy = r.status >= 500;
                    format!("{} → HTTP {}", ready.http, r.status)
                }
                Err(e) => {
                    unhealthy = true;
                    format!("{} → {e}", ready.http)
                }
            };
            details.push(("probe".into(), probe));
        }
        let (action, reason, drift) = if pending || existing.hash != config.hash() {
            let why = if pending { "its image will change" } else { "its configuration changed" };
            (Action::Replace, format!("replace {} ({why})", config.name), false)
        } else if !existing.running {
            (Action::Update, format!("start {} (it is {})", config.name, existing.state), true)
        } else {
            (Action::None, format!("{} is running", config.name), unhealthy)
        };
        Ok(Observation { action, reason, outputs: Self::outputs(&config, &existing.id), details, drift })
    }

    async fn preflight(&self, ctx: &StepCtx<'_>, desired: &Value, _observed: &Observation) -> Result<()> {
        let config: Config = typed_config(desired).map_err(Error::backend)?;
        let ours = self.existing(ctx, &config.name).await?.map(|e| e.ports).unwrap_or_default();
        for p in &config.ports {
            let spec = format!("{}:{}->{}", p.host_ip, p.host_port, p.container_port);
            if ours.contains(&spec) {
                continue; // held by the container this run replaces
            }
            if let Err(e) = std::net::TcpListener::bind((p.host_ip.as_str(), p.host_port)) {
                return Err(Error::usage(
                    format!("port {}:{} is not free: {e}", p.host_ip, p.host_port),
                    "stop what uses it, or pick another port, e.g. `--param port=8081`",
                ));
            }
        }
        Ok(())
    }

    async fn apply(&self, ctx: &StepCtx<'_>, desired: &Value, observed: &Observation) -> Result<Outputs> {
        let config: Config = typed_config(desired).map_err(Error::backend)?;
        let docker = self.docker.client().await?;
        if observed.action == Action::Update {
            docker.start_container(&config.name, None).await.map_err(|e| api_error("starting the container", e))?;
            return Ok(observed.outputs.clone());
        }
        if observed.action == Action::Replace {
            ctx.log(&format!("removing the old {}", config.name));
            self.remove(&config.name).await?;
        }
        let hash = config.hash();
        let labels: HashMap<String, String> = ctx.ownership.labels(ctx.step, &hash).into_iter().collect();
        let mut bindings = HashMap::new();
        for p in &config.ports {
            bindings.insert(
                format!("{}/tcp", p.container_port),
                Some(vec![PortBinding { host_ip: Some(p.host_ip.clone()), host_port: Some(p.host_port.to_string()) }]),
            );
        }
        let body = ContainerCreateBody {
            image: Some(config.image.clone()),
            labels: Some(labels),
            env: Some(config.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            exposed_ports: Some(config.ports.iter().map(|p| format!("{}/tcp", p.container_port)).collect()),
            host_config: Some(HostConfig {
                port_bindings: Some(bindings),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&config.name).build();
        let created =
            docker.create_container(Some(options), body).await.map_err(|e| api_error("creating the container", e))?;
        if let Err(e) = docker.start_container(&created.id, None).await {
            // Nothing half-made: a container that cannot start is removed again.
            self.remove(&created.id).await?;
            let message = engine_message(&e);
            let hint = (message.contains("port is already allocated") || message.contains("address already in use"))
                .then(|| "another process took the port: pick another with `--param port=…`".to_string());
            return Err(Error::Backend { message: format!("starting {}: {message}", config.name), detail: None, hint });
        }
        Ok(Self::outputs(&config, &created.id))
    }

    async fn wait(&self, ctx: &StepCtx<'_>, desired: &Value, _outputs: &Outputs) -> Result<()> {
        let config: Config = typed_config(desired).map_err(Error::backend)?;
        let Some(ready) = &config.ready else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(ready.timeout);
        loop {
            let last = match probe::get(&ready.http, Duration::from_secs(3)).await {
                Ok(r) if r.status < 500 => return Ok(()),
                Ok(r) => format!("HTTP {}", r.status),
                Err(e) => e,
            };
            let existing = self.existing(ctx, &config.name).await?;
            if !existing.as_ref().is_some_and(|e| e.running) {
                let state = existing.map(|e| e.state).unwrap_or_else(|| "gone".into());
                return Err(Error::Backend {
                    message: format!(
                        "container {} stopped while waiting for {} (state: {state})",
                        config.name, ready.http
                    ),
                    detail: Some(self.logs_tail(&config.name).await),
                    hint: Some(format!("the lines above are the end of its log (`docker logs {}`)", config.name)),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::Backend {
                    message: format!("{} did not answer within {}s (last: {last})", ready.http, ready.timeout),
                    detail: Some(self.logs_tail(&config.name).await),
                    hint: Some("raise `ready.timeout` in the lab spec if the app is just slow to start".into()),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn verify(&self, ctx: &StepCtx<'_>, desired: &Value, _outputs: &Outputs) -> Result<Vec<CheckResult>> {
        let config: Config = typed_config(desired).map_err(Error::backend)?;
        let existing = self.existing(ctx, &config.name).await?;
        let (ok, detail) = match existing {
            Some(e) if e.running => (true, format!("{} on {}", e.state, e.ports.join(", "))),
            Some(e) => (false, e.state),
            None => (false, "missing".into()),
        };
        Ok(vec![CheckResult { name: format!("container {} is running", config.name), ok, detail }])
    }

    async fn destroy(&self, ctx: &StepCtx<'_>, step: Option<&str>) -> Result<Vec<String>> {
        let docker = self.docker.client().await?;
        let filters = label_filters(ctx.ownership, step);
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let found = docker.list_containers(Some(options)).await.map_err(|e| api_error("listing containers", e))?;
        let mut removed = Vec::new();
        for c in found {
            let id = c.id.unwrap_or_default();
            let name = c
                .names
                .unwrap_or_default()
                .first()
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_else(|| short_id(&id));
            ctx.log(&format!("removing container {name}"));
            self.remove(&id).await?;
            removed.push(format!("container {name}"));
        }
        Ok(removed)
    }

    async fn diagnose(&self) -> Vec<Diagnosis> {
        vec![self.docker.diagnose().await]
    }
}
