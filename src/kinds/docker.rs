//! The Docker backend shared by the docker-* step kinds: one lazily opened, version-negotiated
//! bollard client, and the errors that tell a user how to get an engine running.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use tokio::sync::OnceCell;

use crate::error::{Error, Result};
use crate::step::{Diagnosis, Ownership};

pub struct DockerBackend {
    host: Option<String>,
    client: OnceCell<Docker>,
}

const START_HINT: &str = "start the engine (`sudo systemctl start docker`, or `sudo dockerd &`; in a labctl \
checkout `testenv/up.sh docker` installs and starts it), or point DOCKER_HOST / the profile's `docker_host` at a running engine";

impl DockerBackend {
    pub fn new(host: Option<String>) -> Self {
        DockerBackend { host, client: OnceCell::new() }
    }

    fn address(&self) -> String {
        self.host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
    }

    /// Connects on first use: ping, then negotiate the API version down to the engine's.
    pub async fn client(&self) -> Result<&Docker> {
        self.client
            .get_or_try_init(|| async {
                let address = self.address();
                let unreachable = |message: String| Error::Unreachable {
                    backend: format!("the Docker engine at {address}"),
                    message,
                    fix: START_HINT.into(),
                };
                let docker = Docker::connect_with_host(&address).map_err(|e| unreachable(e.to_string()))?;
                let docker = docker.with_timeout(Duration::from_secs(3600));
                tokio::time::timeout(Duration::from_secs(10), docker.ping())
                    .await
                    .map_err(|_| unreachable("no answer within 10s".into()))?
                    .map_err(|e| unreachable(e.to_string()))?;
                docker.negotiate_version().await.map_err(|e| unreachable(e.to_string()))
            })
            .await
    }

    pub async fn diagnose(&self) -> Diagnosis {
        match self.client().await {
            Ok(docker) => match docker.version().await {
                Ok(v) => Diagnosis {
                    name: "docker engine".into(),
                    ok: true,
                    detail: format!(
                        "{} (API {}) at {}",
                        v.version.unwrap_or_default(),
                        v.api_version.unwrap_or_default(),
                        self.address()
                    ),
                    fix: None,
                },
                Err(e) => Diagnosis {
                    name: "docker engine".into(),
                    ok: false,
                    detail: e.to_string(),
                    fix: Some(START_HINT.into()),
                },
            },
            Err(e) => Diagnosis { name: "docker engine".into(), ok: false, detail: e.to_string(), fix: e.hint() },
        }
    }
}

/// `label=k=v` filters selecting this owner's resources (of one step, or of the whole lab).
pub fn label_filters(ownership: &Ownership, step: Option<&str>) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), ownership.selector(step))])
}

/// A Docker API error as a labctl error, keeping the engine's own message.
pub fn api_error(doing: &str, e: bollard::errors::Error) -> Error {
    Error::backend(format!("{doing}: {}", engine_message(&e)))
}

pub fn engine_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

pub fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

pub fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}
