//! Getting locally built images into a kind cluster, as `kind load docker-image` does: the
//! image is exported from the Docker engine and imported into containerd (namespace `k8s.io`)
//! inside every node container of the cluster, so pods with `imagePullPolicy: Never` find it.
//! On clusters whose node uses the same Docker engine (the local test cluster, minikube's
//! docker driver) nothing is needed and this is not used.

use std::collections::HashMap;

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::ContainerSummary;
use bollard::query_parameters::ListContainersOptionsBuilder;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::docker::{DockerBackend, api_error};
use crate::error::{Error, Result};
use crate::step::{Diagnosis, StepCtx};

/// Every `image:` of a container in a manifest (pods, pod templates).
pub fn images_in(body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    collect(body, &mut out);
    out.sort();
    out.dedup();
    out
}

fn collect(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "containers" || k == "initContainers" {
                    for c in x.as_array().into_iter().flatten() {
                        if let Some(image) = c.get("image").and_then(Value::as_str) {
                            out.push(image.to_string());
                        }
                    }
                } else {
                    collect(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
        _ => {}
    }
}

/// The running node containers of kind cluster `cluster` on this engine.
async fn nodes(docker: &DockerBackend, cluster: &str) -> Result<Vec<ContainerSummary>> {
    let client = docker.client().await?;
    let filters = HashMap::from([("label".to_string(), vec![format!("io.x-k8s.kind.cluster={cluster}")])]);
    client
        .list_containers(Some(ListContainersOptionsBuilder::default().filters(&filters).build()))
        .await
        .map_err(|e| api_error("listing kind nodes", e))
}

const NO_CLUSTER_FIX: &str = "check `kind get clusters`, or the profile's `kube.kind_cluster`";

/// For `doctor`: does the profile's kind cluster have nodes here to load images into?
pub async fn diagnose(docker: &DockerBackend, cluster: &str) -> Diagnosis {
    let name = "kind nodes".to_string();
    match nodes(docker, cluster).await {
        Ok(n) if !n.is_empty() => Diagnosis {
            name,
            ok: true,
            detail: format!("cluster {cluster}: {} node container(s) to load images into", n.len()),
            fix: None,
        },
        Ok(_) => Diagnosis {
            name,
            ok: false,
            detail: format!("no kind cluster named `{cluster}` runs on this Docker engine"),
            fix: Some(NO_CLUSTER_FIX.into()),
        },
        Err(e) => Diagnosis { name, ok: false, detail: e.to_string(), fix: e.hint() },
    }
}

/// Loads each image that exists in the local engine into every node of kind cluster `cluster`.
pub async fn load(docker: &DockerBackend, ctx: &StepCtx<'_>, cluster: &str, images: &[String]) -> Result<()> {
    let client = docker.client().await?;
    let nodes = nodes(docker, cluster).await?;
    if nodes.is_empty() {
        return Err(Error::usage(
            format!("no kind cluster named `{cluster}` runs on this Docker engine"),
            NO_CLUSTER_FIX,
        ));
    }
    for image in images {
        if client.inspect_image(image).await.is_err() {
            continue; // not built here: the cluster pulls it (or reports why it cannot)
        }
        ctx.log(&format!("loading {image} into kind cluster {cluster}"));
        let mut tar = Vec::new();
        let mut export = client.export_image(image);
        while let Some(chunk) = export.next().await {
            tar.extend_from_slice(&chunk.map_err(|e| api_error(&format!("exporting {image}"), e))?);
        }
        for node in &nodes {
            let id = node.id.clone().unwrap_or_default();
            let exec = client
                .create_exec(
                    &id,
                    CreateExecOptions {
                        cmd: Some(vec![
                            "ctr",
                            "--namespace=k8s.io",
                            "images",
                            "import",
                            "--digests",
                            "--snapshotter=overlayfs",
                            "-",
                        ]),
                        attach_stdin: Some(true),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| api_error("starting the import in a kind node", e))?;
            let mut said = String::new();
            if let StartExecResults::Attached { mut output, mut input } = client
                .start_exec(&exec.id, None)
                .await
                .map_err(|e| api_error("starting the import in a kind node", e))?
            {
                input.write_all(&tar).await.map_err(|e| Error::io("sending the image to a kind node", e))?;
                input.shutdown().await.map_err(|e| Error::io("sending the image to a kind node", e))?;
                drop(input);
                while let Some(Ok(line)) = output.next().await {
                    said.push_str(&line.to_string());
                }
            }
            let code =
                client.inspect_exec(&exec.id).await.map_err(|e| api_error("reading the import's result", e))?.exit_code;
            if code != Some(0) {
                return Err(Error::Backend {
                    message: format!("importing {image} into kind node {id:.12} failed (exit {code:?})"),
                    detail: Some(said),
                    hint: Some("the same as `kind load docker-image` does: check that the node runs containerd".into()),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_container_images_in_pod_templates() {
        let body = serde_json::json!({
            "kind": "Deployment",
            "spec": { "template": { "spec": {
                "initContainers": [{ "name": "i", "image": "busybox:1" }],
                "containers": [{ "name": "a", "image": "labctl/alice/sample-app:v6" }, { "name": "b", "image": "busybox:1" }]
            } } }
        });
        assert_eq!(images_in(&body), ["busybox:1", "labctl/alice/sample-app:v6"]);
    }
}
