//! `ec2-ami`: finds an image — the newest one whose name matches a pattern and whose owner is
//! given (e.g. `al2023-ami-2023.*-x86_64` / `amazon`), or a pinned id. Creates nothing.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_ec2::types::{Filter, Image};
use serde::Deserialize;
use serde_json::Value;

use super::aws::AwsBackend;
use crate::catalog::typed_config;
use crate::error::{Error, Result};
use crate::step::{Action, Diagnosis, Observation, Outputs, StepCtx, StepKind};

pub struct Ec2Ami {
    pub aws: Arc<AwsBackend>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Name pattern (`*` wildcards), newest match wins.
    name: Option<String>,
    #[serde(default = "amazon")]
    owner: String,
    /// A pinned image id instead of a lookup.
    id: Option<String>,
}

fn amazon() -> String {
    "amazon".into()
}

/// Newest by creation date; among equals (emulators give every image the same date), the
/// greatest name, so the choice is stable from run to run.
fn newest(images: &[Image]) -> Option<&Image> {
    images.iter().max_by(|a, b| (a.creation_date(), a.name()).cmp(&(b.creation_date(), b.name())))
}

#[async_trait]
impl StepKind for Ec2Ami {
    fn name(&self) -> &'static str {
        "ec2-ami"
    }

    fn validate(&self, config: &Value) -> std::result::Result<(), String> {
        let c: Config = typed_config(config)?;
        match (&c.name, &c.id) {
            (None, None) => Err("set `name` (a pattern to look up) or `id` (a pinned image)".into()),
            (Some(_), Some(_)) => Err("set either `name` or `id`, not both".into()),
            _ => Ok(()),
        }
    }

    async fn observe(&self, _ctx: &StepCtx<'_>, desired: &Value, _pending: bool) -> Result<Observation> {
        let config: Config = typed_config(desired).map_err(Error::backend)?;
        let (client, region) = self.aws.client().await?;
        let request = match &config.id {
            Some(id) => client.describe_images().image_ids(id),
            None => client
                .describe_images()
                .owners(&config.owner)
                .filters(Filter::builder().name("name").values(config.name.clone().unwrap_or_default()).build())
                .filters(Filter::builder().name("state").values("available").build()),
        };
        let images = request.send().await.map_err(|e| self.aws.error("looking up the AMI", e))?;
        let what = match &config.id {
            Some(id) => format!("AMI {id}"),
            None => format!("AMI named `{}` owned by `{}`", config.name.as_deref().unwrap_or_default(), config.owner),
        };
        let image = newest(images.images()).ok_or_else(|| {
            Error::usage(
                format!("no {what} in region {region}"),
                "check the lab's `ami_name` / `ami_owner` parameters (or the region), e.g. -p ami_name='al2023-ami-2023.*-x86_64'",
            )
        })?;
        let id = image.image_id().unwrap_or_default().to_string();
        let name = image.name().unwrap_or_default().to_string();
        Ok(Observation {
            action: Action::None,
            reason: format!("{id} ({name})"),
            outputs: Outputs::from_iter([
                ("id".to_string(), Value::from(id.clone())),
                ("name".to_string(), Value::from(name.clone())),
            ]),
            details: vec![
                ("image".into(), format!("{id} {name}")),
                ("created".into(), image.creation_date().unwrap_or_default().into()),
            ],
            drift: false,
        })
    }

    async fn apply(&self, _ctx: &StepCtx<'_>, _desired: &Value, observed: &Observation) -> Result<Outputs> {
        // A lookup: observe already found it.
        Ok(observed.outputs.clone())
    }

    async fn destroy(&self, _ctx: &StepCtx<'_>, _step: Option<&str>) -> Result<Vec<String>> {
        Ok(vec![])
    }

    async fn diagnose(&self) -> Vec<Diagnosis> {
        vec![self.aws.diagnose().await]
    }
}
