//! A fluent runner for the real binary, and read-only views of the Docker engine.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder, ListImagesOptionsBuilder};
use futures_util::StreamExt;
use serde_json::Value;

/// The base image for TD4 builds in tests: made locally by testenv/up.sh (no registry here).
pub fn base_image() -> String {
    std::env::var("LABCTL_TEST_BASE_IMAGE").unwrap_or_else(|_| "labctl-test/node:20-bookworm".into())
}

/// A plain Debian image made locally by testenv/up.sh (a fresh "machine" for scripts).
pub fn debian_image() -> String {
    std::env::var("LABCTL_TEST_DEBIAN_IMAGE").unwrap_or_else(|_| "labctl-test/debian:bookworm".into())
}

/// One isolated user of labctl for one lab: own owner id, state dir (and host port for TD4).
pub struct Student {
    pub lab: &'static str,
    pub owner: String,
    pub port: u16,
    pub state: tempfile::TempDir,
    pub labs_dir: Option<PathBuf>,
    /// Options every run of this student gets (profile, params).
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Student {
    fn new_for(lab: &'static str, tag: &str) -> Student {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        Student {
            lab,
            owner: format!("t{}-{tag}-{n}", std::process::id() % 100000),
            port: free_port(),
            state: tempfile::tempdir().unwrap(),
            labs_dir: None,
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// A TD4 user: own port, the local base image.
    pub fn new(tag: &str) -> Student {
        let mut s = Student::new_for("td4", tag);
        s.args = vec![
            "--param".into(),
            format!("port={}", s.port),
            "--param".into(),
            format!("base_image={}", base_image()),
        ];
        s
    }

    /// A TD1 user against LocalStack.
    pub fn td1(tag: &str) -> Student {
        let mut s = Student::new_for("td1", tag);
        s.args = vec!["--profile".into(), "localstack".into()];
        s
    }

    /// A TD6 user on the local test cluster (testenv/k8s.sh), building from the local base image.
    /// On kind (the project's GitHub workflow), images are loaded into the nodes: a profile
    /// naming the cluster, from LABCTL_TEST_KIND_CLUSTER.
    pub fn td6(tag: &str) -> Student {
        match std::env::var("LABCTL_TEST_KIND_CLUSTER") {
            Ok(cluster) => Student::td6_kind(tag, &cluster),
            Err(_) => Student::td6_local(tag),
        }
    }

    fn td6_local(tag: &str) -> Student {
        let mut s = Student::new_for("td6", tag);
        s.args = vec!["--param".into(), format!("base_image={}", base_image())];
        s.envs = vec![("KUBECONFIG".into(), kubeconfig())];
        s
    }

    /// A TD6 user whose profile names kind cluster `cluster`: labctl loads the images it
    /// builds into that cluster's node containers before applying.
    pub fn td6_kind(tag: &str, cluster: &str) -> Student {
        let mut s = Student::td6_local(tag);
        let config = s.state.path().join("kind-config.yaml");
        std::fs::write(&config, format!("profiles:\n  kind:\n    kube: {{ kind_cluster: {cluster} }}\n")).unwrap();
        s.args.extend(["--config".into(), config.display().to_string(), "--profile".into(), "kind".into()]);
        s
    }

    /// `labctl` with this student's owner, state dir and options.
    pub fn labctl(&self) -> Labctl {
        let mut l = Labctl::new().args(["--owner", &self.owner, "--state-dir"]).arg(self.state.path()).args(&self.args);
        for (k, v) in &self.envs {
            l = l.env(k, v);
        }
        if let Some(dir) = &self.labs_dir {
            l = l.arg("--labs-dir").arg(dir);
        }
        l
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Student {
    /// Whatever a failed test left behind is removed (by label, like `down --sweep`).
    fn drop(&mut self) {
        let _ = self.labctl().args([self.lab, "down", "--sweep", "--yes"]).output();
    }
}

/// The checkout under test. Read when the tests run (cargo sets it), not baked in when they
/// are compiled: CI builds into a target dir shared with other checkouts.
pub fn repo() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("run the tests with cargo test"))
}

/// The test cluster's kubeconfig (written by testenv/k8s.sh).
pub fn kubeconfig() -> String {
    std::env::var("LABCTL_TEST_KUBECONFIG").unwrap_or_else(|_| "/var/lib/labctl-k8s/kubeconfig".into())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Labctl {
    cmd: Command,
}

#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Labctl {
    pub fn new() -> Labctl {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_labctl"));
        // Nothing from the developer's environment leaks in.
        for (k, _) in std::env::vars() {
            if k.starts_with("LABCTL_") && k != "LABCTL_TEST_BASE_IMAGE" {
                cmd.env_remove(k);
            }
        }
        cmd.env("XDG_CONFIG_HOME", "/nonexistent-labctl-test-config").stdin(Stdio::null());
        Labctl { cmd }
    }

    pub fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.arg(a);
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(mut self, a: I) -> Self {
        self.cmd.args(a);
        self
    }

    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.env(k, v);
        self
    }

    pub fn output(mut self) -> std::io::Result<Output> {
        self.cmd.output()
    }

    pub fn run(mut self) -> Run {
        let out = self.cmd.output().expect("labctl runs");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn spawn(mut self) -> Child {
        self.cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("labctl starts")
    }
}

impl Run {
    #[track_caller]
    pub fn code(self, want: i32) -> Run {
        assert_eq!(self.code, want, "exit code\n--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr);
        self
    }

    #[track_caller]
    pub fn success(self) -> Run {
        self.code(0)
    }

    #[track_caller]
    pub fn stdout_has(self, needle: &str) -> Run {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    pub fn stderr_has(self, needle: &str) -> Run {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Every stdout line as JSON (panics on a line that is not), the last one a summary.
    #[track_caller]
    pub fn events(&self) -> Vec<Value> {
        let events: Vec<Value> = self
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}\n{}", self.stderr)))
            .collect();
        let last = events.last().expect("some events");
        assert_eq!(last["event"], "summary", "the last event is the summary: {last}");
        events
    }

    #[track_caller]
    pub fn summary(&self) -> Value {
        self.events().pop().unwrap()
    }
}

/// Reads `child`'s JSON stdout until `pred` matches an event, then kills it with SIGKILL.
pub fn kill_when(mut child: Child, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let v: Value = serde_json::from_str(&line).unwrap();
            let hit = pred(&v);
            seen.push(v);
            if hit {
                // SIGKILL: no cleanup code of labctl runs.
                child.kill().unwrap();
                child.wait().unwrap();
                return seen;
            }
        }
    }
    let _ = child.kill();
    panic!("the awaited event never came; saw {seen:#?}");
}

/// Polls until `cond` holds (or panics after `timeout`), then kills `child` with SIGKILL.
pub fn kill_once(mut child: Child, timeout: Duration, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "labctl ended before {what}\n--- stdout\n{}\n--- stderr\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(child.try_wait().unwrap().is_none(), "labctl ended before it could be killed after {what}");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// HTTP GET on loopback: (status, body).
pub fn http_get(url: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {} HTTP/1.0\r\nHost: {host}\r\n\r\n", if path.is_empty() { "/" } else { path }).ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    Some((head.split_whitespace().nth(1)?.parse().ok()?, body.to_string()))
}

// ---- the Docker engine's own view ----------------------------------------------------------

fn docker<T>(f: impl AsyncFnOnce(&Docker) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let d =
            Docker::connect_with_defaults().unwrap().negotiate_version().await.expect("the test Docker engine answers");
        f(&d).await
    })
}

fn owner_filter(owner: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![format!("labctl.owner={owner}")])])
}

/// (name, state) of every container labelled with this owner, running or not.
pub fn containers_of(owner: &str) -> Vec<(String, String)> {
    docker(async |d| {
        let options = ListContainersOptionsBuilder::default().all(true).filters(&owner_filter(owner)).build();
        d.list_containers(Some(options))
            .await
            .unwrap()
            .into_iter()
            .map(|c| {
                let name = c.names.unwrap_or_default().join(",").trim_start_matches('/').to_string();
                (name, c.state.map(|s| s.to_string()).unwrap_or_default())
            })
            .collect()
    })
}

/// Ids of every (top-level) image labelled with this owner.
pub fn images_of(owner: &str) -> Vec<String> {
    docker(async |d| {
        let options = ListImagesOptionsBuilder::default().filters(&owner_filter(owner)).build();
        d.list_images(Some(options)).await.unwrap().into_iter().map(|i| i.id).collect()
    })
}

/// Engine events about this owner's containers and images between two Unix times.
pub fn events_of(owner: &str, since: String, until: String) -> Vec<String> {
    docker(async |d| {
        let options = EventsOptionsBuilder::default().since(&since).until(&until).filters(&owner_filter(owner)).build();
        let mut stream = d.events(Some(options));
        let mut out = Vec::new();
        while let Some(Ok(e)) = stream.next().await {
            out.push(format!("{:?} {}", e.typ, e.action.unwrap_or_default()));
        }
        out
    })
}

pub fn stop_container(name: &str) {
    docker(async |d| d.stop_container(name, None::<bollard::query_parameters::StopContainerOptions>).await.unwrap());
}

/// Now, as the engine's `since`/`until` filters take it: `seconds.nanoseconds`.
pub fn unix_now() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// A labs dir with a copy of a built-in spec, edited.
pub fn custom_spec(student: &mut Student, lab: &str, edit: impl Fn(&str) -> String) -> PathBuf {
    let labs = student.state.path().join("custom-labs");
    std::fs::create_dir_all(&labs).unwrap();
    let spec = std::fs::read_to_string(repo().join(format!("labs/{lab}.yaml"))).unwrap();
    std::fs::write(labs.join(format!("{lab}.yaml")), edit(&spec)).unwrap();
    student.labs_dir = Some(labs.clone());
    labs
}

/// A copy of the sample app and a labs dir whose td4.yaml builds it: for tests that need to
/// change the Dockerfile or the spec without touching the built-in lab.
pub fn custom_td4(
    student: &mut Student,
    dockerfile_edit: impl Fn(&str) -> String,
    spec_edit: impl Fn(&str) -> String,
) -> PathBuf {
    let root = student.state.path().join("custom");
    let app = root.join("app");
    copy_dir(&repo().join("apps/sample-app"), &app);
    let dockerfile = std::fs::read_to_string(app.join("Dockerfile")).unwrap();
    std::fs::write(app.join("Dockerfile"), dockerfile_edit(&dockerfile)).unwrap();
    let labs = root.join("labs");
    std::fs::create_dir_all(&labs).unwrap();
    let spec = std::fs::read_to_string(repo().join("labs/td4.yaml")).unwrap();
    let spec = spec.replace("context: ../apps/sample-app", "context: ../app");
    std::fs::write(labs.join("td4.yaml"), spec_edit(&spec)).unwrap();
    student.labs_dir = Some(labs.clone());
    labs
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() != "node_modules" {
                copy_dir(&entry.path(), &target);
            }
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
