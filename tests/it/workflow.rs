//! The project's GitHub Actions workflow cannot run here: it is checked with actionlint and
//! against the GitHub workflow schema instead (both installed by testenv/up.sh).

use std::path::PathBuf;
use std::process::Command;

fn tool(name: &str) -> PathBuf {
    let dir = std::env::var("LABCTL_LINT_BIN").unwrap_or_else(|_| "/var/cache/labctl/lint-venv/bin".into());
    let path = PathBuf::from(dir).join(name);
    assert!(path.exists(), "{} is missing: run testenv/up.sh lint", path.display());
    path
}

fn workflows() -> Vec<PathBuf> {
    let dir = crate::support::repo().join(".github/workflows");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty());
    files
}

#[test]
fn workflows_pass_actionlint() {
    let out = Command::new(tool("actionlint")).args(workflows()).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn workflows_match_the_github_schema() {
    let out = Command::new(tool("check-jsonschema"))
        .args(["--builtin-schema", "vendor.github-workflows"])
        .args(workflows())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_workflow_runs_the_suite_against_kind_and_the_emulator() {
    let text = std::fs::read_to_string(&workflows()[0]).unwrap();
    for needle in ["helm/kind-action", "localstack/run.sh start", "cargo test --locked", "LABCTL_TEST_KUBECONFIG"] {
        assert!(text.contains(needle), "the workflow lacks {needle}");
    }
}
