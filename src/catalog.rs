//! The labs this run knows: the built-in specs, overridden or extended by `*.yaml` files in
//! --labs-dir. Loading a lab also checks each step against its kind, so a typo in a spec is
//! reported with its file and line before anything runs.

use std::collections::HashMap;
use std::path::Path;

use indexmap::IndexMap;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::files::{SpecSource, builtin_specs};
use crate::spec::{LabSpec, Scope};
use crate::step::Registry;

pub struct Entry {
    pub name: String,
    pub source: SpecSource,
    pub text: String,
}

pub struct Catalog {
    entries: IndexMap<String, Entry>,
}

impl Catalog {
    pub fn load(labs_dir: Option<&Path>) -> Result<Catalog> {
        let mut entries = IndexMap::new();
        let mut builtin = builtin_specs();
        builtin.sort();
        for (file, text) in builtin {
            let name = file.trim_end_matches(".yaml").to_string();
            entries.insert(
                name.clone(),
                Entry { name, source: SpecSource::Builtin { file: file.into() }, text: text.into() },
            );
        }
        if let Some(dir) = labs_dir {
            let read = std::fs::read_dir(dir).map_err(|e| {
                Error::io(format!("reading the labs dir {} (from --labs-dir / LABCTL_LABS_DIR)", dir.display()), e)
            })?;
            let mut paths: Vec<_> = read.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            paths.sort();
            for path in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml")) {
                let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
                let text =
                    std::fs::read_to_string(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                entries.insert(name.clone(), Entry { name, source: SpecSource::Disk { path }, text });
            }
        }
        Ok(Catalog { entries })
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Result<&Entry> {
        self.entries.get(name).ok_or_else(|| Error::UnknownLab { name: name.into(), known: self.names() })
    }
}

impl Entry {
    /// Parses the spec and checks every step's kind and config shape.
    pub fn parse(&self, registry: &Registry) -> Result<LabSpec> {
        let file = self.source.label();
        let spec = LabSpec::parse(&file, &self.text)?;
        if spec.name != self.name {
            return Err(Error::Spec {
                file,
                line: 1,
                message: format!("field `lab`: `{}` does not match the file name `{}.yaml`", spec.name, self.name),
            });
        }
        // Render with placeholder outputs, so the kind sees the shapes it will get.
        let outputs = HashMap::new();
        let scope =
            Scope { lab: &spec.name, owner: "owner", profile: "profile", params: &spec.params, outputs: &outputs };
        for step in spec.steps.values() {
            let at = |message: String| Error::Spec { file: file.clone(), line: step.line, message };
            let kind = registry.get(&step.kind).ok_or_else(|| {
                at(format!(
                    "step `{}`: unknown kind `{}` (known kinds: {})",
                    step.name,
                    step.kind,
                    registry.names().join(", ")
                ))
            })?;
            let rendered = scope.render(&step.config).map_err(|m| at(format!("step `{}`: {m}", step.name)))?;
            kind.validate(&rendered.value).map_err(|m| at(format!("step `{}` ({}): {m}", step.name, step.kind)))?;
        }
        Ok(spec)
    }
}

/// Deserializes a kind's config, turning serde's message into one that names the field.
pub fn typed_config<T: serde::de::DeserializeOwned>(config: &Value) -> std::result::Result<T, String> {
    serde_json::from_value(config.clone()).map_err(|e| e.to_string())
}
