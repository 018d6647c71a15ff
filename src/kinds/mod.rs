//! Step kinds, one module per backend. `registry` is the only place that lists them.

use std::sync::Arc;

use crate::config::Profile;
use crate::step::Registry;

pub mod aws;
pub mod docker;
pub mod docker_container;
pub mod docker_image;
pub mod ec2_ami;
pub mod ec2_instance;
pub mod ec2_key_pair;
pub mod ec2_security_group;
pub mod k8s_apply;
pub mod kind_load;
pub mod kube;

/// Every step kind this binary knows, wired to the backends the profile names.
pub fn registry(profile: &Profile) -> Registry {
    let docker = Arc::new(docker::DockerBackend::new(profile.docker_host.clone()));
    let aws = Arc::new(aws::AwsBackend::new(profile.aws.clone()));
    Registry::default()
        .with(Arc::new(docker_image::DockerImage { docker: docker.clone() }))
        .with(Arc::new(docker_container::DockerContainer { docker: docker.clone() }))
        .with(Arc::new(ec2_ami::Ec2Ami { aws: aws.clone() }))
        .with(Arc::new(ec2_security_group::Ec2SecurityGroup { aws: aws.clone() }))
        .with(Arc::new(ec2_key_pair::Ec2KeyPair { aws: aws.clone() }))
        .with(Arc::new(ec2_instance::Ec2Instance { aws }))
        .with(Arc::new(k8s_apply::K8sApply { kube: Arc::new(kube::KubeBackend::new(profile.kube.clone())), docker }))
}

/// sha256 of the parts, hex — the `labctl.input-hash` a resource is labelled with.
pub fn input_hash(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())[..32].to_string()
}
