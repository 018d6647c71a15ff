//! The test cluster's own view (kube-rs, with the kubeconfig testenv/k8s.sh wrote).

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::support::kubeconfig;

pub fn kube<T>(f: impl AsyncFnOnce(Client) -> T) -> T {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let kc = Kubeconfig::read_from(kubeconfig()).expect("the test cluster's kubeconfig (testenv/k8s.sh up)");
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap();
        f(Client::try_from(config).unwrap()).await
    })
}

fn owner(owner: &str) -> ListParams {
    ListParams::default().labels(&format!("labctl.owner={owner}"))
}

/// Names of every object labelled with this owner (deployments, stateful sets, services, namespaces).
pub fn objects_of(o: &str) -> Vec<String> {
    kube(async |c| {
        let mut out = Vec::new();
        for d in Api::<Deployment>::all(c.clone()).list(&owner(o)).await.unwrap() {
            out.push(format!("deployment/{}", d.metadata.name.unwrap_or_default()));
        }
        for s in Api::<StatefulSet>::all(c.clone()).list(&owner(o)).await.unwrap() {
            out.push(format!("statefulset/{}", s.metadata.name.unwrap_or_default()));
        }
        for s in Api::<Service>::all(c.clone()).list(&owner(o)).await.unwrap() {
            out.push(format!("service/{}", s.metadata.name.unwrap_or_default()));
        }
        for n in Api::<Namespace>::all(c.clone()).list(&owner(o)).await.unwrap() {
            out.push(format!("namespace/{}", n.metadata.name.unwrap_or_default()));
        }
        out
    })
}

pub fn namespace_exists(ns: &str) -> bool {
    kube(async |c| Api::<Namespace>::all(c).get_opt(ns).await.unwrap().is_some())
}

/// (pod name, phase, ready, image) of the pods in a namespace that are not being deleted.
pub fn pods(ns: &str) -> Vec<(String, String, bool, String)> {
    kube(async |c| {
        Api::<Pod>::namespaced(c, ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| {
                let status = p.status.unwrap_or_default();
                let ready =
                    status.conditions.unwrap_or_default().iter().any(|c| c.type_ == "Ready" && c.status == "True");
                let image = p
                    .spec
                    .unwrap_or_default()
                    .containers
                    .first()
                    .map(|c| c.image.clone().unwrap_or_default())
                    .unwrap_or_default();
                (p.metadata.name.unwrap_or_default(), status.phase.unwrap_or_default(), ready, image)
            })
            .collect()
    })
}

pub fn node_port(ns: &str, service: &str) -> u16 {
    kube(async |c| {
        let svc = Api::<Service>::namespaced(c, ns).get(service).await.unwrap();
        svc.spec.unwrap().ports.unwrap()[0].node_port.unwrap() as u16
    })
}

/// What `kubectl scale` does: a change to the scale subresource by another field manager.
pub fn scale(ns: &str, deployment: &str, replicas: i32) {
    kube(async |c| {
        let patch = serde_json::json!({ "spec": { "replicas": replicas } });
        Api::<Deployment>::namespaced(c, ns)
            .patch_scale(deployment, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    })
}

/// What `kubectl apply --server-side --force-conflicts` by someone else does: another field
/// manager takes ownership of spec.replicas.
pub fn apply_replicas_as(manager: &str, ns: &str, deployment: &str, replicas: i32) {
    kube(async |c| {
        let patch = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": deployment }, "spec": { "replicas": replicas }
        });
        Api::<Deployment>::namespaced(c, ns)
            .patch(deployment, &PatchParams::apply(manager).force(), &Patch::Apply(&patch))
            .await
            .unwrap();
    })
}

pub fn replicas(ns: &str, deployment: &str) -> (i32, i32) {
    kube(async |c| {
        let d = Api::<Deployment>::namespaced(c, ns).get(deployment).await.unwrap();
        (d.spec.unwrap().replicas.unwrap_or(1), d.status.unwrap().ready_replicas.unwrap_or(0))
    })
}
