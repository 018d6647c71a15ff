//! The files labs use (sample apps, Dockerfiles, later user-data, manifests, playbooks): embedded
//! in the binary, or read from disk next to a spec that an instructor put in --labs-dir.

use std::path::{Component, Path, PathBuf};

use include_dir::{Dir, DirEntry, include_dir};

use crate::error::{Error, Result};

static EMBEDDED_LABS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/labs");
static EMBEDDED_APPS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/apps");
static EMBEDDED_USERDATA: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/userdata");
static EMBEDDED_MANIFESTS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/manifests");

/// Top-level folders of the repository that ship inside the binary.
fn embedded_root(name: &str) -> Option<&'static Dir<'static>> {
    match name {
        "labs" => Some(&EMBEDDED_LABS),
        "apps" => Some(&EMBEDDED_APPS),
        "userdata" => Some(&EMBEDDED_USERDATA),
        "manifests" => Some(&EMBEDDED_MANIFESTS),
        _ => None,
    }
}

/// Built-in lab specs: (file name, text).
pub fn builtin_specs() -> Vec<(&'static str, &'static str)> {
    EMBEDDED_LABS
        .files()
        .filter(|f| f.path().extension().is_some_and(|e| e == "yaml"))
        .filter_map(|f| Some((f.path().to_str()?, f.contents_utf8()?)))
        .collect()
}

/// Where a lab spec came from; relative paths in it resolve from here.
#[derive(Debug, Clone)]
pub enum SpecSource {
    /// Shipped in the binary, as `labs/<file>`.
    Builtin { file: String },
    /// A file on disk (an instructor's --labs-dir).
    Disk { path: PathBuf },
}

impl SpecSource {
    pub fn label(&self) -> String {
        match self {
            SpecSource::Builtin { file } => format!("labs/{file} (built in)"),
            SpecSource::Disk { path } => path.display().to_string(),
        }
    }

    /// Resolves a folder named relative to the spec file (e.g. `../apps/sample-app`). A disk spec
    /// whose folder does not exist on disk falls back to the built-in copy, so an instructor can
    /// override a spec without copying the sample apps.
    pub fn resolve_dir(&self, rel: &str) -> Result<Tree> {
        let embedded = || -> Option<Tree> {
            let joined = normalize(&Path::new("labs").join(rel))?;
            let mut parts = joined.splitn(2, '/');
            let root = embedded_root(parts.next()?)?;
            match parts.next() {
                None => Some(Tree::Embedded(root)),
                Some(rest) => root.get_dir(rest).map(Tree::Embedded),
            }
        };
        if let SpecSource::Disk { path } = self {
            let dir = path.parent().unwrap_or(Path::new(".")).join(rel);
            if dir.is_dir() {
                return Ok(Tree::Disk(dir));
            }
        }
        embedded().ok_or_else(|| Error::Backend {
            message: format!("folder `{rel}` (relative to {}) does not exist", self.label()),
            detail: None,
            hint: Some("paths in a spec are relative to the spec file; built-in folders are ../apps/…".into()),
        })
    }
}

impl SpecSource {
    /// Reads a file named relative to the spec (disk first, then the built-in copy).
    pub fn read_file(&self, rel: &str) -> Result<String> {
        let path = Path::new(rel);
        let (dir, name) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
            (Some(d), Some(n)) => (d.to_string_lossy().into_owned(), n.to_string()),
            _ => return Err(Error::backend(format!("`{rel}` is not a file path"))),
        };
        let dir = if dir.is_empty() { ".".to_string() } else { dir };
        let tree = self.resolve_dir(&dir)?;
        let file = tree.files()?.into_iter().find(|f| f.path == name).ok_or_else(|| Error::Backend {
            message: format!("file `{rel}` (relative to {}) does not exist", self.label()),
            detail: None,
            hint: Some(
                "paths in a spec are relative to the spec file; built-in files are ../userdata/…, ../apps/…".into(),
            ),
        })?;
        String::from_utf8(file.contents).map_err(|_| Error::backend(format!("`{rel}` is not UTF-8 text")))
    }
}

/// `labs/../apps/x` → `apps/x`; None if it climbs out of the tree.
fn normalize(p: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?.to_string()),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

/// A folder of files, embedded or on disk.
#[derive(Debug, Clone)]
pub enum Tree {
    Embedded(&'static Dir<'static>),
    Disk(PathBuf),
}

/// One file of a tree: path relative to the tree's root, contents, Unix mode.
pub struct TreeFile {
    pub path: String,
    pub contents: Vec<u8>,
    pub mode: u32,
}

impl Tree {
    /// All files, sorted by path (so archives and hashes are deterministic).
    pub fn files(&self) -> Result<Vec<TreeFile>> {
        let mut out = Vec::new();
        match self {
            Tree::Embedded(dir) => collect_embedded(dir, dir.path(), &mut out),
            Tree::Disk(root) => collect_disk(root, root, &mut out)?,
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    pub fn describe(&self) -> String {
        match self {
            Tree::Embedded(dir) => format!("{} (built in)", dir.path().display()),
            Tree::Disk(p) => p.display().to_string(),
        }
    }
}

fn collect_embedded(dir: &Dir<'static>, root: &Path, out: &mut Vec<TreeFile>) {
    for entry in dir.entries() {
        match entry {
            DirEntry::Dir(d) => collect_embedded(d, root, out),
            DirEntry::File(f) => {
                let rel = f.path().strip_prefix(root).unwrap_or(f.path());
                let exec = f.path().extension().is_some_and(|e| e == "sh");
                out.push(TreeFile {
                    path: rel.to_string_lossy().into_owned(),
                    contents: f.contents().to_vec(),
                    mode: if exec { 0o755 } else { 0o644 },
                });
            }
        }
    }
}

fn collect_disk(root: &Path, dir: &Path, out: &mut Vec<TreeFile>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        let path = entry.path();
        let meta = entry.metadata().map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if meta.is_dir() {
            collect_disk(root, &path, out)?;
        } else if meta.is_file() {
            let contents = std::fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
            out.push(TreeFile { path: rel, contents, mode: meta.permissions().mode() & 0o777 });
        }
    }
    Ok(())
}

/// `.dockerignore` rules: `name`, `dir/`, globs with `*` and `?` within a path segment, `**`
/// across segments, and `!` exceptions; later rules win, as in Docker.
pub struct IgnoreRules {
    rules: Vec<(bool, Vec<String>)>,
}

impl IgnoreRules {
    pub fn parse(text: &str) -> Self {
        let rules = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (negate, pat) = match l.strip_prefix('!') {
                    Some(p) => (true, p.trim()),
                    None => (false, l),
                };
                let pat = pat.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/');
                (negate, pat.split('/').map(String::from).collect())
            })
            .collect();
        IgnoreRules { rules }
    }

    pub fn is_ignored(&self, path: &str) -> bool {
        let segs: Vec<&str> = path.split('/').collect();
        let mut ignored = false;
        for (negate, pat) in &self.rules {
            // A rule matching a parent folder matches everything under it.
            if (1..=segs.len()).any(|n| match_segments(pat, &segs[..n])) {
                ignored = !negate;
            }
        }
        ignored
    }
}

fn match_segments(pat: &[String], path: &[&str]) -> bool {
    match (pat.first(), path.first()) {
        (None, None) => true,
        (Some(p), _) if p == "**" => (0..=path.len()).any(|i| match_segments(&pat[1..], &path[i..])),
        (Some(p), Some(s)) => glob(p.as_bytes(), s.as_bytes()) && match_segments(&pat[1..], &path[1..]),
        _ => false,
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_rules() {
        let rules = IgnoreRules::parse("# deps\nnode_modules\n/coverage/\n*.log\n**/*.tmp\ntest\n!test/keep.js\n");
        assert!(rules.is_ignored("node_modules/express/index.js"));
        assert!(rules.is_ignored("coverage/lcov.info"));
        assert!(rules.is_ignored("npm-debug.log"));
        assert!(rules.is_ignored("a/b/c.tmp"));
        assert!(rules.is_ignored("test/app.test.js"));
        assert!(!rules.is_ignored("test/keep.js"));
        assert!(!rules.is_ignored("views/hello.html"));
        assert!(!rules.is_ignored("app.js"));
    }

    #[test]
    fn builtin_folders_resolve_relative_to_the_spec() {
        let src = SpecSource::Builtin { file: "td4.yaml".into() };
        let tree = src.resolve_dir("../apps/sample-app").unwrap();
        let files = tree.files().unwrap();
        assert!(files.iter().any(|f| f.path == "Dockerfile"));
        assert!(files.iter().any(|f| f.path == "views/hello.html"));
        assert!(src.resolve_dir("../apps/nope").is_err());
        assert!(src.resolve_dir("../../etc").is_err());
    }

    #[test]
    fn a_disk_spec_without_the_folder_falls_back_to_the_builtin_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let src = SpecSource::Disk { path: tmp.path().join("td4.yaml") };
        assert!(matches!(src.resolve_dir("../apps/sample-app").unwrap(), Tree::Embedded(_)));
        std::fs::create_dir_all(tmp.path().join("ctx")).unwrap();
        assert!(matches!(src.resolve_dir("ctx").unwrap(), Tree::Disk(_)));
    }
}
