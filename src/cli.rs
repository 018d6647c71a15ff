//! The command line, kept at the edge: clap builds `GlobalArgs` and `LabAction`, `config.rs`
//! turns them into `Settings`. Labs are subcommands made from the catalog, so `--help` and
//! shell completions list them.

use std::path::PathBuf;

use clap::{Args, Command, Subcommand};

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Target profile from the config file (where Docker, AWS, Kubernetes are)
    #[arg(long, global = true, env = "LABCTL_PROFILE", value_name = "NAME")]
    pub profile: Option<String>,

    /// Student id owning the resources [default: config `owner`, else your user name]
    #[arg(long, global = true, env = "LABCTL_OWNER", value_name = "ID")]
    pub owner: Option<String>,

    /// Lab parameter override, repeatable (`--param port=8081`)
    #[arg(
        long = "param",
        short = 'p',
        global = true,
        env = "LABCTL_PARAMS",
        value_delimiter = ',',
        value_name = "KEY=VALUE"
    )]
    pub param: Vec<String>,

    /// Where state, journals and generated keys live [default: $XDG_DATA_HOME/labctl]
    #[arg(long, global = true, env = "LABCTL_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Folder of lab specs (`<lab>.yaml`) overriding or adding to the built-in ones
    #[arg(long, global = true, env = "LABCTL_LABS_DIR", value_name = "DIR")]
    pub labs_dir: Option<PathBuf>,

    /// Config file [default: $XDG_CONFIG_HOME/labctl/config.yaml]
    #[arg(long, global = true, env = "LABCTL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// One JSON event per line on stdout, and nothing else
    #[arg(long, global = true, env = "LABCTL_JSON")]
    pub json: bool,

    /// Only errors and the final result (hides build logs)
    #[arg(long, short = 'q', global = true, env = "LABCTL_QUIET", conflicts_with = "verbose")]
    pub quiet: bool,

    /// Stream every log line (build output) in full
    #[arg(long, short = 'v', global = true, env = "LABCTL_VERBOSE")]
    pub verbose: bool,

    /// Do not ask before removing resources
    #[arg(long, short = 'y', global = true, env = "LABCTL_YES")]
    pub yes: bool,

    /// Seconds to wait for another labctl working on the same lab
    #[arg(long, global = true, env = "LABCTL_LOCK_TIMEOUT", default_value_t = 30, value_name = "SECS")]
    pub lock_timeout: u64,
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum LabAction {
    /// Show what `up` would change; changes nothing (exit 2 when changes are pending)
    Plan,
    /// Build, run and verify the lab; a second run changes nothing
    Up {
        /// Kubernetes: take ownership of fields another field manager changed (server-side apply)
        #[arg(long)]
        force_conflicts: bool,
    },
    /// Live state of every step, with drift
    Status {
        /// Exit 2 when a step is missing, out of date or drifted
        #[arg(long)]
        exit_code: bool,
    },
    /// Run the lab's checks against what is running (exit 3 when one fails)
    Verify,
    /// Remove everything the lab made for this owner; a second run is a no-op
    Down {
        /// Also remove this owner's leftovers of the lab found by label that no step claims
        #[arg(long)]
        sweep: bool,
    },
}

impl LabAction {
    pub fn name(self) -> &'static str {
        match self {
            LabAction::Plan => "plan",
            LabAction::Up { .. } => "up",
            LabAction::Status { .. } => "status",
            LabAction::Verify => "verify",
            LabAction::Down { .. } => "down",
        }
    }
}

const EXAMPLES: &str = "\
Examples:
  labctl list                               the labs and their status
  labctl doctor                             is every backend reachable?
  labctl td4 plan                           what `up` would do, without doing it
  labctl td4 up                             build, run and check TD4
  labctl --owner bob td4 up -p port=8081    a second student, on another port
  labctl td4 status --exit-code             exit 2 on drift
  labctl td4 down                           remove everything TD4 made
  labctl --json td4 up | jq .               machine-readable events

Exit codes: 0 ok, 1 error, 2 changes pending or drift, 3 verify failed, 130 interrupted.
Every option can also be set as LABCTL_<OPTION> (e.g. LABCTL_OWNER=alice).";

/// What `labctl <lab> --help` tells of a lab, read leniently from its spec (a broken spec
/// still gets a subcommand; the real parse reports it when the lab runs).
pub struct LabHelp {
    pub name: String,
    pub title: String,
    pub description: String,
    /// Parameter names and their defaults, in spec order.
    pub params: Vec<(String, String)>,
}

impl LabHelp {
    pub fn from_spec(name: &str, text: &str) -> LabHelp {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct View {
            title: String,
            description: String,
            params: indexmap::IndexMap<String, serde_json::Value>,
        }
        let view: View = serde_saphyr::from_str(text).unwrap_or_default();
        let params = view.params.into_iter().map(|(k, v)| (k, crate::spec::plain(&v))).collect();
        LabHelp { name: name.into(), title: view.title, description: view.description.trim().into(), params }
    }

    fn after_help(&self) -> String {
        let name = &self.name;
        let mut out = String::new();
        if !self.description.is_empty() {
            out.push_str(&self.description);
            out.push_str("\n\n");
        }
        if !self.params.is_empty() {
            out.push_str("Parameters (override with -p KEY=VALUE, repeatable; defaults shown):\n");
            let width = self.params.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            for (k, v) in &self.params {
                out.push_str(&format!("  {k:width$}  {v}\n"));
            }
            out.push('\n');
        }
        out.push_str(&format!("Example: labctl {name} up && labctl {name} status && labctl {name} down"));
        out
    }
}

/// The full command: fixed subcommands plus one per lab.
pub fn command(labs: &[LabHelp]) -> Command {
    let mut cmd = Command::new("labctl")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Run the DevOps course's labs as reproducible, idempotent step sets")
        .after_help(EXAMPLES)
        .subcommand_required(true)
        .allow_external_subcommands(true)
        .subcommand(Command::new("list").about("List the labs with a one-line description and their recorded status"))
        .subcommand(
            Command::new("doctor").about("Check every backend the labs need and say how to fix what is missing"),
        )
        .subcommand(
            Command::new("completions")
                .about("Print shell completions (e.g. `labctl completions bash > /etc/bash_completion.d/labctl`)")
                .arg(clap::Arg::new("shell").required(true).value_parser(clap::value_parser!(clap_complete::Shell))),
        );
    cmd = GlobalArgs::augment_args(cmd);
    for lab in labs {
        let lab = Command::new(lab.name.clone())
            .about(lab.title.clone())
            .subcommand_required(true)
            .after_help(lab.after_help());
        cmd = cmd.subcommand(LabAction::augment_subcommands(lab));
    }
    cmd
}
