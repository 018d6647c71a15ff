//! TD1 end to end against a real LocalStack (EC2 emulated by moto). Assertions list EC2.

use std::time::{Duration, Instant};

use crate::aws::*;
use crate::support::*;

/// A student whose EC2 calls pass through a recording relay.
fn relayed(tag: &str) -> (Student, Relay) {
    let mut s = Student::td1(tag);
    let relay = Relay::start();
    let config = relay.config(s.state.path());
    s.args = vec!["--config".into(), config.display().to_string(), "--profile".into(), "relay".into()];
    (s, relay)
}

#[test]
fn plan_up_up_status_verify_down_down() {
    let (s, relay) = relayed("life");
    s.labctl().args(["td1", "plan"]).run().code(2).stdout_has("+ instance");
    assert!(mutating(&relay.actions()).is_empty(), "plan mutated: {:?}", relay.actions());
    assert!(instances_of(&s.owner).is_empty() && security_groups_of(&s.owner).is_empty());

    let up = s.labctl().args(["--json", "td1", "up"]).run().success();
    assert_eq!(up.summary()["checks_failed"].as_u64(), Some(0));
    let instances = live_instances_of(&s.owner);
    assert_eq!(instances.len(), 1);
    let groups = security_groups_of(&s.owner);
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].1, vec!["tcp 80 0.0.0.0/0".to_string()]);
    assert_eq!(key_pairs_of(&s.owner), vec![format!("sample-app-{}", s.owner)]);
    let script = user_data_of(&instances[0]);
    assert!(script.starts_with("#!/bin/bash") && script.contains("PORT=80\nMESSAGE=Hello, World!\n"), "{script}");
    assert!(!script.contains("{{"), "every placeholder is filled");
    // The private key: 0600, in the state dir, never in the output.
    let key = s.state.path().join(format!("localstack/{}/td1/sample-app-{}.pem", s.owner, s.owner));
    let key = if key.exists() {
        key
    } else {
        s.state.path().join(format!("relay/{}/td1/sample-app-{}.pem", s.owner, s.owner))
    };
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let material = std::fs::read_to_string(&key).unwrap();
    assert!(!material.trim().is_empty());
    assert!(!up.stdout.contains(material.lines().nth(1).unwrap_or("-----")), "the key never reaches the output");

    // A second up: no change, and not one mutating EC2 call on the wire.
    relay.clear();
    let again = s.labctl().args(["--json", "td1", "up"]).run().success();
    assert_eq!(again.summary()["changed"].as_u64(), Some(0));
    let actions = relay.actions();
    assert!(!actions.is_empty(), "the relay saw the read-only calls");
    assert!(mutating(&actions).is_empty(), "a no-op up mutated: {actions:?}");
    assert_eq!(live_instances_of(&s.owner), instances);

    s.labctl().args(["td1", "status", "--exit-code"]).run().success().stdout_has("running");
    s.labctl().args(["td1", "verify"]).run().success().stdout_has("round-trips exactly");

    // A rule deleted behind labctl's back is drift; up puts it back without touching the instance.
    revoke(&groups[0].0, 80, "0.0.0.0/0");
    s.labctl().args(["td1", "status", "--exit-code"]).run().code(2).stdout_has("missing");
    s.labctl().args(["td1", "verify"]).run().code(3);
    s.labctl().args(["td1", "up"]).run().success().stdout_has("updated");
    assert_eq!(security_groups_of(&s.owner)[0].1, vec!["tcp 80 0.0.0.0/0".to_string()]);
    assert_eq!(live_instances_of(&s.owner), instances, "the instance was kept");

    s.labctl().args(["td1", "down"]).run().success();
    assert!(live_instances_of(&s.owner).is_empty(), "{:?}", instances_of(&s.owner));
    assert!(security_groups_of(&s.owner).is_empty());
    assert!(key_pairs_of(&s.owner).is_empty());
    assert!(!key.exists(), "the private key file went with the key pair");
    relay.clear();
    let again = s.labctl().args(["--json", "td1", "down"]).run().success();
    assert_eq!(again.summary()["changed"].as_u64(), Some(0));
    assert!(mutating(&relay.actions()).is_empty(), "a second down mutated: {:?}", relay.actions());
}

#[test]
fn kill_right_after_run_instances_then_up_adopts() {
    let (s, relay) = relayed("kill");
    // RunInstances reaches the emulator, its answer never reaches labctl, which is killed.
    relay.hold_after("RunInstances");
    let child = s.labctl().args(["td1", "up"]).spawn();
    kill_once(child, Duration::from_secs(60), "RunInstances was sent", || relay.held());
    relay.release();
    // The emulator may still be finishing the call the killed run made.
    let deadline = Instant::now() + Duration::from_secs(10);
    while live_instances_of(&s.owner).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let first = live_instances_of(&s.owner);
    assert_eq!(first.len(), 1, "the killed run launched its instance");

    relay.clear();
    let up = s.labctl().args(["--json", "td1", "up"]).run().success();
    assert!(
        up.events().iter().any(|e| e["event"] == "recovered" && e["step"] == "instance"),
        "the journal's open intent: {}",
        up.stdout
    );
    assert!(!relay.actions().iter().any(|a| a == "RunInstances"), "adopted, not launched again");
    assert_eq!(live_instances_of(&s.owner), first, "no duplicate");

    s.labctl().args(["-q", "td1", "down"]).run().success();
    assert!(live_instances_of(&s.owner).is_empty() && security_groups_of(&s.owner).is_empty());
}

#[test]
fn two_owners_in_one_account() {
    let alice = Student::td1("alice");
    let bob = Student::td1("bob");
    alice.labctl().args(["-q", "td1", "up"]).run().success();
    bob.labctl().args(["-q", "td1", "up"]).run().success();
    let bobs = live_instances_of(&bob.owner);
    assert_eq!((live_instances_of(&alice.owner).len(), bobs.len()), (1, 1));

    alice.labctl().args(["-q", "td1", "down"]).run().success();
    assert!(live_instances_of(&alice.owner).is_empty() && security_groups_of(&alice.owner).is_empty());
    assert_eq!(live_instances_of(&bob.owner), bobs);
    assert_eq!(security_groups_of(&bob.owner).len(), 1);
    assert_eq!(key_pairs_of(&bob.owner).len(), 1);
    bob.labctl().args(["td1", "verify"]).run().success();
}

#[test]
fn bad_input_is_refused_before_anything_is_made() {
    let s = Student::td1("bad");
    // An AMI pattern that matches nothing: found in the read-only pass, nothing created.
    s.labctl()
        .args(["-p", "ami_name=no-such-image-*", "td1", "up"])
        .run()
        .code(1)
        .stderr_has("no AMI named `no-such-image-*` owned by `amazon` in region us-east-2");
    assert!(
        instances_of(&s.owner).is_empty()
            && security_groups_of(&s.owner).is_empty()
            && key_pairs_of(&s.owner).is_empty()
    );

    Labctl::new().args(["--profile", "nowhere", "td1", "up"]).run().code(1).stderr_has("unknown profile `nowhere`");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    let dead = free_port();
    std::fs::write(
        &config,
        format!(
            "profiles:\n  stopped:\n    aws: {{ endpoint_url: \"http://127.0.0.1:{dead}\", region: us-east-2, emulator: true }}\n  \
             badregion:\n    aws: {{ endpoint_url: \"http://127.0.0.1:4566\", region: moon-base-x, emulator: true }}\n"
        ),
    )
    .unwrap();
    let run = |profile: &str| {
        Labctl::new()
            .arg("--config")
            .arg(&config)
            .args(["--profile", profile, "--owner", &s.owner, "--state-dir"])
            .arg(s.state.path())
    };
    run("stopped")
        .args(["td1", "up"])
        .run()
        .code(1)
        .stderr_has(&format!("cannot reach the AWS API at http://127.0.0.1:{dead}"))
        .stderr_has("localstack/run.sh start");
    run("badregion").args(["td1", "up"]).run().code(1).stderr_has("`moon-base-x` is not an AWS region");
    assert!(instances_of(&s.owner).is_empty() && security_groups_of(&s.owner).is_empty());
}

/// The user-data script itself, for real: fetched back from EC2 exactly as an instance would
/// get it, run as root in a fresh Debian container the way cloud-init runs it, and probed on a
/// 127.0.0.1-published port.
#[test]
fn the_user_data_script_serves_hello_world_in_a_fresh_debian() {
    let s = Student::td1("userdata");
    s.labctl().args(["-q", "td1", "up"]).run().success();
    let instance = live_instances_of(&s.owner).pop().unwrap();
    let script = user_data_of(&instance);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("user-data"), &script).unwrap();

    let port = free_port();
    let name = format!("labctl-userdata-{}", s.owner);
    let image = debian_image();
    let started = std::process::Command::new("docker")
        .args(["run", "-d", "--rm", "--name", &name, "-p", &format!("127.0.0.1:{port}:80"), "-v"])
        .arg(format!("{}:/var/lib/cloud/instance:ro", dir.path().display()))
        .args([
            &image,
            "bash",
            "-c",
            "bash /var/lib/cloud/instance/user-data > /var/log/cloud-init-output.log 2>&1; sleep infinity",
        ])
        .output()
        .unwrap();
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut answer = None;
    while Instant::now() < deadline {
        answer = http_get(&format!("http://127.0.0.1:{port}/"));
        if answer.as_ref().is_some_and(|(_, body)| body.contains("Hello, World!")) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let log = std::process::Command::new("docker")
        .args(["exec", &name, "cat", "/var/log/cloud-init-output.log"])
        .output()
        .unwrap();
    let unit = std::process::Command::new("docker")
        .args(["exec", &name, "cat", "/etc/systemd/system/sample-app.service"])
        .output()
        .unwrap();
    let _ = std::process::Command::new("docker").args(["rm", "-f", &name]).output();
    assert_eq!(
        answer.map(|a| (a.0, a.1.trim().to_string())),
        Some((200, "Hello, World!".to_string())),
        "{}",
        String::from_utf8_lossy(&log.stdout)
    );
    assert!(
        String::from_utf8_lossy(&unit.stdout).contains("WantedBy=multi-user.target"),
        "the app is a systemd service"
    );
}
