//! The command line itself: help, errors for bad input, JSON discipline. No backend needed.

use crate::support::*;

#[test]
fn help_teaches_with_examples_and_lists_the_labs() {
    let help = Labctl::new().arg("--help").run().success();
    assert!(help.stdout.contains("Examples:") && help.stdout.contains("td4") && help.stdout.contains("Exit codes"));
    Labctl::new()
        .args(["td4", "--help"])
        .run()
        .success()
        .stdout_has("plan")
        .stdout_has("down")
        .stdout_has("Parameters (override with -p KEY=VALUE")
        .stdout_has("  port        8080\n");
    Labctl::new().args(["completions", "bash"]).run().success().stdout_has("td4");
}

#[test]
fn unknown_lab_is_a_clear_error() {
    Labctl::new().args(["td9", "up"]).run().code(1).stderr_has("unknown lab `td9`").stderr_has("known labs: td1, td4");
    let json = Labctl::new().args(["--json", "td9", "up"]).run().code(1);
    let line: serde_json::Value = serde_json::from_str(json.stdout.trim()).unwrap();
    assert_eq!(line["event"], "error");
}

#[test]
fn malformed_lab_spec_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let spec = std::fs::read_to_string(repo().join("labs/td4.yaml")).unwrap();
    std::fs::write(dir.path().join("td4.yaml"), spec.replace("    name: \"sample-app-{{ owner }}\"", "    nmae: oops"))
        .unwrap();
    let run = Labctl::new().arg("--labs-dir").arg(dir.path()).args(["td4", "plan"]).run().code(1);
    let line = spec.lines().position(|l| l.starts_with("  app:")).unwrap() + 1;
    assert!(
        run.stderr.contains(&format!("td4.yaml:{line}: step `app` (docker-container): unknown field `nmae`")),
        "{}",
        run.stderr
    );

    std::fs::write(dir.path().join("td4.yaml"), spec.replace("steps:", "stepz:")).unwrap();
    let run = Labctl::new().arg("--labs-dir").arg(dir.path()).args(["td4", "plan"]).run().code(1);
    assert!(run.stderr.contains("td4.yaml:") && run.stderr.contains("stepz"), "{}", run.stderr);
}

#[test]
fn malformed_config_and_bad_flags_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "owner: alice\nprofiles: [not, a, map]\n").unwrap();
    Labctl::new()
        .arg("--config")
        .arg(&config)
        .args(["td4", "plan"])
        .run()
        .code(1)
        .stderr_has("config.yaml")
        .stderr_has("line 2");
    Labctl::new().args(["--profile", "nope", "td4", "plan"]).run().code(1).stderr_has("unknown profile `nope`");
    Labctl::new().args(["--owner", "Bad Owner", "td4", "plan"]).run().code(1).stderr_has("invalid owner");
    Labctl::new().args(["-p", "prot=1", "td4", "plan"]).run().code(1).stderr_has("no parameter `prot`");
    Labctl::new().args(["-p", "port=abc", "td4", "plan"]).run().code(1).stderr_has("whole number");
}

#[test]
fn profile_params_come_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "owner: carol\nprofiles:\n  alt:\n    params:\n      td4: { port: 18555, tag: v9 }\n")
        .unwrap();
    // plan is read-only: it shows the resolved owner, profile and params.
    let plan = Labctl::new()
        .arg("--config")
        .arg(&config)
        .args(["--profile", "alt", "--state-dir"])
        .arg(dir.path())
        .args(["td4", "plan"])
        .run()
        .code(2);
    assert!(plan.stdout.contains("owner carol, profile alt"), "{plan:?}");
    assert!(
        plan.stdout.contains("labctl/carol/sample-app:v9") && plan.stdout.contains("127.0.0.1:18555->8080"),
        "{plan:?}"
    );
    // --param beats the profile.
    Labctl::new()
        .arg("--config")
        .arg(&config)
        .args(["--profile", "alt", "-p", "port=18556", "td4", "plan"])
        .run()
        .code(2)
        .stdout_has("127.0.0.1:18556->8080");
}
