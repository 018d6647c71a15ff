//! TD6 end to end on the real local cluster (testenv/k8s.sh): real pods on the Docker engine.

use std::time::{Duration, Instant};

use crate::k8s::*;
use crate::support::*;

const DEPLOYMENT: &str = "sample-app-deployment";

fn ready_pods(ns: &str) -> Vec<(String, String, bool, String)> {
    pods(ns).into_iter().filter(|p| p.1 == "Running" && p.2).collect()
}

#[test]
fn up_rolls_out_updates_detects_drift_and_down_removes_everything() {
    let s = Student::td6("life");
    let ns = format!("td6-{}", s.owner);

    s.labctl().args(["td6", "plan"]).run().code(2);
    assert!(!namespace_exists(&ns), "plan made nothing");

    let up = s.labctl().args(["--json", "td6", "up"]).run().success();
    assert_eq!(up.summary()["checks_failed"].as_u64(), Some(0));
    let running = ready_pods(&ns);
    assert_eq!(running.len(), 3, "{:?}", pods(&ns));
    // Through the cluster, by the test itself: the Service's NodePort on 127.0.0.1.
    let port = node_port(&ns, "sample-app-loadbalancer");
    assert_eq!(http_get(&format!("http://127.0.0.1:{port}/")), Some((200, "Hello, World!".into())));

    let again = s.labctl().args(["--json", "td6", "up"]).run().success();
    assert_eq!(again.summary()["changed"].as_u64(), Some(0), "{}", again.stdout);

    // A new tag: a new image and a real rolling update, waited for.
    s.labctl().args(["-q", "-p", "tag=v7", "td6", "up"]).run().success();
    let after = ready_pods(&ns);
    assert_eq!(after.len(), 3, "{:?}", pods(&ns));
    assert!(after.iter().all(|p| p.3.ends_with(":v7")), "every ready pod runs v7 when up returns: {after:?}");
    assert!(pods(&ns).iter().all(|p| p.3.ends_with(":v7")), "no old pod left but those terminating");
    // A changed replica count.
    s.labctl().args(["-q", "-p", "tag=v7", "-p", "replicas=2", "td6", "up"]).run().success();
    assert_eq!(replicas(&ns, DEPLOYMENT), (2, 2));

    // `kubectl scale` behind labctl's back: drift in status, put back by up.
    let td6 = |extra: &[&str]| {
        let mut args = vec!["-p", "tag=v7", "-p", "replicas=2", "td6"];
        args.extend_from_slice(extra);
        s.labctl().args(args)
    };
    scale(&ns, DEPLOYMENT, 4);
    td6(&["status", "--exit-code"]).run().code(2).stdout_has("drift");
    td6(&["up"]).run().success();
    assert_eq!(replicas(&ns, DEPLOYMENT), (2, 2));
    // Another field manager takes spec.replicas with server-side apply: a conflict that plain
    // `up` reports, and `up --force-conflicts` resolves.
    apply_replicas_as("someone-else", &ns, DEPLOYMENT, 4);
    td6(&["status", "--exit-code"]).run().code(2).stdout_has("another manager");
    td6(&["up"]).run().code(1).stderr_has("--force-conflicts");
    td6(&["-q", "up", "--force-conflicts"]).run().success();
    assert_eq!(replicas(&ns, DEPLOYMENT), (2, 2));
    td6(&["status", "--exit-code"]).run().success();

    s.labctl().args(["td6", "down"]).run().success();
    assert!(objects_of(&s.owner).is_empty(), "{:?}", objects_of(&s.owner));
    assert!(!namespace_exists(&ns), "labctl made the namespace, so it removed it");
    assert!(pods(&ns).is_empty());
    let again = s.labctl().args(["--json", "td6", "down"]).run().success();
    assert_eq!(again.summary()["changed"].as_u64(), Some(0));
}

#[test]
fn a_missing_image_fails_with_the_reason_and_down_still_cleans() {
    let mut s = Student::td6("noimage");
    custom_spec(&mut s, "td6", |spec| {
        spec.replace("image: \"{{ steps.image.tag }}\"", "image: \"labctl/nobody/missing:v0\"")
    });
    let started = Instant::now();
    s.labctl().args(["-p", "timeout=60", "td6", "up"]).run().code(1).stderr_has("ErrImageNeverPull");
    assert!(started.elapsed() < Duration::from_secs(120), "failed within its timeout");
    s.labctl().args(["-q", "td6", "down"]).run().success();
    assert!(objects_of(&s.owner).is_empty());
}

#[test]
fn two_owners_two_namespaces() {
    let alice = Student::td6("alice");
    let bob = Student::td6("bob");
    alice.labctl().args(["-q", "-p", "replicas=1", "td6", "up"]).run().success();
    bob.labctl().args(["-q", "-p", "replicas=1", "td6", "up"]).run().success();
    alice.labctl().args(["-q", "td6", "down"]).run().success();
    assert!(objects_of(&alice.owner).is_empty());
    assert_eq!(ready_pods(&format!("td6-{}", bob.owner)).len(), 1);
    bob.labctl().args(["-p", "replicas=1", "td6", "verify"]).run().success();
}

#[test]
fn kill_during_the_rollout_wait_then_up_converges() {
    let s = Student::td6("kill");
    let ns = format!("td6-{}", s.owner);
    let child = s.labctl().args(["td6", "up"]).spawn();
    kill_once(child, Duration::from_secs(300), "the deployment exists", || {
        objects_of(&s.owner).iter().any(|o| o.starts_with("deployment/"))
    });
    s.labctl().args(["-q", "td6", "up"]).run().success();
    assert_eq!(ready_pods(&ns).len(), 3);
    s.labctl().args(["-q", "td6", "down"]).run().success();
    assert!(objects_of(&s.owner).is_empty() && !namespace_exists(&ns));
}

/// A TD6 lab of the student's own whose manifests are read from the (empty) folder returned.
fn own_manifests(s: &mut Student) -> std::path::PathBuf {
    let labs = custom_spec(s, "td6", |spec| spec.replace("manifests: ../manifests/td6", "manifests: ../manifests"));
    let dir = labs.parent().unwrap().join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The final project's database is a StatefulSet: `up` waits for its ordered rollout too.
const STATEFUL_SET: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: sample-app-sts
spec:
  serviceName: sample-app-sts
  replicas: {{ replicas }}
  selector:
    matchLabels: { app: sample-app-sts }
  template:
    metadata:
      labels: { app: sample-app-sts }
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: app
          image: {{ image }}
          imagePullPolicy: Never
          ports: [{ containerPort: 8080, protocol: TCP }]
          readinessProbe:
            httpGet: { path: /, port: 8080 }
            periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: sample-app-sts
spec:
  clusterIP: None
  selector: { app: sample-app-sts }
  ports: [{ port: 80, targetPort: 8080, protocol: TCP }]
"#;

#[test]
fn a_stateful_set_is_waited_for_on_create_and_on_a_rolling_update() {
    let mut s = Student::td6("sts");
    let ns = format!("td6-{}", s.owner);
    let dir = own_manifests(&mut s);
    std::fs::write(dir.join("app.yaml"), STATEFUL_SET).unwrap();

    s.labctl().args(["-q", "-p", "replicas=2", "td6", "up"]).run().success();
    let ready = ready_pods(&ns);
    assert_eq!(ready.len(), 2, "both ordered pods ready when up returns: {:?}", pods(&ns));
    assert!(objects_of(&s.owner).contains(&"statefulset/sample-app-sts".to_string()));

    // A new image: the pods are replaced one by one, highest ordinal first; up returns after the last.
    s.labctl().args(["-q", "-p", "replicas=2", "-p", "tag=v7", "td6", "up"]).run().success();
    let after = ready_pods(&ns);
    assert_eq!(after.len(), 2, "{:?}", pods(&ns));
    assert!(after.iter().all(|p| p.3.ends_with(":v7")), "every pod runs v7 when up returns: {after:?}");
    s.labctl().args(["-p", "replicas=2", "-p", "tag=v7", "td6", "status"]).run().success().stdout_has("2/2 ready");

    s.labctl().args(["-q", "td6", "down"]).run().success();
    assert!(objects_of(&s.owner).is_empty(), "{:?}", objects_of(&s.owner));
    assert!(!namespace_exists(&ns));
}

/// A stand-in for a kind node: a container labelled as a node of `cluster` that runs this
/// machine's containerd (kind nodes are containers running containerd), removed on drop.
struct KindNode {
    name: String,
}

impl KindNode {
    fn start(cluster: &str) -> KindNode {
        let name = format!("labctl-test-node-{cluster}");
        let bin = |b: &str| {
            let host = format!("/usr/bin/{b}");
            assert!(std::path::Path::new(&host).exists(), "{host}: containerd comes with the Docker engine");
            format!("{host}:/usr/local/bin/{b}:ro")
        };
        let run = std::process::Command::new("docker")
            .args(["run", "-d", "--name", &name, "--label", &format!("io.x-k8s.kind.cluster={cluster}")])
            // containerd mounts its snapshots: the rights for that, and room that is not overlay.
            .args(["--cap-add", "SYS_ADMIN", "--security-opt", "apparmor=unconfined"])
            .args([
                "--security-opt",
                "seccomp=unconfined",
                "--tmpfs",
                "/var/lib/containerd",
                "--tmpfs",
                "/run/containerd",
            ])
            .args(["-v", &bin("containerd"), "-v", &bin("ctr"), &debian_image(), "containerd"])
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let node = KindNode { name };
        let deadline = Instant::now() + Duration::from_secs(30);
        while node.ctr(&["version"]).is_none() {
            assert!(Instant::now() < deadline, "containerd did not start in the node container");
            std::thread::sleep(Duration::from_millis(200));
        }
        node
    }

    /// `ctr` in the node; its stdout when it succeeds.
    fn ctr(&self, args: &[&str]) -> Option<String> {
        let out = std::process::Command::new("docker").args(["exec", &self.name, "ctr"]).args(args).output().unwrap();
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for KindNode {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker").args(["rm", "-f", "-v", &self.name]).output();
    }
}

#[test]
fn images_are_loaded_into_the_kind_nodes_containerd_before_the_apply() {
    if std::env::var("LABCTL_TEST_KIND_CLUSTER").is_ok() {
        // On a real kind cluster (the GitHub workflow) every TD6 test goes through the loading.
        return;
    }
    // Unique per run: a node container of an earlier, killed run may still be there.
    let cluster = format!("k{}-{}", std::process::id(), unix_now());
    let node = KindNode::start(&cluster);
    let s = Student::td6_kind("kindload", &cluster);
    let doctor = s.labctl().arg("doctor").run();
    assert!(
        doctor.stdout.contains(&format!("✓ kind nodes         cluster {cluster}: 1 node container(s)")),
        "{doctor:?}"
    );
    // The apply goes to the local cluster (its node shares the engine, so the pods start either way).
    s.labctl()
        .args(["-v", "-p", "replicas=1", "td6", "up"])
        .run()
        .success()
        .stdout_has(&format!("loading labctl/{}/sample-app:v6 into kind cluster {cluster}", s.owner));
    let images = node.ctr(&["--namespace=k8s.io", "images", "ls", "-q"]).unwrap();
    assert!(
        images.lines().any(|l| l == format!("docker.io/labctl/{}/sample-app:v6", s.owner)),
        "the image is in the node's containerd, where the kubelet looks: {images}"
    );
    s.labctl().args(["-q", "td6", "down"]).run().success();
    assert!(objects_of(&s.owner).is_empty());

    // A kind cluster with no node on this engine: a clear error, and no namespace left behind.
    let nowhere = Student::td6_kind("nokind", &format!("{cluster}-gone"));
    nowhere
        .labctl()
        .args(["-p", "replicas=1", "td6", "up"])
        .run()
        .code(1)
        .stderr_has(&format!("no kind cluster named `{cluster}-gone`"));
    assert!(!namespace_exists(&format!("td6-{}", nowhere.owner)));
    let doctor = nowhere.labctl().arg("doctor").run().code(1);
    assert!(doctor.stdout.contains("✗ kind nodes") && doctor.stdout.contains("kind get clusters"), "{doctor:?}");
    nowhere.labctl().args(["-q", "td6", "down"]).run().success();
    drop(node);
}

#[test]
fn a_bad_manifest_fails_before_anything_is_built_or_applied() {
    let mut s = Student::td6("badmanifest");
    let ns = format!("td6-{}", s.owner);
    let dir = own_manifests(&mut s);
    for f in ["deployment.yaml", "service.yaml"] {
        std::fs::copy(repo().join("manifests/td6").join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("widget.yaml"), "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n")
        .unwrap();
    s.labctl()
        .args(["td6", "up"])
        .run()
        .code(1)
        .stderr_has("widget.yaml document 1: the cluster does not serve Widget in example.com/v1")
        .stderr_has("kubectl api-resources");
    std::fs::write(dir.join("widget.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [oops\n").unwrap();
    s.labctl().args(["td6", "plan"]).run().code(1).stderr_has("widget.yaml document 1").stderr_has("line 4");
    assert!(images_of(&s.owner).is_empty(), "nothing was built");
    assert!(!namespace_exists(&ns) && objects_of(&s.owner).is_empty(), "nothing was applied");
}

#[test]
fn no_cluster_is_a_clear_error_and_nothing_is_built() {
    let s = Student::td6("nocluster");
    let home = tempfile::tempdir().unwrap();
    s.labctl()
        .env("KUBECONFIG", "")
        .env("HOME", home.path())
        .args(["td6", "up"])
        .run()
        .code(1)
        .stderr_has("KUBECONFIG is not set and ~/.kube/config does not exist")
        .stderr_has("testenv/k8s.sh up");
    // A kubeconfig whose server does not answer (nothing listens on port 1).
    let dead = home.path().join("dead.yaml");
    std::fs::write(
        &dead,
        "apiVersion: v1\nkind: Config\nclusters: [{name: d, cluster: {server: \"https://127.0.0.1:1\"}}]\n\
         contexts: [{name: d, context: {cluster: d, user: u}}]\ncurrent-context: d\nusers: [{name: u, user: {token: x}}]\n",
    )
    .unwrap();
    s.labctl()
        .env("KUBECONFIG", &dead)
        .args(["td6", "up"])
        .run()
        .code(1)
        .stderr_has("cannot reach the Kubernetes API at https://127.0.0.1:1/");
    assert!(images_of(&s.owner).is_empty(), "nothing was built");
}
