//! The Kubernetes backend: a lazily built kube-rs client from the kubeconfig (`KUBECONFIG`,
//! the profile's `kube.context` like `kubectl --context`), and API discovery for applying any
//! manifest as a dynamic object.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersion;
use kube::discovery::{ApiGroup, ApiResource, Scope, pinned_group};
use kube::{Client, Config};
use tokio::sync::{Mutex, OnceCell};

use crate::config::KubeSettings;
use crate::error::{Error, Result};
use crate::step::Diagnosis;

pub struct KubeBackend {
    settings: KubeSettings,
    client: OnceCell<(Client, String)>,
    /// What each group version serves, asked once per run and only for the group versions a
    /// lab uses (a full discovery asks every group the server has: ~25 requests on 1.20).
    discovery: Mutex<HashMap<String, Arc<OnceCell<Option<ApiGroup>>>>>,
}

const START_HINT: &str = "point KUBECONFIG (or the profile's `kube.kubeconfig` / `kube.context`) at a running cluster; \
in a labctl checkout `testenv/k8s.sh up` starts a local one (KUBECONFIG=/var/lib/labctl-k8s/kubeconfig), or `kind create cluster`";

impl KubeBackend {
    pub fn new(settings: KubeSettings) -> Self {
        KubeBackend { settings, client: OnceCell::new(), discovery: Mutex::default() }
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
                    None => {
                        let env = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty());
                        let home = std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".kube/config"));
                        if env.is_none() && !home.as_ref().is_some_and(|h| h.exists()) {
                            return Err(self.unreachable(
                                "",
                                "no kubeconfig: KUBECONFIG is not set and ~/.kube/config does not exist".into(),
                            ));
                        }
                        Config::from_kubeconfig(&options).await
                    }
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

    /// The resource behind (apiVersion, kind) and whether it is namespaced. Each group version
    /// is discovered once per run (its resource list, as `kubectl` does per group version);
    /// concurrent callers share the one request.
    pub async fn resolve(&self, api_version: &str, kind: &str) -> Result<(ApiResource, bool)> {
        let (client, _) = self.client().await?;
        let cell = self.discovery.lock().await.entry(api_version.to_string()).or_default().clone();
        let group = cell
            .get_or_try_init(|| async {
                let gv: GroupVersion = api_version
                    .parse()
                    .map_err(|e| Error::backend(format!("apiVersion {api_version:?} is not group/version: {e}")))?;
                match pinned_group(client, &gv).await {
                    Ok(group) => Ok(Some(group)),
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
                    Err(e) => Err(Error::backend(format!("API discovery of {api_version}: {e}"))),
                }
            })
            .await?;
        let (_, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        group
            .as_ref()
            .and_then(|g| g.versioned_resources(version).into_iter().find(|(r, _)| r.kind == kind))
            .map(|(resource, caps)| (resource, caps.scope == Scope::Namespaced))
            .ok_or_else(|| Error::Backend {
                message: format!("the cluster does not serve {kind} in {api_version}"),
                detail: None,
                hint: Some("check `apiVersion`/`kind` in the manifest against `kubectl api-resources`".into()),
            })
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
