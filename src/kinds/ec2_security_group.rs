//! `ec2-security-group`: an owner-scoped security group and its ingress rules, reconciled: a
//! missing rule is added; a rule labctl did not ask for is reported as drift and left alone.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::types::{Filter, IpPermission, IpRange, ResourceType, SecurityGroup};
use serde::Deserialize;
use serde_json::Value;

use super::aws::{AwsBackend, owner_filters, poll, tag_spec, tags_map};
use crate::catalog::typed_config;
use crate::error::{Error, Result};
use crate::step::{Action, CheckResult, Diagnosis, Observation, Outputs, StepCtx, StepKind};

pub struct Ec2SecurityGroup {
    pub aws: Arc<AwsBackend>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    name: String,
    description: String,
    #[serde(default)]
    ingress: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    port: u16,
    to_port: Option<u16>,
    #[serde(default = "tcp")]
    protocol: String,
    #[serde(default = "anywhere")]
    cidr: String,
}

fn tcp() -> String {
    "tcp".into()
}

fn anywhere() -> String {
    "0.0.0.0/0".into()
}

/// (protocol, from, to, cidr): one ingress permission, comparable.
type Perm = (String, i32, i32, String);

fn describe(p: &Perm) -> String {
    let ports = if p.1 == p.2 { p.1.to_string() } else { format!("{}-{}", p.1, p.2) };
    format!("{} {ports} from {}", p.0, p.3)
}

impl Config {
    fn wanted(&self) -> BTreeSet<Perm> {
        self.ingress
            .iter()
            .map(|r| (r.protocol.clone(), i32::from(r.port), i32::from(r.to_port.unwrap_or(r.port)), r.cidr.clone()))
            .collect()
    }
}

fn actual(group: &SecurityGroup) -> BTreeSet<Perm> {
    group
        .ip_permissions()
        .iter()
        .flat_map(|p| {
            p.ip_ranges().iter().map(move |r| {
                (
                    p.ip_protocol().unwrap_or_default().to_string(),
                    p.from_port().unwrap_or(-1),
                    p.to_port().unwrap_or(-1),
                    r.cidr_ip().unwrap_or_default().to_string(),
                )
            })
        })
        .collect()
}

impl Ec2SecurityGroup {
    /// The group named `name`. One that exists but is not this owner's is an error.
    async fn find(&self, ctx: &StepCtx<'_>, name: &str) -> Result<Option<SecurityGroup>> {
        let (client, _) = self.aws.client().await?;
        let found = client
            .describe_security_groups()
            .filters(Filter::builder().name("group-name").values(name).build())
            .send()
            .await
            .map_err(|e| self.aws.error("describing security groups", e))?;
        match found.security_groups().first() {
            None => Ok(None),
            Some(g) if !ctx.ownership.owns(&tags_map(g.tags())) => Err(Error::not_ours(
                &format!("a security group named `{name}`"),
                &ctx.ownership.owner,
                "delete or rename it",
            )),
            Some(g) => Ok(Some(g.clone())),
        }
    }

    async fn authorize(&self, group_id: &str, perms: &BTreeSet<Perm>) -> Result<()> {
        if perms.is_empty() {
            return Ok(());
        }
        let (client, _) = self.aws.client().await?;
        let mut request = client.authorize_security_group_ingress().group_id(group_id);
        for p in perms {
            request = request.ip_permissions(
                IpPermission::builder()
                    .ip_protocol(&p.0)
                    .from_port(p.1)
                    .to_port(p.2)
                    .ip_ranges(IpRange::builder().cidr_ip(&p.3).description("labctl").build())
                    .build(),
            );
        }
        request.send().await.map_err(|e| self.aws.error("adding ingress rules", e))?;
        Ok(())
    }
}

#[async_trait]
impl StepKind for Ec2SecurityGroup {
    fn name(&self) -> &'static str {
        "ec2-security-group"
    }

    fn validate(&self, config: &Value) -> std::result::Result<(), String> {
        let c: Config = typed_config(config)?;
        for r in &c.ingress {
            if !r.cidr.contains('/') {
                return Err(format!("field `ingress.cidr`: `{}` is not a CIDR block (e.g. 0.0.0.0/0)", r.cidr));
            }
        }
        Ok(())
    }

    async fn observe(&self, ctx: &StepCtx<'_>, desired: &Value, _pending: bool) -> Result<Observation> {
        let config: Config = typed_config(desired).map_err(Error::backend)?;
        let wanted = config.wanted();
        let Some(group) = self.find(ctx, &config.name).await? else {
            let rules: Vec<String> = wanted.iter().map(describe).collect();
            return Ok(Observation::absent(format!("create {} with {}", config.name, rules.join(", "))));
        };
        let id = group.group_id().unwrap_or_default().to_string();
        let have = actual(&group);
        let missing: Vec<String> = wanted.difference(&have).map(describe).collect();
        let extra: Vec<String> = have.difference(&wanted).map(describe).collect();
        let mut details = vec![
            ("group".into(), format!("{} {id}", config.name)),
            ("rules".into(), have.iter().map(describe).collect::<Vec<_>>().join(", ")),
        ];
        if !missing.is_empty() {
            details.push(("missing".into(), missing.join(", ")));
        }
        if !extra.is_empty() {
            details.push(("foreign".into(), format!("{} (not labctl's: left alone)", extra.join(", "))));
        }
        let outputs = Outputs::from_iter([
            ("id".to_string(), Value::from(id)),
            ("name".to_string(), Value::from(config.name.clone())),
        ]);
        let (action, reason) = if missing.is_empty() {
            (Action::None, format!("{} has its rules", config.name))
        } else {
            (Action::Update, format!("add {} to {}", missing.join(", "), config.name))
        };
        Ok(Observation { action, reason, outputs, details, drift: !missing.is_empty() || !extra.is_empty() })
    }

    async fn apply(&self, ctx: &StepCtx<'_>, desired: &Value, observed: &Observation) -> Result<Outputs> {
        let config: Config = typed_config(desired).map_err(Error::backend)?;
        let (client, _) = self.aws.client().await?;
        let wanted = config.wanted();
        let (id, have) = match observed.action {
            Action::Create => {
                let labels = ctx.ownership.labels(ctx.step, "");
                let created = client
                    .create_security_group()
                    .group_name(&config.name)
                    .description(&config.description)
                    .tag_specifications(tag_spec(ResourceType::SecurityGroup, &labels, &config.name))
                    .send()
                    .await
                    .map_err(|e| self.aws.error("creating the security group", e))?;
                (created.group_id().unwrap_or_default().to_string(), BTreeSet::new())
            }
            _ => {
                let group =
                    self.find(ctx, &config.name).await?.ok_or_else(|| Error::backend("the security group vanished"))?;
                (group.group_id().unwrap_or_default().to_string(), actual(&group))
            }
        };
        let missing: BTreeSet<Perm> = wanted.difference(&have).cloned().collect();
        for p in &missing {
            ctx.log(&format!("adding rule {}", describe(p)));
        }
        self.authorize(&id, &missing).await?;
        Ok(Outputs::from_iter([("id".to_string(), Value::from(id)), ("name".to_string(), Value::from(config.name))]))
    }

    async fn verify(&self, ctx: &StepCtx<'_>, desired: &Value, _outputs: &Outputs) -> Result<Vec<CheckResult>> {
        let config: Config = typed_config(desired).map_err(Error::backend)?;
        let group = self.find(ctx, &config.name).await?;
        let have = group.as_ref().map(actual).unwrap_or_default();
        Ok(config
            .wanted()
            .iter()
            .map(|p| CheckResult {
                name: format!("security group {} allows {}", config.name, describe(p)),
                ok: have.contains(p),
                detail: if group.is_none() { "the group is missing".into() } else { String::new() },
            })
            .collect())
    }

    async fn destroy(&self, ctx: &StepCtx<'_>, step: Option<&str>) -> Result<Vec<String>> {
        let (client, _) = self.aws.client().await?;
        let found = client
            .describe_security_groups()
            .set_filters(Some(owner_filters(ctx.ownership, step)))
            .send()
            .await
            .map_err(|e| self.aws.error("describing security groups", e))?;
        let mut removed = Vec::new();
        for g in found.security_groups().iter().filter(|g| ctx.ownership.owns(&tags_map(g.tags()))) {
            let id = g.group_id().unwrap_or_default().to_string();
            ctx.log(&format!("deleting security group {id}"));
            // An instance that is still shutting down holds the group: retry until it lets go.
            poll(
                &format!("deleting security group {id}"),
                Duration::from_secs(180),
                Duration::from_secs(2),
                || async {
                    match client.delete_security_group().group_id(&id).send().await {
                        Ok(_) => Ok((Some(()), "deleted".to_string())),
                        Err(e) => match aws_sdk_ec2::error::ProvideErrorMetadata::code(&e) {
                            Some("DependencyViolation") => Ok((None, "in use".to_string())),
                            Some("InvalidGroup.NotFound") => Ok((Some(()), "gone".to_string())),
                            _ => Err(self.aws.error("deleting the security group", e)),
                        },
                    }
                },
            )
            .await?;
            removed.push(format!("security group {} {id}", g.group_name().unwrap_or_default()));
        }
        Ok(removed)
    }

    async fn diagnose(&self) -> Vec<Diagnosis> {
        vec![self.aws.diagnose().await]
    }
}
