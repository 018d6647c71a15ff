//! The Kubernetes backend: a lazily built kube-rs client from the kubeconfig (`KUBECONFIG`,
//! the profile's `kube.context` like `kubectl --context`), and API discovery for applying any
//! manifest as a dynamic object.

use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};
use kube::{Client, Config};
use tokio::sync::OnceCell;

use crate::config::KubeSettings;
use crate::error::{Error, Result};
use crate::step::Diagnosis;

pub struct KubeBackend {
    settings: KubeSettings,
    client: OnceCell<(Client, String)>,
    discovery: OnceCell<Discovery>,
}

const START_HINT: &str = "point KUBECONFIG (or the profile's `kube.kubeconfig` / `kube.context`) at a running cluster; \
in a labctl checkout `testenv/k8s.sh up` starts a local one (KUBECONFIG=/var/lib/labctl-k8s/kubeconfig), or `kind create cluster`";

impl KubeBackend {
    pub fn new(settings: KubeSettings) -> Self {
        KubeBackend { settings, client: OnceCell::new(), discovery: OnceCell::new() }
    }

    pub fn kind_cluster(&self) -> Option<&str> {
        self.settings.kind_cluster.as_deref()
    }

    fn unreachable(&self, server: &str, message: String) -> Error {
        let backend = if server.is_empty() {
            "the Kubernetes API".to_string()
        } else {
            format!("the Kubernetes API at {server}")
        };
        Error::Unreachable { backend, message, fix: START_HINT.into() }
    }

    /// The client and the API server's address, built and checked (a version call) on first use.
    pub async fn client(&self) -> Result<(&Client, &str)> {
        let (client, server) = self
            .client
            .get_or_try_init(|| async {
                let options = KubeConfigOptions { context: self.settings.context.clone(), ..Default::default() };
                let config = match &self.settings.kubeconfig {
                    Some(path) => {
                        let kubeconfig = Kubeconfig::read_from(path)
                            .map_err(|e| self.unreachable("", format!("reading kubeconfig {}: {e}", path.display())))?;
                        Config::from_custom_kubeconfig(kubeconfig, &options).await
                    }
                    None => Config::from_kubeconfig(&options).await,
                }
                .map_err(|e| self.unreachable("", format!("no usable kubeconfig: {e}")))?;
                let server = config.cluster_url.to_string();
                let mut config = config;
                config.connect_timeout = Some(Duration::from_secs(5));
                let client = Client::try_from(config).map_err(|e| self.unreachable(&server, e.to_string()))?;
                tokio::time::timeout(Duration::from_secs(15), client.apiserver_version())
                    .await
                    .map_err(|_| self.unreachable(&server, "no answer within 15s".into()))?
                    .map_err(|e| self.unreachable(&server, e.to_string()))?;
                Ok::<_, Error>((client, server))
            })
            .await?;
        Ok((client, server.as_str()))
    }

    /// What the server serves (group, version, kind → resource), discovered once per run.
    /// `Discovery::run`, not the aggregated variant: API servers before 1.26 lack it.
    pub async fn resolve(&self, api_version: &str, kind: &str) -> Result<(ApiResource, bool)> {
        let (client, _) = self.client().await?;
        let discovery = self
            .discovery
            .get_or_try_init(|| async {
                Discovery::new(client.clone()).run().await.map_err(|e| Error::backend(format!("API discovery: {e}")))
            })
            .await?;
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
        let (resource, caps): (ApiResource, ApiCapabilities) =
            discovery.resolve_gvk(&gvk).ok_or_else(|| Error::Backend {
                message: format!("the cluster does not serve {kind} in {api_version}"),
                detail: None,
                hint: Some("check `apiVersion`/`kind` in the manifest against `kubectl api-resources`".into()),
            })?;
        Ok((resource, caps.scope == Scope::Namespaced))
    }

    pub async fn diagnose(&self) -> Diagnosis {
        let name = "kubernetes api".to_string();
        match self.client().await {
            Ok((client, server)) => {
                let version = client.apiserver_version().await.map(|v| v.git_version).unwrap_or_default();
                Diagnosis { name, ok: true, detail: format!("{server} ({version})"), fix: None }
            }
            Err(e) => Diagnosis { name, ok: false, detail: e.to_string(), fix: e.hint() },
        }
    }
}

/// A kube-rs error as a labctl error; a server-side-apply conflict says how to take ownership.
pub fn api_error(doing: &str, e: kube::Error) -> Error {
    match &e {
        kube::Error::Api(status) if status.code == 409 && status.reason == "Conflict" => Error::Backend {
            message: format!("{doing}: {}", status.message),
            detail: None,
            hint: Some(
                "another field manager owns these fields (e.g. `kubectl scale`/`edit`): `labctl <lab> up --force-conflicts` \
                 takes them back"
                    .into(),
            ),
        },
        kube::Error::Api(status) => Error::backend(format!("{doing}: {} ({})", status.message, status.reason)),
        other => Error::backend(format!("{doing}: {other}")),
    }
}
