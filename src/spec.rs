//! Lab specs: the data that says what a lab is (params, steps, checks, outputs), and the small
//! template language (`{{ params.port }}`, `{{ steps.image.id }}`, `{{ owner }}`) that wires them.

use std::collections::{BTreeSet, HashMap};

use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Shown where a value depends on a step that has not run yet (as Terraform does).
pub const PENDING: &str = "(known after apply)";

#[derive(Debug, Clone)]
pub struct LabSpec {
    pub name: String,
    pub title: String,
    pub params: IndexMap<String, Value>,
    pub steps: IndexMap<String, StepSpec>,
    pub verify: Vec<CheckSpec>,
    pub outputs: IndexMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct StepSpec {
    pub name: String,
    pub kind: String,
    pub line: u64,
    /// Steps this one waits for: explicit `after:` plus every `{{ steps.X.… }}` it references.
    pub deps: Vec<String>,
    pub config: Value,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    pub name: Option<String>,
    pub http: HttpCheck,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub url: String,
    #[serde(default = "default_status")]
    pub status: u16,
    pub body_contains: Option<String>,
    pub body_not_contains: Option<String>,
    pub body_equals: Option<String>,
}

fn default_status() -> u16 {
    200
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    lab: String,
    title: String,
    /// Free text for people reading the spec.
    #[serde(default, rename = "description")]
    _description: String,
    #[serde(default)]
    params: IndexMap<String, Value>,
    steps: IndexMap<String, serde_saphyr::Spanned<RawStep>>,
    #[serde(default)]
    verify: Vec<CheckSpec>,
    #[serde(default)]
    outputs: IndexMap<String, String>,
}

#[derive(Deserialize)]
struct RawStep {
    kind: String,
    #[serde(default)]
    after: Vec<String>,
    #[serde(flatten)]
    config: Map<String, Value>,
}

impl LabSpec {
    /// Parses a spec; `file` names it in errors. Kind-specific checks happen in `Catalog`.
    pub fn parse(file: &str, text: &str) -> Result<LabSpec> {
        let raw: RawSpec = serde_saphyr::from_str(text).map_err(|e| {
            let line = e.location().map(|l| l.line()).unwrap_or(0);
            Error::Spec { file: file.to_string(), line, message: first_line(&e.to_string()) }
        })?;
        let spec_err = |line: u64, message: String| Error::Spec { file: file.to_string(), line, message };
        if !is_name(&raw.lab) {
            return Err(spec_err(1, format!("field `lab`: `{}` must be lowercase letters, digits and '-'", raw.lab)));
        }
        let mut steps = IndexMap::new();
        for (name, spanned) in raw.steps {
            let line = key_line(text, &name, spanned.referenced.line());
            let RawStep { kind, after, config } = spanned.value;
            if !is_name(&name) {
                return Err(spec_err(line, format!("step `{name}`: names are lowercase letters, digits and '-'")));
            }
            let config = Value::Object(config);
            let mut deps: Vec<String> = after;
            for r in step_refs(&config) {
                if !deps.contains(&r) {
                    deps.push(r);
                }
            }
            steps.insert(name.clone(), StepSpec { name, kind, line, deps, config });
        }
        let spec = LabSpec {
            name: raw.lab,
            title: raw.title,
            params: raw.params,
            steps,
            verify: raw.verify,
            outputs: raw.outputs,
        };
        spec.check_graph().map_err(|(line, m)| spec_err(line, m))?;
        spec.check_refs().map_err(|(line, m)| spec_err(line, m))?;
        Ok(spec)
    }

    fn check_graph(&self) -> std::result::Result<(), (u64, String)> {
        for step in self.steps.values() {
            for dep in &step.deps {
                if dep == &step.name {
                    return Err((step.line, format!("step `{}` refers to itself", step.name)));
                }
                if !self.steps.contains_key(dep) {
                    return Err((
                        step.line,
                        format!("step `{}`: unknown step `{dep}` (in `after` or a template)", step.name),
                    ));
                }
            }
        }
        if let Some(cycle) = self.cycle() {
            let line = self.steps[&cycle].line;
            return Err((line, format!("step `{cycle}` is part of a dependency cycle")));
        }
        Ok(())
    }

    /// Every `{{ params.X }}` must name a declared param, in steps, checks and outputs.
    fn check_refs(&self) -> std::result::Result<(), (u64, String)> {
        let mut texts: Vec<(u64, String, String)> = Vec::new();
        for step in self.steps.values() {
            collect_strings(&step.config, &mut |s| {
                texts.push((step.line, format!("step `{}`", step.name), s.to_string()))
            });
        }
        for (i, check) in self.verify.iter().enumerate() {
            texts.push((0, format!("verify[{i}]"), check.http.url.clone()));
        }
        for (k, v) in &self.outputs {
            texts.push((0, format!("output `{k}`"), v.clone()));
        }
        for (line, place, text) in texts {
            for expr in template_exprs(&text) {
                let ok = match expr.split_once('.') {
                    Some(("params", p)) => self.params.contains_key(p),
                    Some(("steps", rest)) => rest.split_once('.').is_some_and(|(s, _)| self.steps.contains_key(s)),
                    None => matches!(expr.as_str(), "lab" | "owner" | "profile"),
                    _ => false,
                };
                if !ok {
                    return Err((line, format!("{place}: unknown reference `{{{{ {expr} }}}}`")));
                }
            }
        }
        Ok(())
    }

    fn cycle(&self) -> Option<String> {
        // Kahn's algorithm: whatever cannot be ordered is on (or behind) a cycle.
        let order = self.topo_order();
        self.steps.keys().find(|s| !order.contains(s)).cloned()
    }

    /// Steps in dependency order (stable: declaration order among independent steps).
    pub fn topo_order(&self) -> Vec<String> {
        let mut done: BTreeSet<&str> = BTreeSet::new();
        let mut order = Vec::new();
        loop {
            let next = self
                .steps
                .values()
                .find(|s| !done.contains(s.name.as_str()) && s.deps.iter().all(|d| done.contains(d.as_str())));
            match next {
                Some(s) => {
                    done.insert(&s.name);
                    order.push(s.name.clone());
                }
                None => return order,
            }
        }
    }

    /// Steps that depend on `name`, directly.
    pub fn dependents(&self, name: &str) -> Vec<String> {
        self.steps.values().filter(|s| s.deps.iter().any(|d| d == name)).map(|s| s.name.clone()).collect()
    }

    /// Applies `key=value` overrides, keeping the type of the declared default.
    pub fn set_params(&mut self, overrides: &IndexMap<String, String>, origin: &str) -> Result<()> {
        for (key, raw) in overrides {
            let Some(current) = self.params.get(key) else {
                let known: Vec<&str> = self.params.keys().map(String::as_str).collect();
                return Err(Error::usage(
                    format!("{origin}: lab `{}` has no parameter `{key}`", self.name),
                    format!("its parameters are: {}", known.join(", ")),
                ));
            };
            let value = match current {
                Value::Number(_) => raw.parse::<i64>().map(Value::from).map_err(|_| {
                    Error::usage(
                        format!("{origin}: parameter `{key}` must be a whole number, got `{raw}`"),
                        "e.g. --param port=8081",
                    )
                })?,
                Value::Bool(_) => raw.parse::<bool>().map(Value::from).map_err(|_| {
                    Error::usage(
                        format!("{origin}: parameter `{key}` must be true or false, got `{raw}`"),
                        "e.g. --param flag=true",
                    )
                })?,
                _ => Value::from(raw.clone()),
            };
            self.params.insert(key.clone(), value);
        }
        Ok(())
    }
}

pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The line of `name:` at or above `value_line` (the parser locates the value, people look
/// for the key).
fn key_line(text: &str, name: &str, value_line: u64) -> u64 {
    let key = format!("{name}:");
    text.lines()
        .take(value_line as usize)
        .collect::<Vec<_>>()
        .iter()
        .rposition(|l| l.trim_start().starts_with(&key))
        .map(|i| i as u64 + 1)
        .unwrap_or(value_line)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().trim().to_string()
}

fn collect_strings<'a>(v: &'a Value, f: &mut impl FnMut(&'a str)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, f)),
        Value::Object(m) => m.values().for_each(|x| collect_strings(x, f)),
        _ => {}
    }
}

/// The expressions inside `{{ … }}` in a string, trimmed.
fn template_exprs(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        match rest[start + 2..].find("}}") {
            Some(end) => {
                out.push(rest[start + 2..start + 2 + end].trim().to_string());
                rest = &rest[start + 2 + end + 2..];
            }
            None => break,
        }
    }
    out
}

fn step_refs(config: &Value) -> Vec<String> {
    let mut refs = Vec::new();
    collect_strings(config, &mut |s| {
        for e in template_exprs(s) {
            if let Some(rest) = e.strip_prefix("steps.")
                && let Some((step, _)) = rest.split_once('.')
                && !refs.iter().any(|r: &String| r == step)
            {
                refs.push(step.to_string());
            }
        }
    });
    refs
}

/// What templates can see.
pub struct Scope<'a> {
    pub lab: &'a str,
    pub owner: &'a str,
    pub profile: &'a str,
    pub params: &'a IndexMap<String, Value>,
    /// Outputs of steps that are known; a referenced step missing here renders as PENDING.
    pub outputs: &'a HashMap<String, Map<String, Value>>,
}

/// A rendered value and whether some part of it is still unknown.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub value: Value,
    pub pending: bool,
}

impl Scope<'_> {
    pub fn render(&self, v: &Value) -> std::result::Result<Rendered, String> {
        let mut pending = false;
        let value = self.render_inner(v, &mut pending)?;
        Ok(Rendered { value, pending })
    }

    pub fn render_str(&self, s: &str) -> std::result::Result<Rendered, String> {
        self.render(&Value::String(s.to_string()))
    }

    fn render_inner(&self, v: &Value, pending: &mut bool) -> std::result::Result<Value, String> {
        Ok(match v {
            Value::String(s) => self.render_string(s, pending)?,
            Value::Array(a) => Value::Array(a.iter().map(|x| self.render_inner(x, pending)).collect::<Result<_, _>>()?),
            Value::Object(m) => {
                let rendered: Result<_, String> =
                    m.iter().map(|(k, x)| Ok((k.clone(), self.render_inner(x, pending)?))).collect();
                Value::Object(rendered?)
            }
            other => other.clone(),
        })
    }

    fn render_string(&self, s: &str, pending: &mut bool) -> std::result::Result<Value, String> {
        let exprs = template_exprs(s);
        // A string that is exactly one template keeps the value's type (`port: "{{ params.port }}"`).
        if exprs.len() == 1 && s.trim().starts_with("{{") && s.trim().ends_with("}}") {
            return self.lookup(&exprs[0], pending);
        }
        let mut out = String::new();
        let mut rest = s;
        while let Some(start) = rest.find("{{") {
            let Some(end) = rest[start + 2..].find("}}") else {
                break;
            };
            out.push_str(&rest[..start]);
            out.push_str(&plain(&self.lookup(rest[start + 2..start + 2 + end].trim(), pending)?));
            rest = &rest[start + 2 + end + 2..];
        }
        out.push_str(rest);
        Ok(Value::String(out))
    }

    fn lookup(&self, expr: &str, pending: &mut bool) -> std::result::Result<Value, String> {
        let unknown = || format!("unknown reference `{{{{ {expr} }}}}`");
        match expr.split_once('.') {
            None => match expr {
                "lab" => Ok(Value::from(self.lab)),
                "owner" => Ok(Value::from(self.owner)),
                "profile" => Ok(Value::from(self.profile)),
                _ => Err(unknown()),
            },
            Some(("params", p)) => self.params.get(p).cloned().ok_or_else(unknown),
            Some(("steps", rest)) => {
                let (step, key) = rest.split_once('.').ok_or_else(unknown)?;
                match self.outputs.get(step) {
                    Some(outs) => outs
                        .get(key)
                        .cloned()
                        .ok_or_else(|| format!("step `{step}` has no output `{key}` (it has: {})", keys(outs))),
                    None => {
                        *pending = true;
                        Ok(Value::from(PENDING))
                    }
                }
            }
            _ => Err(unknown()),
        }
    }
}

/// A value as a person writes it: strings without their JSON quotes, anything else as JSON.
pub fn plain(v: &Value) -> String {
    v.as_str().map(String::from).unwrap_or_else(|| v.to_string())
}

/// Fills `{{ name }}` placeholders of a file a step ships (a user-data script, manifests) from
/// the step's `vars`. Each value must be one printable line, and every placeholder must be
/// filled: what reaches the backend is exactly what was asked for. `file` names it in errors.
pub fn fill_placeholders(text: &str, vars: &std::collections::BTreeMap<String, Value>, file: &str) -> Result<String> {
    let mut out = text.to_string();
    for (key, value) in vars {
        let value = plain(value);
        if value.chars().any(|c| c.is_control()) {
            return Err(Error::usage(
                format!("value `{key}` for {file} contains a line break or control character"),
                "values filled into files must be a single printable line",
            ));
        }
        out = out.replace(&format!("{{{{ {key} }}}}"), &value);
    }
    if let Some(start) = out.find("{{ ") {
        let end = out[start..].find("}}").map(|e| start + e + 2).unwrap_or(out.len());
        return Err(Error::usage(
            format!("{file}: placeholder {} has no value", &out[start..end]),
            "add it under the step's `vars` in the lab spec",
        ));
    }
    Ok(out)
}

fn keys(m: &Map<String, Value>) -> String {
    m.keys().cloned().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
lab: demo
title: A demo
params:
  port: 8080
  name: web
steps:
  image:
    kind: fake
    tag: "{{ params.name }}:v1"
  app:
    kind: fake
    image: "{{ steps.image.id }}"
    port: "{{ params.port }}"
  side:
    kind: fake
    after: [image]
  last:
    kind: fake
    after: [app, side]
verify:
  - http: { url: "http://127.0.0.1:{{ params.port }}/" }
"#;

    #[test]
    fn graph_order_follows_references_and_after() {
        let spec = LabSpec::parse("demo.yaml", SPEC).unwrap();
        assert_eq!(spec.topo_order(), ["image", "app", "side", "last"]);
        assert_eq!(spec.steps["app"].deps, ["image"]);
        assert_eq!(spec.dependents("image"), ["app", "side"]);
    }

    #[test]
    fn whole_template_keeps_type_and_pending_is_flagged() {
        let spec = LabSpec::parse("demo.yaml", SPEC).unwrap();
        let outputs = HashMap::new();
        let scope = Scope { lab: "demo", owner: "alice", profile: "default", params: &spec.params, outputs: &outputs };
        let r = scope.render(&spec.steps["app"].config).unwrap();
        assert!(r.pending);
        assert_eq!(r.value["port"], Value::from(8080));
        assert_eq!(r.value["image"], Value::from(PENDING));
        let mut outputs = HashMap::new();
        outputs.insert("image".to_string(), Map::from_iter([("id".to_string(), Value::from("sha256:abc"))]));
        let scope = Scope { outputs: &outputs, ..scope };
        let r = scope.render(&spec.steps["app"].config).unwrap();
        assert!(!r.pending);
        assert_eq!(r.value["image"], Value::from("sha256:abc"));
        assert_eq!(scope.render_str("x-{{ owner }}-{{ params.port }}").unwrap().value, Value::from("x-alice-8080"));
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let bad = SPEC.replace("    tag: \"{{ params.name }}:v1\"", "    tag: \"{{ params.nme }}:v1\"");
        let err = LabSpec::parse("demo.yaml", &bad).unwrap_err().to_string();
        assert!(err.starts_with("demo.yaml:8: step `image`: unknown reference `{{ params.nme }}`"), "{err}");

        let bad = SPEC.replace("title: A demo", "title: A demo\ntitel: typo");
        let err = LabSpec::parse("demo.yaml", &bad).unwrap_err().to_string();
        assert!(err.starts_with("demo.yaml:4:") && err.contains("titel"), "{err}");

        let bad = SPEC.replace("after: [image]", "after: [nope]");
        let err = LabSpec::parse("demo.yaml", &bad).unwrap_err().to_string();
        assert!(err.contains(":15:") && err.contains("unknown step `nope`"), "{err}");
    }

    #[test]
    fn placeholders_are_filled_checked_and_all_required() {
        let vars = std::collections::BTreeMap::from([
            ("port".to_string(), Value::from(80)),
            ("message".to_string(), Value::from("Hello, World!")),
        ]);
        assert_eq!(fill_placeholders("P={{ port }} M={{ message }}", &vars, "f").unwrap(), "P=80 M=Hello, World!");
        assert!(
            fill_placeholders("{{ other }}", &vars, "f").unwrap_err().to_string().contains("{{ other }} has no value")
        );
        let bad = std::collections::BTreeMap::from([("m".to_string(), Value::from("a\nrm -rf /"))]);
        assert!(fill_placeholders("{{ m }}", &bad, "f").is_err());
    }

    #[test]
    fn cycles_are_rejected() {
        let bad = SPEC.replace("after: [image]", "after: [last]");
        let err = LabSpec::parse("demo.yaml", &bad).unwrap_err().to_string();
        assert!(err.contains("dependency cycle"), "{err}");
    }

    #[test]
    fn param_overrides_keep_types_and_reject_unknown_names() {
        let mut spec = LabSpec::parse("demo.yaml", SPEC).unwrap();
        spec.set_params(&IndexMap::from([("port".to_string(), "9090".to_string())]), "--param").unwrap();
        assert_eq!(spec.params["port"], Value::from(9090));
        let err = spec.set_params(&IndexMap::from([("port".to_string(), "x".to_string())]), "--param").unwrap_err();
        assert!(err.to_string().contains("whole number"));
        let err = spec.set_params(&IndexMap::from([("prot".to_string(), "1".to_string())]), "--param").unwrap_err();
        assert!(err.to_string().contains("no parameter `prot`"));
    }
}
