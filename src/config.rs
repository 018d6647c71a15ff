//! Settings, resolved in one place: command line > environment (clap reads `LABCTL_*`) >
//! config file > defaults. The rest of the program sees only `Settings`, never clap.

use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::Value;

use crate::cli::GlobalArgs;
use crate::error::{Error, Result};
use crate::printer::Verbosity;

/// Where each backend is for one target (a laptop, CI, an emulator).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Docker engine address (`unix://…`, `tcp://…`); default: DOCKER_HOST, then the local socket.
    pub docker_host: Option<String>,
    /// Where the AWS API is: a real account (credential chain, profile, region) or an emulator.
    #[serde(default)]
    pub aws: AwsSettings,
    /// Which Kubernetes cluster: kubeconfig file and context, as with kubectl.
    #[serde(default)]
    pub kube: KubeSettings,
    /// Lab parameters for this profile: `params: { td4: { port: 8081 } }`.
    #[serde(default)]
    pub params: IndexMap<String, IndexMap<String, Value>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    /// Named profile of the AWS shared config/credentials files (default: the SDK's chain).
    pub profile: Option<String>,
    /// Region (default: the SDK's chain, AWS_REGION / the shared config).
    pub region: Option<String>,
    /// API endpoint override (also `AWS_ENDPOINT_URL`), for emulators.
    pub endpoint_url: Option<String>,
    /// An emulator (LocalStack): test credentials, and `verify` never connects to instances.
    #[serde(default)]
    pub emulator: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeSettings {
    /// Kubeconfig file (default: KUBECONFIG, then ~/.kube/config).
    pub kubeconfig: Option<PathBuf>,
    /// Context in it (default: its current-context), like `kubectl --context`.
    pub context: Option<String>,
    /// A kind cluster whose nodes get the locally built images before each apply (what
    /// `kind load docker-image` does); unset where the node uses the local Docker engine.
    pub kind_cluster: Option<String>,
}

impl Profile {
    /// The profiles every config has: `default` (nothing overridden) and `localstack`
    /// (LocalStack on 127.0.0.1:4566, us-east-2). A config file may redefine both.
    fn builtin(name: &str) -> Option<Profile> {
        match name {
            "default" => Some(Profile::default()),
            "localstack" => Some(Profile {
                aws: AwsSettings {
                    profile: None,
                    region: Some("us-east-2".into()),
                    endpoint_url: Some("http://127.0.0.1:4566".into()),
                    emulator: true,
                },
                ..Profile::default()
            }),
            _ => None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    owner: Option<String>,
    profile: Option<String>,
    labs_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    #[serde(default)]
    profiles: IndexMap<String, Profile>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub owner: String,
    pub profile_name: String,
    pub profile: Profile,
    pub state_dir: PathBuf,
    pub labs_dir: Option<PathBuf>,
    pub json: bool,
    pub verbosity: Verbosity,
    pub yes: bool,
    pub lock_timeout: Duration,
    /// `--param` overrides, applied after the profile's.
    pub params: IndexMap<String, String>,
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"))
}

fn xdg(var: &str, fallback: &str) -> PathBuf {
    std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or_else(|| home().join(fallback))
}

/// The config file to read: the one named explicitly (it must exist), or the default if present.
fn config_path(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => Some(xdg("XDG_CONFIG_HOME", ".config").join("labctl/config.yaml")).filter(|p| p.exists()),
    }
}

fn read_config(path: &Path) -> Result<FileConfig> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config { file: file.clone(), message: format!("cannot read it: {e}") })?;
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_saphyr::from_str(&text).map_err(|e| {
        let line = e.location().map(|l| format!("line {}: ", l.line())).unwrap_or_default();
        Error::Config { file, message: format!("{line}{}", e.to_string().lines().next().unwrap_or_default()) }
    })
}

/// A user name turned into an owner id: lowercase letters, digits and '-'.
fn owner_from_user(user: &str) -> String {
    let s: String = user.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let s = s.trim_matches('-').chars().take(30).collect::<String>();
    if s.is_empty() { "student".into() } else { s }
}

fn check_owner(owner: &str) -> Result<()> {
    if crate::spec::is_name(owner) && owner.len() <= 30 {
        Ok(())
    } else {
        Err(Error::usage(
            format!("invalid owner `{owner}`"),
            "an owner id is 1-30 lowercase letters, digits and '-' (it names containers, namespaces and tags)",
        ))
    }
}

impl Settings {
    pub fn resolve(args: &GlobalArgs) -> Result<Settings> {
        let file = match config_path(args.config.as_deref()) {
            Some(p) => read_config(&p)?,
            None => FileConfig::default(),
        };
        let owner = args
            .owner
            .clone()
            .or(file.owner.clone())
            .unwrap_or_else(|| owner_from_user(&std::env::var("USER").unwrap_or_default()));
        check_owner(&owner)?;
        let profile_name = args.profile.clone().or(file.profile.clone()).unwrap_or_else(|| "default".into());
        let profile = match file.profiles.get(&profile_name).cloned().or_else(|| Profile::builtin(&profile_name)) {
            Some(p) => p,
            None => {
                let mut known: Vec<String> = vec!["default".into(), "localstack".into()];
                known.extend(file.profiles.keys().filter(|k| Profile::builtin(k).is_none()).cloned());
                return Err(Error::usage(
                    format!("unknown profile `{profile_name}`"),
                    format!("known profiles: {} (add one under `profiles:` in the config file)", known.join(", ")),
                ));
            }
        };
        if !crate::spec::is_name(&profile_name) {
            return Err(Error::usage(
                format!("invalid profile name `{profile_name}`"),
                "use lowercase letters, digits and '-'",
            ));
        }
        let mut params = IndexMap::new();
        for raw in &args.param {
            let Some((k, v)) = raw.split_once('=') else {
                return Err(Error::usage(format!("--param `{raw}` is not KEY=VALUE"), "e.g. --param port=8081"));
            };
            params.insert(k.trim().to_string(), v.to_string());
        }
        let verbosity = if args.quiet {
            Verbosity::Quiet
        } else if args.verbose {
            Verbosity::Verbose
        } else {
            Verbosity::Normal
        };
        Ok(Settings {
            owner,
            profile_name,
            profile,
            state_dir: args
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or_else(|| xdg("XDG_DATA_HOME", ".local/share").join("labctl")),
            labs_dir: args.labs_dir.clone().or(file.labs_dir),
            json: args.json,
            verbosity,
            yes: args.yes,
            lock_timeout: Duration::from_secs(args.lock_timeout),
            params,
        })
    }

    /// The profile's params for one lab, as strings (typed again against the lab's defaults).
    pub fn profile_params(&self, lab: &str) -> IndexMap<String, String> {
        self.profile
            .params
            .get(lab)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), crate::spec::plain(v))).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_come_from_user_names_safely() {
        assert_eq!(owner_from_user("Alice.Smith"), "alice-smith");
        assert_eq!(owner_from_user(""), "student");
        assert!(check_owner("bob").is_ok());
        assert!(check_owner("Bob").is_err());
        assert!(check_owner("a;rm -rf").is_err());
    }

    #[test]
    fn malformed_config_names_the_file_and_line() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.yaml");
        std::fs::write(&path, "owner: alice\nprofiles:\n  ci:\n    docker_hots: x\n").unwrap();
        let err = read_config(&path).unwrap_err().to_string();
        assert!(err.contains("config.yaml") && err.contains("line 4") && err.contains("docker_hots"), "{err}");
    }
}
