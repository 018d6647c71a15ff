//! labctl: the DevOps course's labs as reproducible, idempotent step sets.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod catalog;
mod cli;
mod commands;
mod config;
mod engine;
mod error;
mod files;
mod kinds;
mod printer;
mod probe;
mod spec;
mod state;
mod step;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;

use clap::FromArgMatches;

use crate::catalog::Catalog;
use crate::cli::{GlobalArgs, LabAction};
use crate::commands::App;
use crate::config::Settings;
use crate::error::Error;
use crate::printer::{Printer, Verbosity};

fn main() {
    // Two TLS stacks meet here (aws-sdk and kube-rs); both use aws-lc-rs as rustls' provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let code = runtime.block_on(run(std::env::args_os().collect()));
    std::process::exit(code);
}

/// `--labs-dir` must be known before clap runs, since the labs are subcommands.
fn prescan_labs_dir(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = it.next() {
        if a == "--labs-dir" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--labs-dir=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os("LABCTL_LABS_DIR").filter(|v| !v.is_empty()).map(PathBuf::from)
}

async fn run(args: Vec<OsString>) -> i32 {
    let fallback = Printer::new(false, Verbosity::Normal);
    // A broken labs dir must not hide `--help`; the real load below reports it.
    let labs: Vec<cli::LabHelp> = Catalog::load(prescan_labs_dir(&args).as_deref())
        .or_else(|_| Catalog::load(None))
        .map(|c| c.entries().map(|e| cli::LabHelp::from_spec(&e.name, &e.text)).collect())
        .unwrap_or_default();
    let matches = match cli::command(&labs).try_get_matches_from(&args) {
        Ok(m) => m,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let styled = if code == 0 { std::io::stdout().is_terminal() } else { std::io::stderr().is_terminal() };
            let text = if styled { e.render().ansi().to_string() } else { e.render().to_string() };
            if code == 0 {
                fallback.raw(&text)
            } else {
                fallback.raw_err(&text)
            }
            return code;
        }
    };
    // Globals propagate to the deepest subcommand's matches.
    let (name, sub) = matches.subcommand().expect("a subcommand is required");
    let deepest = sub.subcommand().map(|(_, m)| m).unwrap_or(sub);
    let globals = match GlobalArgs::from_arg_matches(deepest) {
        Ok(g) => g,
        Err(e) => {
            fallback.raw_err(&e.render().to_string());
            return 1;
        }
    };
    let settings = match Settings::resolve(&globals) {
        Ok(s) => s,
        Err(e) => {
            Printer::new(globals.json, Verbosity::Normal).error(&e);
            return e.exit_code();
        }
    };
    let printer = Printer::new(settings.json, settings.verbosity);
    let catalog = match Catalog::load(settings.labs_dir.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            printer.error(&e);
            return e.exit_code();
        }
    };
    let registry = kinds::registry(&settings.profile);
    let app = App { settings: &settings, printer: &printer, catalog: &catalog, registry: &registry };
    let result = match name {
        "list" => app.list(),
        "doctor" => app.doctor().await,
        "completions" => {
            let shell = *sub.get_one::<clap_complete::Shell>("shell").expect("required");
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cli::command(&labs), "labctl", &mut out);
            printer.raw(&String::from_utf8_lossy(&out));
            Ok(0)
        }
        lab => match sub.subcommand() {
            Some(_) => match LabAction::from_arg_matches(sub) {
                Ok(action) => app.lab(lab, action).await,
                Err(e) => Err(Error::usage(e.to_string(), format!("see `labctl {lab} --help`"))),
            },
            // An external subcommand: not a lab this catalog knows.
            None => Err(Error::UnknownLab { name: lab.to_string(), known: catalog.names() }),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            printer.error(&e);
            e.exit_code()
        }
    }
}
