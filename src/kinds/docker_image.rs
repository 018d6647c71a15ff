//! `docker-image`: builds an image from a folder (sent as an in-memory tar, `.dockerignore`
//! honoured), streams the build log, tags it, labels it with its owner and an input hash.
//! An image whose input hash matches is left alone: a second `up` builds nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;

use super::docker::{DockerBackend, api_error, engine_message, label_filters, short_id};
use super::input_hash;
use crate::catalog::typed_config;
use crate::error::{Error, Result};
use crate::files::{IgnoreRules, TreeFile};
use crate::step::{Action, Diagnosis, LABEL_INPUT, Observation, Outputs, StepCtx, StepKind};

pub struct DockerImage {
    pub docker: Arc<DockerBackend>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Folder with the Dockerfile, relative to the spec file.
    context: String,
    #[serde(default = "default_dockerfile")]
    dockerfile: String,
    /// `repository:tag` the image gets.
    tag: String,
    #[serde(default)]
    build_args: BTreeMap<String, String>,
    /// Seconds the build may take.
    #[serde(default = "default_timeout")]
    timeout: u64,
}

fn default_dockerfile() -> String {
    "Dockerfile".into()
}

fn default_timeout() -> u64 {
    900
}

/// The files of the build context (`.dockerignore` applied) and the hash of everything the
/// image depends on.
struct Context {
    files: Vec<TreeFile>,
    hash: String,
}

impl Config {
    fn context(&self, ctx: &StepCtx<'_>) -> Result<Context> {
        let tree = ctx.source.resolve_dir(&self.context)?;
        let files = tree.files()?;
        if !files.iter().any(|f| f.path == self.dockerfile) {
            return Err(Error::usage(
                format!("no `{}` in the build context {}", self.dockerfile, tree.describe()),
                "set `dockerfile:` in the step, or add the file",
            ));
        }
        let ignore = files
            .iter()
            .find(|f| f.path == ".dockerignore")
            .map(|f| IgnoreRules::parse(&String::from_utf8_lossy(&f.contents)))
            .unwrap_or_else(|| IgnoreRules::parse(""));
        let files: Vec<TreeFile> =
            files.into_iter().filter(|f| f.path == self.dockerfile || !ignore.is_ignored(&f.path)).collect();
        let args = serde_json::to_vec(&self.build_args).expect("strings serialize");
        let mut hashed: Vec<&[u8]> = vec![self.dockerfile.as_bytes(), self.tag.as_bytes(), &args];
        for f in &files {
            hashed.push(f.path.as_bytes());
            hashed.push(&f.contents);
        }
        let hash = input_hash(&hashed);
        Ok(Context { files, hash })
    }

    /// The context as a deterministic tar, with `labels` appended to the Dockerfile as one
    /// `LABEL` instruction: one build step, where the API's `labels` option adds a step per label.
    fn pack(&self, context: &Context, labels: &BTreeMap<String, String>) -> Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        for f in &context.files {
            let labelled;
            let contents: &[u8] = if f.path == self.dockerfile {
                let pairs: Vec<String> =
                    labels.iter().map(|(k, v)| format!("{k}={}", serde_json::Value::from(v.as_str()))).collect();
                labelled = [f.contents.as_slice(), format!("\nLABEL {}\n", pairs.join(" ")).as_bytes()].concat();
                &labelled
            } else {
                &f.contents
            };
            let mut header = tar::Header::new_gnu();
            header.set_size(contents.len() as u64);
            header.set_mode(f.mode);
            header.set_mtime(0);
            header.set_cksum();
            builder
                .append_data(&mut header, &f.path, contents)
                .map_err(|e| Error::io(format!("packing {}", f.path), e))?;
        }
        builder.into_inner().map_err(|e| Error::io("packing the build context", e))
    }
}

struct Found {
    id: String,
    tags: Vec<String>,
    hash: String,
    created: i64,
    size: i64,
}

impl DockerImage {
    async fn find(&self, ctx: &StepCtx<'_>, step: Option<&str>) -> Result<Vec<Found>> {
        let docker = self.docker.client().await?;
        let filters = label_filters(ctx.ownership, step);
        let options = ListImagesOptionsBuilder::default().filters(&filters).build();
        let images = docker.list_images(Some(options)).await.map_err(|e| api_error("listing images", e))?;
        Ok(images
            .into_iter()
            .map(|i| Found {
                hash: i.labels.get(LABEL_INPUT).cloned().unwrap_or_default(),
                id: i.id,
                tags: i.repo_tags,
                created: i.created,
                size: i.size,
            })
            .collect())
    }
}

#[async_trait]
impl StepKind for DockerImage {
    fn name(&self) -> &'static str {
        "docker-image"
    }

    fn validate(&self, config: &Value) -> std::result::Result<(), String> {
        let c: Config = typed_config(config)?;
        if !c.tag.contains(':') || c.tag.chars().any(|ch| ch.is_ascii_uppercase() || ch.is_whitespace()) {
            return Err(format!("field `tag`: `{}` must be a lowercase `repository:tag`", c.tag));
        }
        Ok(())
    }

    async fn observe(&self, ctx: &StepCtx<'_>, desired: &Value, _pending: bool) -> Result<Observation> {
        let config: Config = typed_config(desired).map_err(Error::backend)?;
        let context = config.context(ctx)?;
        let found = self.find(ctx, Some(ctx.step)).await?;
        let Some(current) = found.iter().find(|f| f.hash == context.hash) else {
            return Ok(match found.first() {
                Some(old) => Observation {
                    action: Action::Replace,
                    reason: format!("build {} (context or build args changed since {})", config.tag, short_id(&old.id)),
                    outputs: Outputs::new(),
                    details: vec![("image".into(), short_id(&old.id)), ("state".into(), "stale".into())],
                    drift: false,
                },
                None => Observation::absent(format!("build {} from {}", config.tag, config.context)),
            });
        };
        let outputs = Outputs::from_iter([
            ("id".to_string(), Value::from(current.id.clone())),
            ("tag".to_string(), Value::from(config.tag.clone())),
        ]);
        let details = vec![
            ("image".into(), format!("{} {}", short_id(&current.id), current.tags.join(" "))),
            ("built".into(), age(current.created)),
            ("size".into(), format!("{:.1} MB", current.size as f64 / 1e6)),
        ];
        let tagged = current.tags.iter().any(|t| t == &config.tag);
        Ok(Observation {
            action: if tagged { Action::None } else { Action::Update },
            reason: if tagged {
                format!("{} is up to date", config.tag)
            } else {
                format!("re-tag {} as {}", short_id(&current.id), config.tag)
            },
            outputs,
            details,
            drift: !tagged,
        })
    }

    async fn apply(&self, ctx: &StepCtx<'_>, desired: &Value, observed: &Observation) -> Result<Outputs> {
        let config: Config = typed_config(desired).map_err(Error::backend)?;
        let docker = self.docker.client().await?;
        let (repo, tag) = config.tag.rsplit_once(':').expect("validated");
        if observed.action == Action::Update {
            let id = observed.outputs["id"].as_str().unwrap_or_default();
            let options = TagImageOptionsBuilder::default().repo(repo).tag(tag).build();
            docker.tag_image(id, Some(options)).await.map_err(|e| api_error("tagging the image", e))?;
            return Ok(observed.outputs.clone());
        }
        let context = config.context(ctx)?;
        let tar = config.pack(&context, &ctx.ownership.labels(ctx.step, &context.hash))?;
        let args: HashMap<String, String> = config.build_args.clone().into_iter().collect();
        let options = BuildImageOptionsBuilder::default()
            .dockerfile(&config.dockerfile)
            .t(&config.tag)
            .rm(true)
            .forcerm(true)
            .buildargs(&args)
            .build();
        let mut stream = docker.build_image(options, None, Some(bollard::body_full(tar.into())));
        let mut tail: Vec<String> = Vec::new();
        // Layers this build committed: removed again if the build fails.
        let mut layers: Vec<String> = Vec::new();
        let mut from_cache = false;
        let mut id = None;
        let mut failure = None;
        let build = async {
            while let Some(item) = stream.next().await {
                match item {
                    Ok(info) => {
                        if let Some(text) = info.stream.as_deref() {
                            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                                ctx.log(line);
                                tail.push(line.to_string());
                                // Layers this build made; not the ones it took from the cache, which
                                // other builds share.
                                match line.trim().strip_prefix("---> ").map(str::trim) {
                                    Some("Using cache") => from_cache = true,
                                    Some(layer) if !std::mem::take(&mut from_cache) => layers.push(layer.to_string()),
                                    _ => {}
                                }
                            }
                        }
                        if let Some(image) = &info.aux {
                            id = image.id.clone();
                        }
                        if let Some(msg) = info.error_detail.and_then(|d| d.message) {
                            failure = Some(msg);
                        }
                    }
                    Err(e) => failure = Some(engine_message(&e)),
                }
                if tail.len() > 15 {
                    tail.remove(0);
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(config.timeout), build).await.is_err() {
            failure = Some(format!("the build took longer than {}s (the step's `timeout`)", config.timeout));
        }
        if let Some(message) = failure {
            // Nothing half-made: drop the untagged layers of the failed build that nothing else
            // uses. Tagged images (the FROM base) are never touched, and the engine refuses to
            // remove a layer another image builds on, which is right.
            for layer in layers.iter().rev() {
                let untagged =
                    docker.inspect_image(layer).await.is_ok_and(|i| i.repo_tags.unwrap_or_default().is_empty());
                if untagged {
                    let options = RemoveImageOptionsBuilder::default().force(false).noprune(true).build();
                    let _ = docker.remove_image(layer, Some(options), None).await;
                }
            }
            return Err(Error::Backend {
                message: format!("building {} failed: {}", config.tag, message.trim()),
                detail: Some(tail.join("\n")),
                hint: Some("the lines above are the end of the build log; fix the Dockerfile or the build args".into()),
            });
        }
        let id = match id {
            Some(id) => id,
            // Older engines only say it in the stream; the tag is authoritative either way.
            None => docker
                .inspect_image(&config.tag)
                .await
                .map_err(|e| api_error("inspecting the new image", e))?
                .id
                .unwrap_or_default(),
        };
        // Older builds of this step are superseded: remove them (an image still in use stays).
        for old in self.find(ctx, Some(ctx.step)).await?.into_iter().filter(|f| f.id != id) {
            let options = RemoveImageOptionsBuilder::default().force(false).noprune(true).build();
            if docker.remove_image(&old.id, Some(options), None).await.is_ok() {
                ctx.log(&format!("removed superseded image {}", short_id(&old.id)));
            }
        }
        Ok(Outputs::from_iter([("id".to_string(), Value::from(id)), ("tag".to_string(), Value::from(config.tag))]))
    }

    async fn destroy(&self, ctx: &StepCtx<'_>, step: Option<&str>) -> Result<Vec<String>> {
        let docker = self.docker.client().await?;
        let mut removed = Vec::new();
        // `noprune`: the untagged parent layers are build cache that another owner's build on
        // the same engine may be reusing at this very moment; pruning them breaks that build.
        for image in self.find(ctx, step).await? {
            let options = RemoveImageOptionsBuilder::default().force(true).noprune(true).build();
            match docker.remove_image(&image.id, Some(options), None).await {
                Ok(_) => removed.push(format!("image {}", short_id(&image.id))),
                Err(e) if super::docker::is_not_found(&e) => {}
                Err(e) => {
                    return Err(api_error(&format!("removing image {}", short_id(&image.id)), e));
                }
            }
        }
        Ok(removed)
    }

    async fn diagnose(&self) -> Vec<Diagnosis> {
        vec![self.docker.diagnose().await]
    }
}

/// "5m ago" from a Unix timestamp.
fn age(created: i64) -> String {
    let secs = (crate::state::now() as i64 - created).max(0);
    match secs {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86400),
    }
}
