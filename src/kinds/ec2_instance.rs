//! `ec2-instance`: one instance, found again by its owner-scoped Name and ownership tags, with
//! its user-data rendered from a template. Launches carry a client token, so a retried call
//! never makes a second instance; a killed run's instance is adopted by the next one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, Instance, InstanceAttributeName, InstanceStateName, InstanceType,
    ResourceType, SummaryStatus, VolumeType,
};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::aws::{AwsBackend, owner_filters, poll, tag_spec};
use super::input_hash;
use crate::catalog::typed_config;
use crate::error::{Error, Result};
use crate::probe;
use crate::spec::PENDING;
use crate::step::{Action, CheckResult, Diagnosis, LABEL_INPUT, Observation, Outputs, StepCtx, StepKind};

pub struct Ec2Instance {
    pub aws: Arc<AwsBackend>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Config {
    name: String,
    ami: String,
    instance_type: String,
    #[serde(default)]
    security_groups: Vec<String>,
    key_name: Option<String>,
    volume_gb: Option<i32>,
    user_data: Option<UserData>,
    /// On a real account, `verify` fetches this from the public IP.
    #[serde(default, skip_serializing)]
    http_check: Option<HttpCheck>,
    /// Seconds to wait for `running` (and status checks on a real account).
    #[serde(default = "default_timeout", skip_serializing)]
    timeout: u64,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct UserData {
    /// Script file, relative to the spec; `{{ var }}` placeholders are filled from `vars`.
    template: String,
    #[serde(default)]
    vars: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpCheck {
    port: u16,
    #[serde(default = "root")]
    path: String,
    body_contains: String,
}

fn default_timeout() -> u64 {
    600
}

fn root() -> String {
    "/".into()
}

const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];

impl Config {
    /// The script the instance gets. Values must be one printable line each, and every
    /// placeholder must be filled: what reaches the instance is exactly what was asked for.
    fn user_data(&self, ctx: &StepCtx<'_>) -> Result<Option<String>> {
        let Some(ud) = &self.user_data else { return Ok(None) };
        let script = ctx.source.read_file(&ud.template)?;
        let script = crate::spec::fill_placeholders(&script, &ud.vars, &format!("user-data template {}", ud.template))?;
        Ok(Some(script))
    }

    fn hash(&self, user_data: Option<&str>) -> String {
        let mut parts: Vec<&[u8]> = vec![self.ami.as_bytes(), self.instance_type.as_bytes()];
        let mut sgs = self.security_groups.clone();
        sgs.sort();
        let sgs = sgs.join(",");
        parts.push(sgs.as_bytes());
        let key = self.key_name.clone().unwrap_or_default();
        parts.push(key.as_bytes());
        let volume = self.volume_gb.unwrap_or(0).to_string();
        parts.push(volume.as_bytes());
        parts.push(user_data.unwrap_or_default().as_bytes());
        input_hash(&parts)
    }
}

fn state(i: &Instance) -> String {
    i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_else(|| "unknown".into())
}

fn ids(instances: &[Instance]) -> Vec<String> {
    instances.iter().filter_map(|i| i.instance_id().map(String::from)).collect()
}

fn tag<'a>(i: &'a Instance, key: &str) -> Option<&'a str> {
    i.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

impl Ec2Instance {
    /// This owner's live instances of the step, newest first.
    async fn find(&self, ctx: &StepCtx<'_>, step: Option<&str>, name: Option<&str>) -> Result<Vec<Instance>> {
        let (client, _) = self.aws.client().await?;
        let mut filters = owner_filters(ctx.ownership, step);
        filters.push(
            Filter::builder()
                .name("instance-state-name")
                .set_values(Some(LIVE_STATES.map(String::from).to_vec()))
                .build(),
        );
        if let Some(name) = name {
            filters.push(Filter::builder().name("tag:Name").values(name).build());
        }
        let out = client
            .describe_instances()
            .set_filters(Some(filters))
            .send()
            .await
            .map_err(|e| self.aws.error("describing instances", e))?;
        let mut found: Vec<Instance> = out.reservations().iter().flat_map(|r| r.instances().iter().cloned()).collect();
        found.retain(|i| LIVE_STATES.contains(&state(i).as_str()));
        found.sort_by(|a, b| b.launch_time().map(|t| t.secs()).cmp(&a.launch_time().map(|t| t.secs())));
        Ok(found)
    }

    fn outputs(i: &Instance, config: &Config) -> Outputs {
        let ip = i.public_ip_address().unwrap_or_default().to_string();
        let mut o = Outputs::from_iter([
            ("id".to_string(), Value::from(i.instance_id().unwrap_or_default())),
            ("public_ip".to_string(), Value::from(ip.clone())),
            ("private_ip".to_string(), Value::from(i.private_ip_address().unwrap_or_default())),
        ]);
        if let Some(check) = &config.http_check {
            let port = if check.port == 80 { String::new() } else { format!(":{}", check.port) };
            o.insert("url".into(), Value::from(format!("http://{ip}{port}{}", check.path)));
        }
        o
    }

    async fn terminate(&self, ctx: &StepCtx<'_>, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let (client, _) = self.aws.client().await?;
        ctx.log(&format!("terminating {}", ids.join(", ")));
        client
            .terminate_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(|e| self.aws.error("terminating instances", e))?;
        poll("waiting for termination", Duration::from_secs(600), Duration::from_secs(2), || async {
            let out = client
                .describe_instances()
                .set_instance_ids(Some(ids.to_vec()))
                .send()
                .await
                .map_err(|e| self.aws.error("describing instances", e))?;
            let states: Vec<String> = out.reservations().iter().flat_map(|r| r.instances()).map(state).collect();
            let done = states.iter().all(|s| s == "terminated");
            Ok((done.then_some(()), states.join(", ")))
        })
        .await
    }
}

#[async_trait]
impl StepKind for Ec2Instance {
    fn name(&self) -> &'static str {
        "ec2-instance"
    }

    fn validate(&self, config: &Value) -> std::result::Result<(), String> {
        let _: Config = typed_config(config)?;
        Ok(())
    }

    async fn observe(&self, ctx: &StepCtx<'_>, desired: &Value, pending: bool) -> Result<Observation> {
        let config: Config = typed_config(desired).map_err(Error::backend)?;
        let user_data = config.user_data(ctx)?;
        let found = self.find(ctx, Some(ctx.step), Some(&config.name)).await?;
        let Some(current) = found.first() else {
            let ami = if config.ami == PENDING { "the AMI found" } else { config.ami.as_str() };
            return Ok(Observation::absent(format!("launch {} {} from {ami}", config.instance_type, config.name)));
        };
        let st = state(current);
        let mut details = vec![
            ("instance".into(), format!("{} {}", config.name, current.instance_id().unwrap_or_default())),
            ("state".into(), st.clone()),
            ("type".into(), current.instance_type().map(|t| t.as_str().to_string()).unwrap_or_default()),
            ("public ip".into(), current.public_ip_address().unwrap_or("-").to_string()),
            ("image".into(), current.image_id().unwrap_or_default().to_string()),
            (
                "groups".into(),
                current.security_groups().iter().filter_map(|g| g.group_id()).collect::<Vec<_>>().join(", "),
            ),
        ];
        if let Some(t) = current.launch_time() {
            let up = (crate::state::now() as i64 - t.secs()).max(0);
            details.push(("uptime".into(), format!("{}m{:02}s", up / 60, up % 60)));
        }
        let duplicates = ids(&found[1..]);
        if !duplicates.is_empty() {
            details.push(("duplicates".into(), duplicates.join(", ")));
        }
        let hash = config.hash(user_data.as_deref());
        let (action, reason, drift) = if pending || tag(current, LABEL_INPUT) != Some(hash.as_str()) {
            (Action::Replace, format!("replace {} (AMI, type, groups, key or user-data changed)", config.name), false)
        } else if !duplicates.is_empty() {
            (Action::Update, format!("terminate duplicate instance(s) {}", duplicates.join(", ")), true)
        } else if st == "stopped" || st == "stopping" {
            (Action::Update, format!("start {} (it is {st})", config.name), true)
        } else {
            (Action::None, format!("{} is {st}", config.name), false)
        };
        Ok(Observation { action, reason, outputs: Self::outputs(current, &config), details, drift })
    }

    async fn apply(&self, ctx: &StepCtx<'_>, desired: &Value, observed: &Observation) -> Result<Outputs> {
        let config: Config = typed_config(desired).map_err(Error::backend)?;
        let (client, _) = self.aws.client().await?;
        let found = self.find(ctx, Some(ctx.step), Some(&config.name)).await?;
        if observed.action == Action::Update {
            let current = found.first().ok_or_else(|| Error::backend("the instance vanished"))?;
            self.terminate(ctx, &ids(&found[1..])).await?;
            if matches!(state(current).as_str(), "stopped" | "stopping") {
                client
                    .start_instances()
                    .instance_ids(current.instance_id().unwrap_or_default())
                    .send()
                    .await
                    .map_err(|e| self.aws.error("starting the instance", e))?;
            }
            return Ok(Self::outputs(current, &config));
        }
        if observed.action == Action::Replace {
            self.terminate(ctx, &ids(&found)).await?;
        }
        let user_data = config.user_data(ctx)?;
        let hash = config.hash(user_data.as_deref());
        let labels = ctx.ownership.labels(ctx.step, &hash);
        // Same run, same inputs → same token: a retried RunInstances returns the first instance.
        let token = input_hash(&[hash.as_bytes(), ctx.ownership.run_id.as_bytes(), ctx.ownership.owner.as_bytes()]);
        let mut request = client
            .run_instances()
            .image_id(&config.ami)
            .instance_type(InstanceType::from(config.instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            .client_token(token)
            .set_security_group_ids(Some(config.security_groups.clone()))
            .set_key_name(config.key_name.clone())
            .tag_specifications(tag_spec(ResourceType::Instance, &labels, &config.name))
            .tag_specifications(tag_spec(ResourceType::Volume, &labels, &config.name));
        if let Some(script) = &user_data {
            request = request.user_data(base64::engine::general_purpose::STANDARD.encode(script));
        }
        if let Some(gb) = config.volume_gb {
            request = request.block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name("/dev/xvda")
                    .ebs(
                        EbsBlockDevice::builder()
                            .volume_size(gb)
                            .volume_type(VolumeType::Gp3)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            );
        }
        let out = request.send().await.map_err(|e| self.aws.error("launching the instance", e))?;
        let instance = out.instances().first().ok_or_else(|| Error::backend("RunInstances returned no instance"))?;
        ctx.log(&format!("launched {}", instance.instance_id().unwrap_or_default()));
        Ok(Self::outputs(instance, &config))
    }

    async fn wait(&self, ctx: &StepCtx<'_>, desired: &Value, outputs: &Outputs) -> Result<()> {
        let config: Config = typed_config(desired).map_err(Error::backend)?;
        let (client, _) = self.aws.client().await?;
        let id = outputs["id"].as_str().unwrap_or_default().to_string();
        poll(
            &format!("waiting for {id} to run"),
            Duration::from_secs(config.timeout),
            Duration::from_secs(2),
            || async {
                let out = client
                    .describe_instances()
                    .instance_ids(&id)
                    .send()
                    .await
                    .map_err(|e| self.aws.error("describing the instance", e))?;
                let st = out.reservations().iter().flat_map(|r| r.instances()).map(state).next().unwrap_or_default();
                if matches!(st.as_str(), "terminated" | "shutting-down") {
                    return Err(Error::backend(format!("instance {id} is {st}: check the console's system log")));
                }
                Ok(((st == InstanceStateName::Running.as_str()).then_some(()), st))
            },
        )
        .await?;
        if self.aws.is_emulator() {
            return Ok(()); // emulated instances have no status checks and boot nothing
        }
        ctx.log("waiting for the instance status checks");
        poll(
            &format!("waiting for {id}'s status checks"),
            Duration::from_secs(config.timeout),
            Duration::from_secs(10),
            || async {
                let out = client
                    .describe_instance_status()
                    .instance_ids(&id)
                    .send()
                    .await
                    .map_err(|e| self.aws.error("describing the instance status", e))?;
                let status =
                    out.instance_statuses().first().and_then(|s| s.instance_status()).and_then(|s| s.status()).cloned();
                let text = status.as_ref().map(|s| s.as_str().to_string()).unwrap_or_else(|| "initializing".into());
                Ok(((status == Some(SummaryStatus::Ok)).then_some(()), text))
            },
        )
        .await
    }

    async fn verify(&self, ctx: &StepCtx<'_>, desired: &Value, outputs: &Outputs) -> Result<Vec<CheckResult>> {
        let config: Config = typed_config(desired).map_err(Error::backend)?;
        let (client, _) = self.aws.client().await?;
        let id = outputs["id"].as_str().unwrap_or_default().to_string();
        let found = self.find(ctx, Some(ctx.step), Some(&config.name)).await?;
        let current = found.iter().find(|i| i.instance_id() == Some(id.as_str()));
        let mut checks = vec![CheckResult {
            name: format!("instance {} is running", config.name),
            ok: current.is_some_and(|i| state(i) == "running"),
            detail: current.map(state).unwrap_or_else(|| "missing".into()),
        }];
        let groups: Vec<&str> =
            current.map(|i| i.security_groups().iter().filter_map(|g| g.group_id()).collect()).unwrap_or_default();
        checks.push(CheckResult {
            name: format!("instance {} is in its security group(s)", config.name),
            ok: config.security_groups.iter().all(|g| groups.contains(&g.as_str())),
            detail: groups.join(", "),
        });
        if self.aws.is_emulator() {
            // An emulated instance boots nothing and its address is fake: never connect to it.
            // Check instead that the user-data arrived exactly as rendered.
            if let Some(want) = config.user_data(ctx)? {
                let attr = client
                    .describe_instance_attribute()
                    .instance_id(&id)
                    .attribute(InstanceAttributeName::UserData)
                    .send()
                    .await
                    .map_err(|e| self.aws.error("reading the user-data", e))?;
                let got = attr
                    .user_data()
                    .and_then(|v| v.value())
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                checks.push(CheckResult {
                    name: format!("user-data of {} round-trips exactly", config.name),
                    ok: got == want,
                    detail: format!("{} bytes", got.len()),
                });
            }
        } else if let (Some(check), Some(ip)) =
            (&config.http_check, outputs["public_ip"].as_str().filter(|ip| !ip.is_empty()))
        {
            let url = format!("http://{ip}:{}{}", check.port, check.path);
            // The app starts a minute or two after `running`: retry for a while.
            let result = poll(&format!("GET {url}"), Duration::from_secs(300), Duration::from_secs(5), || async {
                Ok(match probe::get(&url, Duration::from_secs(5)).await {
                    Ok(r) if r.body.contains(&check.body_contains) => (Some(r.status), format!("HTTP {}", r.status)),
                    Ok(r) => (None, format!("HTTP {} without {:?}", r.status, check.body_contains)),
                    Err(e) => (None, e),
                })
            })
            .await;
            checks.push(CheckResult {
                name: format!("GET {url} answers {:?}", check.body_contains),
                ok: result.is_ok(),
                detail: result.map(|s| format!("HTTP {s}")).unwrap_or_else(|e| e.to_string()),
            });
        }
        Ok(checks)
    }

    async fn destroy(&self, ctx: &StepCtx<'_>, step: Option<&str>) -> Result<Vec<String>> {
        let found = self.find(ctx, step, None).await?;
        let ids = ids(&found);
        self.terminate(ctx, &ids).await?;
        Ok(ids.into_iter().map(|id| format!("instance {id}")).collect())
    }

    async fn diagnose(&self) -> Vec<Diagnosis> {
        vec![self.aws.diagnose().await]
    }
}
