//! The AWS backend shared by the ec2-* step kinds: one lazily built EC2 client from the
//! profile (credential chain, named profile, region, endpoint for emulators), the SDK's own
//! retry configuration for throttling, and errors that say what to do.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::{Credentials, Region};
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use tokio::sync::OnceCell;

use crate::config::AwsSettings;
use crate::error::{Error, Result};
use crate::step::{Diagnosis, Ownership};

pub struct AwsBackend {
    settings: AwsSettings,
    client: OnceCell<(Client, String)>,
}

const EMULATOR_HINT: &str = "start LocalStack (`localstack/run.sh start` in a labctl checkout, or `testenv/up.sh localstack`), \
or point the profile's `aws.endpoint_url` / AWS_ENDPOINT_URL at a running emulator";

impl AwsBackend {
    pub fn new(settings: AwsSettings) -> Self {
        AwsBackend { settings, client: OnceCell::new() }
    }

    pub fn is_emulator(&self) -> bool {
        self.settings.emulator
    }

    fn endpoint(&self) -> Option<String> {
        self.settings.endpoint_url.clone().or_else(|| std::env::var("AWS_ENDPOINT_URL").ok().filter(|v| !v.is_empty()))
    }

    /// The EC2 client and its region, built on first use.
    pub async fn client(&self) -> Result<(&Client, &str)> {
        let (client, region) = self
            .client
            .get_or_try_init(|| async {
                let mut loader = aws_config::defaults(BehaviorVersion::latest())
                    // Throttling and transient errors: the SDK's standard retry mode with backoff.
                    .retry_config(RetryConfig::standard().with_max_attempts(5))
                    .timeout_config(
                        TimeoutConfig::builder()
                            .connect_timeout(Duration::from_secs(3))
                            .operation_attempt_timeout(Duration::from_secs(30))
                            .build(),
                    );
                if let Some(p) = &self.settings.profile {
                    loader = loader.profile_name(p);
                }
                if let Some(r) = &self.settings.region {
                    loader = loader.region(Region::new(r.clone()));
                }
                if let Some(url) = self.endpoint() {
                    loader = loader.endpoint_url(url);
                }
                if self.settings.emulator {
                    loader = loader.credentials_provider(Credentials::new("test", "test", None, None, "labctl-emulator"));
                }
                let conf = loader.load().await;
                let region = conf.region().map(|r| r.to_string()).ok_or_else(|| {
                    Error::usage(
                        "no AWS region is set",
                        "set the profile's `aws.region` in the labctl config, or AWS_REGION (the course uses us-east-2)",
                    )
                })?;
                check_region(&region)?;
                if conf.credentials_provider().is_none() {
                    return Err(self.no_credentials());
                }
                Ok::<_, Error>((Client::new(&conf), region))
            })
            .await?;
        Ok((client, region.as_str()))
    }

    fn no_credentials(&self) -> Error {
        Error::usage(
            "no AWS credentials were found",
            "run `aws configure` (or set AWS_PROFILE / AWS_ACCESS_KEY_ID), name a profile in the labctl config \
             (`aws.profile`), or use the emulator: --profile localstack",
        )
    }

    /// An SDK error as a labctl error: unreachable endpoint, missing credentials and bad region
    /// each say what to do; service errors keep AWS's code and message.
    pub fn error<E, R>(&self, doing: &str, e: SdkError<E, R>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let target = self.endpoint().unwrap_or_else(|| "AWS".into());
        match &e {
            SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => Error::Unreachable {
                backend: format!("the AWS API at {target}"),
                message: format!("{doing}: {}", source_chain(&e)),
                fix: if self.settings.emulator || self.endpoint().is_some() {
                    EMULATOR_HINT.into()
                } else {
                    "check the network and the region (`aws.region`)".into()
                },
            },
            SdkError::TimeoutError(_) => Error::Unreachable {
                backend: format!("the AWS API at {target}"),
                message: format!("{doing}: no answer in time"),
                fix: EMULATOR_HINT.into(),
            },
            _ if source_chain(&e).contains("credentials") => self.no_credentials(),
            _ => {
                let code = e.code().unwrap_or("error").to_string();
                let message = e.message().map(String::from).unwrap_or_else(|| source_chain(&e));
                let hint = match code.as_str() {
                    "AuthFailure" | "UnrecognizedClientException" | "InvalidClientTokenId" => {
                        Some("the credentials were refused: check them (`aws sts get-caller-identity`)".to_string())
                    }
                    "UnauthorizedOperation" => Some("these credentials lack the EC2 permission named above".into()),
                    "VcpuLimitExceeded" | "InstanceLimitExceeded" => Some(
                        "the account's vCPU quota is used up: `labctl <lab> down` the labs you no longer need".into(),
                    ),
                    _ => None,
                };
                Error::Backend { message: format!("{doing}: {code}: {message}"), detail: None, hint }
            }
        }
    }

    pub async fn diagnose(&self) -> Diagnosis {
        let name = "aws api".to_string();
        let target = self.endpoint().unwrap_or_else(|| "AWS".into());
        let result = async {
            let (client, region) = self.client().await?;
            client.describe_regions().send().await.map_err(|e| self.error("DescribeRegions", e))?;
            Ok::<_, Error>(region.to_string())
        }
        .await;
        match result {
            Ok(region) => Diagnosis {
                name,
                ok: true,
                detail: format!("{target}, region {region}{}", if self.settings.emulator { " (emulator)" } else { "" }),
                fix: None,
            },
            Err(e) => Diagnosis { name, ok: false, detail: e.to_string(), fix: e.hint() },
        }
    }
}

/// `us-east-2` and the like; catches typos before the SDK turns them into DNS failures.
fn check_region(region: &str) -> Result<()> {
    let parts: Vec<&str> = region.split('-').collect();
    let ok = parts.len() >= 3
        && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
        && parts.last().is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()))
        && parts[0].len() == 2;
    if ok {
        Ok(())
    } else {
        Err(Error::usage(
            format!("`{region}` is not an AWS region"),
            "regions look like us-east-2 or eu-west-3: fix `aws.region` in the labctl config or AWS_REGION",
        ))
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.dedup();
    parts.join(": ")
}

/// The ownership labels as EC2 tags (plus `Name`), on the resource type being created.
pub fn tag_spec(
    resource: ResourceType,
    labels: &std::collections::BTreeMap<String, String>,
    name: &str,
) -> TagSpecification {
    let mut b =
        TagSpecification::builder().resource_type(resource).tags(Tag::builder().key("Name").value(name).build());
    for (k, v) in labels {
        b = b.tags(Tag::builder().key(k).value(v).build());
    }
    b.build()
}

/// Filters selecting this owner's resources of one step (or of the whole lab).
pub fn owner_filters(ownership: &Ownership, step: Option<&str>) -> Vec<Filter> {
    ownership
        .selector(step)
        .into_iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("selectors are key=value");
            Filter::builder().name(format!("tag:{k}")).values(v).build()
        })
        .collect()
}

pub fn tags_map(tags: &[Tag]) -> HashMap<String, String> {
    tags.iter().filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string()))).collect()
}

/// Polls `check` every `every` until it returns Some, or fails after `timeout` with the last
/// state it reported: for conditions the SDK has no quick waiter for (its EC2 waiters poll
/// every 15 s, which an emulator answers at once).
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, every: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(Option<T>, String)>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let (done, state) = check().await?;
        if let Some(v) = done {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(Error::backend(format!("{what}: still {state} after {}s", timeout.as_secs())));
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_checked_for_shape() {
        assert!(check_region("us-east-2").is_ok());
        assert!(check_region("ap-southeast-1").is_ok());
        assert!(check_region("us-gov-west-1").is_ok());
        assert!(check_region("us-east").is_err());
        assert!(check_region("moon-base-x").is_err());
        assert!(check_region("US-EAST-2").is_err());
    }
}
