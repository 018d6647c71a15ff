//! Integration tests: the real `labctl` binary against the real Docker engine started by
//! `testenv/up.sh`. Assertions read the engine's own listings (bollard), not labctl's state.
//! All integration tests compile into this one binary.

mod aws;
mod cli;
mod k8s;
mod support;
mod td1;
mod td4;
mod td6;
mod workflow;
