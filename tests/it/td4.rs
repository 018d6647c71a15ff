//! TD4 end to end against the real Docker engine.

use std::time::Duration;

use crate::support::*;

#[test]
fn plan_up_up_status_down_down() {
    let s = Student::new("life");

    // plan on a clean machine: lists what up will create, changes nothing.
    let plan = s.labctl().args(["--json", "td4", "plan"]).run().code(2);
    let planned: Vec<_> = plan.events().into_iter().filter(|e| e["event"] == "planned").collect();
    assert_eq!(planned.len(), 2);
    assert!(planned.iter().all(|e| e["action"] == "create"), "{planned:?}");
    assert!(containers_of(&s.owner).is_empty() && images_of(&s.owner).is_empty());

    // up: builds, runs, verifies.
    let up = s.labctl().args(["--json", "td4", "up"]).run().success();
    let summary = up.summary();
    assert_eq!((summary["changed"].as_u64(), summary["checks_failed"].as_u64()), (Some(2), Some(0)), "{summary}");
    assert_eq!(containers_of(&s.owner), vec![(format!("sample-app-{}", s.owner), "running".to_string())]);
    assert_eq!(images_of(&s.owner).len(), 1);
    assert_eq!(http_get(&s.url("/")), Some((200, "Hello, World!".into())));
    let (status, body) = http_get(&s.url("/name/%3Cscript%3E")).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("Hello, &lt;script&gt;!") && !body.contains("<script>"), "{body}");
    assert_eq!(http_get(&s.url("/add/abc/1")).map(|r| r.0), Some(400));

    // up again: 0 changes, and the engine saw no event at all for this owner.
    let since = unix_now();
    let again = s.labctl().args(["--json", "td4", "up"]).run().success();
    let until = unix_now();
    let summary = again.summary();
    assert_eq!((summary["changed"].as_u64(), summary["unchanged"].as_u64()), (Some(0), Some(2)), "{summary}");
    assert!(summary["checks_passed"].as_u64().unwrap() >= 5);
    let events = events_of(&s.owner, since, until);
    assert!(events.is_empty(), "a no-op up made the engine do something: {events:?}");

    // status is live: a container stopped behind labctl's back is drift.
    s.labctl().args(["td4", "status", "--exit-code"]).run().success().stdout_has("running").stdout_has("HTTP 200");
    stop_container(&format!("sample-app-{}", s.owner));
    s.labctl().args(["td4", "status", "--exit-code"]).run().code(2).stdout_has("exited");
    s.labctl().args(["td4", "verify"]).run().code(3);
    s.labctl().args(["td4", "up"]).run().success().stdout_has("updated");
    assert_eq!(http_get(&s.url("/")).map(|r| r.0), Some(200));

    // down leaves nothing labelled for this owner; a second down is a no-op.
    let down = s.labctl().args(["--json", "td4", "down"]).run().success();
    assert_eq!(down.summary()["changed"].as_u64(), Some(2));
    assert!(containers_of(&s.owner).is_empty(), "{:?}", containers_of(&s.owner));
    assert!(images_of(&s.owner).is_empty(), "{:?}", images_of(&s.owner));
    let again = s.labctl().args(["--json", "td4", "down"]).run().success();
    assert_eq!(again.summary()["changed"].as_u64(), Some(0));
    s.labctl().args(["list"]).run().success().stdout_has("down");
}

#[test]
fn two_owners_side_by_side() {
    let alice = Student::new("alice");
    let bob = Student::new("bob");
    alice.labctl().args(["-q", "td4", "up"]).run().success();
    bob.labctl().args(["-q", "td4", "up"]).run().success();
    assert_eq!(containers_of(&alice.owner).len(), 1);
    assert_eq!(containers_of(&bob.owner).len(), 1);

    alice.labctl().args(["-q", "td4", "down"]).run().success();
    assert!(containers_of(&alice.owner).is_empty() && images_of(&alice.owner).is_empty());
    assert_eq!(containers_of(&bob.owner), vec![(format!("sample-app-{}", bob.owner), "running".to_string())]);
    assert_eq!(images_of(&bob.owner).len(), 1);
    assert_eq!(http_get(&bob.url("/")), Some((200, "Hello, World!".into())));
    bob.labctl().args(["td4", "verify"]).run().success();
}

/// A Dockerfile line that takes `secs` to build. The (shell) comment makes it miss the
/// engine's build cache: the cache outlives `down` (see README), so a line shared with an
/// earlier run would finish at once and the test would race past its kill point. The owner
/// alone is not enough (its pid part repeats across boots), hence the clock.
fn slow_step(secs: u32, owner: &str) -> String {
    format!("RUN sleep {secs} # {owner} {}", unix_now())
}

#[test]
fn kill_during_the_build_then_up_converges_and_down_cleans() {
    let mut s = Student::new("killbuild");
    // A build step that takes a while, so the kill lands in the middle of the build.
    let slow = slow_step(6, &s.owner);
    custom_td4(&mut s, |d| d.replace("USER node", &format!("{slow}\nUSER node")), |spec| spec.to_string());
    let child = s.labctl().args(["--json", "-v", "td4", "up"]).spawn();
    let seen = kill_when(child, Duration::from_secs(300), |e| {
        e["event"] == "log" && e["line"].as_str().is_some_and(|l| l.contains("RUN sleep 6"))
    });
    assert!(seen.iter().any(|e| e["event"] == "started" && e["step"] == "image"));
    std::thread::sleep(Duration::from_secs(1));

    let up = s.labctl().args(["--json", "td4", "up"]).run().success();
    let events = up.events();
    assert!(
        events.iter().any(|e| e["event"] == "recovered" && e["step"] == "image"),
        "the journal told of the interrupted build"
    );
    assert_eq!(containers_of(&s.owner).len(), 1);
    assert_eq!(images_of(&s.owner).len(), 1);
    assert_eq!(http_get(&s.url("/")).map(|r| r.0), Some(200));

    s.labctl().args(["-q", "td4", "down"]).run().success();
    assert!(containers_of(&s.owner).is_empty() && images_of(&s.owner).is_empty());
}

#[test]
fn kill_during_the_run_step_then_up_adopts_the_container() {
    let mut s = Student::new("killrun");
    // Readiness pointed at a port nobody serves: the run step hangs in `wait` after the
    // container is created and started, and is killed there.
    let dead = free_port();
    let labs = custom_td4(
        &mut s,
        |d| d.to_string(),
        |spec| {
            spec.replace(
                "http: \"http://127.0.0.1:{{ params.port }}/\"\n      timeout: 60",
                &format!("http: \"http://127.0.0.1:{dead}/\"\n      timeout: 120"),
            )
        },
    );
    let child = s.labctl().args(["--json", "td4", "up"]).spawn();
    kill_once(child, Duration::from_secs(300), "the container runs", || {
        containers_of(&s.owner).iter().any(|c| c.1 == "running")
    });
    assert_eq!(containers_of(&s.owner).len(), 1, "the killed run left its container");

    // Fix the readiness URL (not part of the container's identity): the next up adopts it.
    let spec = std::fs::read_to_string(labs.join("td4.yaml")).unwrap();
    std::fs::write(labs.join("td4.yaml"), spec.replace(&format!("127.0.0.1:{dead}/"), "127.0.0.1:{{ params.port }}/"))
        .unwrap();
    let up = s.labctl().args(["--json", "td4", "up"]).run().success();
    let events = up.events();
    assert!(events.iter().any(|e| e["event"] == "recovered"), "the next run knows the last one was cut short");
    assert!(
        events.iter().any(|e| e["event"] == "unchanged" && e["step"] == "app"),
        "adopted, not recreated: {events:#?}"
    );
    assert_eq!(containers_of(&s.owner).len(), 1, "no duplicate");

    s.labctl().args(["-q", "td4", "down"]).run().success();
    assert!(containers_of(&s.owner).is_empty() && images_of(&s.owner).is_empty());
}

#[test]
fn port_in_use_fails_before_anything_is_made() {
    let s = Student::new("port");
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", s.port)).unwrap();
    s.labctl()
        .args(["td4", "up"])
        .run()
        .code(1)
        .stderr_has(&format!("port 127.0.0.1:{} is not free", s.port))
        .stderr_has("--param port=");
    assert!(containers_of(&s.owner).is_empty());
    assert!(images_of(&s.owner).is_empty(), "nothing was built");
}

#[test]
fn a_failing_dockerfile_shows_the_log_tail_and_leaves_nothing() {
    let mut s = Student::new("badbuild");
    custom_td4(
        &mut s,
        |d| d.replace("USER node", "RUN echo 'about to fail' && exit 42\nUSER node"),
        |spec| spec.to_string(),
    );
    s.labctl()
        .args(["-q", "td4", "up"])
        .run()
        .code(1)
        .stderr_has("building labctl/")
        .stderr_has("about to fail")
        .stderr_has("returned a non-zero code: 42");
    assert!(containers_of(&s.owner).is_empty());
    assert!(images_of(&s.owner).is_empty());
}

#[test]
fn an_unreachable_engine_says_how_to_start_one() {
    let s = Student::new("nodocker");
    s.labctl()
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .args(["td4", "up"])
        .run()
        .code(1)
        .stderr_has("cannot reach the Docker engine at unix:///nonexistent/docker.sock")
        .stderr_has("dockerd");
    let doctor = Labctl::new().env("DOCKER_HOST", "unix:///nonexistent/docker.sock").args(["doctor"]).run().code(1);
    assert!(doctor.stdout.contains("✗ docker engine") && doctor.stdout.contains("fix:"), "{doctor:?}");
}

#[test]
fn ctrl_c_stops_cleanly_and_a_second_labctl_waits_for_the_lock() {
    let mut s = Student::new("sigint");
    let slow = slow_step(8, &s.owner);
    custom_td4(&mut s, |d| d.replace("USER node", &format!("{slow}\nUSER node")), |spec| spec.to_string());
    let mut child = s.labctl().args(["--json", "-v", "td4", "up"]).spawn();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    // Wait until the build is in its slow step.
    for line in lines.by_ref() {
        if line.unwrap().contains("RUN sleep 8") {
            break;
        }
    }

    // Meanwhile another labctl on the same lab fails clearly once its lock timeout is over.
    s.labctl()
        .args(["--lock-timeout", "1", "td4", "up"])
        .run()
        .code(1)
        .stderr_has("locked by another labctl")
        .stderr_has("labctl td4 up");

    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "Ctrl-C exits 130");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let last: serde_json::Value = serde_json::from_str(rest.last().unwrap()).unwrap();
    assert_eq!((last["event"].as_str(), last["exit_code"].as_i64()), (Some("summary"), Some(130)));

    let up = s.labctl().args(["--json", "td4", "up"]).run().success();
    assert!(up.events().iter().any(|e| e["event"] == "recovered" && e["step"] == "image"));
    s.labctl().args(["-q", "td4", "down"]).run().success();
    assert!(containers_of(&s.owner).is_empty() && images_of(&s.owner).is_empty());
}

#[test]
fn a_same_named_container_that_is_not_ours_is_never_touched() {
    let s = Student::new("foreign");
    let name = format!("sample-app-{}", s.owner);
    let made =
        std::process::Command::new("docker").args(["create", "--name", &name, &base_image(), "true"]).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    s.labctl().args(["td4", "plan"]).run().code(1).stderr_has("was not made by labctl").stderr_has("docker rm -f");
    s.labctl().args(["-q", "td4", "down"]).run().success();
    let still = std::process::Command::new("docker").args(["inspect", "-f", "{{.Name}}", &name]).output().unwrap();
    let _ = std::process::Command::new("docker").args(["rm", "-f", &name]).output();
    assert!(still.status.success(), "down removed a container labctl did not make");
}

#[test]
fn down_finds_by_label_without_state_and_sweep_takes_what_no_step_claims() {
    let mut s = Student::new("sweep");
    // Without its state, `down` still finds everything: by labels, not by our records.
    s.labctl().args(["-q", "td4", "up"]).run().success();
    std::fs::remove_dir_all(s.state.path().join("default").join(&s.owner).join("td4")).unwrap();
    s.labctl().args(["-q", "td4", "down"]).run().success();
    assert!(containers_of(&s.owner).is_empty() && images_of(&s.owner).is_empty());

    // An older version of the lab called its image step `build`: the current lab has no step
    // that claims that image, so plain `down` leaves it, and `down --sweep` takes it.
    custom_spec(&mut s, "td4", |spec| {
        spec.replace("\n  image:\n", "\n  build:\n").replace("steps.image.", "steps.build.")
    });
    s.labctl().args(["-q", "td4", "up"]).run().success();
    assert_eq!(images_of(&s.owner).len(), 1);
    s.labs_dir = None;
    s.labctl().args(["-q", "td4", "down"]).run().success();
    assert!(containers_of(&s.owner).is_empty(), "the `app` step is in both versions");
    assert_eq!(images_of(&s.owner).len(), 1, "no current step claims the `build` image");
    let sweep = s.labctl().args(["--json", "td4", "down", "--sweep"]).run().success();
    assert!(
        sweep.events().iter().any(|e| e["event"] == "changed" && e["step"] == "sweep:docker-image"),
        "{}",
        sweep.stdout
    );
    assert!(images_of(&s.owner).is_empty());
}
