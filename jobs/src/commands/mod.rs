//! One module per subcommand, plus what they share: loading the job spec, building the runtime, and telling
//! whether one location lies inside another.

pub mod demo;
pub mod export;
pub mod export_records;
pub mod plan;
pub mod render;
pub mod run;
pub mod sql;
pub mod status;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use lyrics_pipeline::{Location, StoreRegistry, redact};

use crate::JobArgs;
use crate::spec::JobSpec;

/// The spec from `--config` (or the defaults) with the flags applied.
pub fn load_spec(args: &JobArgs) -> Result<JobSpec> {
    let mut spec = match &args.config {
        Some(path) => JobSpec::load(path)?,
        None => JobSpec::default(),
    };
    if let Some(input) = &args.input {
        spec.input.uri = Some(input.clone());
    }
    if let Some(format) = args.format {
        spec.input.format = Some(format);
    }
    Ok(spec)
}

pub fn input_of(spec: &JobSpec) -> Result<String> {
    spec.input.uri.clone().context("no input: pass --input URI or set input.uri in the job spec")
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("lyrics-io")
        .build()
        .context("cannot start the async runtime")
}

pub fn registry(spec: &JobSpec) -> Arc<StoreRegistry> {
    Arc::new(StoreRegistry::new(spec.storage).with_download(spec.download.clone()))
}

/// Refuses an output that lies inside the input (or is it): a later run would list the output's own shards as
/// input.
pub fn refuse_output_inside_input(registry: &StoreRegistry, input: &str, output: &str) -> Result<()> {
    let input_location =
        registry.locate(input).with_context(|| format!("cannot open the input {}", redact(input)))?;
    let output_location =
        registry.locate(output).with_context(|| format!("cannot open the output {}", redact(output)))?;
    if within(&output_location, &input_location).is_some() {
        bail!(
            "the output {} lies inside the input {} (or is it): a later run would read the output's own shards as \
             input; choose an output outside it",
            redact(output),
            redact(input)
        );
    }
    Ok(())
}

/// Where `inner` lies inside `outer`: the segments of its path below `outer`'s (none when it is `outer`), or
/// `None` when it lies elsewhere. Paths in a bucket compare segment by segment (`p/out` is inside `p`, `p-out` is
/// not); local paths compare as the file system resolves them, links followed as far as the path exists, so no
/// spelling hides one inside the other.
pub fn within(inner: &Location, outer: &Location) -> Option<Vec<String>> {
    if let (Some(inner), Some(outer)) = (inner.local_path(&inner.path), outer.local_path(&outer.path)) {
        let (inner, outer) = (real_path(&inner), real_path(&outer));
        let rest = inner.strip_prefix(&outer).ok()?;
        return Some(rest.iter().map(|c| c.to_string_lossy().into_owned()).collect());
    }
    if inner.base() != outer.base() {
        return None;
    }
    let mut parts = inner.path.parts();
    for part in outer.path.parts() {
        if parts.next()? != part {
            return None;
        }
    }
    Some(parts.map(|p| p.as_ref().to_string()).collect())
}

/// `path` with its longest existing ancestor resolved by the file system (links followed) and the rest appended.
fn real_path(path: &Path) -> PathBuf {
    let mut missing = Vec::new();
    let mut existing = path;
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            return missing.iter().rev().fold(real, |path, name| path.join(name));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name);
                existing = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inside(registry: &StoreRegistry, inner: &str, outer: &str) -> Option<Vec<String>> {
        within(&registry.locate(inner).unwrap(), &registry.locate(outer).unwrap())
    }

    #[test]
    fn bucket_prefixes_contain_by_segment() {
        let registry = StoreRegistry::default();
        assert_eq!(inside(&registry, "s3://b/p/out/", "s3://b/p"), Some(vec!["out".to_string()]));
        assert_eq!(inside(&registry, "s3://b/p", "s3://b/p/"), Some(vec![]));
        assert_eq!(inside(&registry, "s3://b/p/a/../x", "s3://b/p"), Some(vec!["x".to_string()]));
        assert_eq!(inside(&registry, "s3://b/p-out", "s3://b/p"), None);
        assert_eq!(inside(&registry, "s3://other/p/out", "s3://b/p"), None);
        assert_eq!(inside(&registry, "gs://b/p/out", "s3://b/p"), None);
        assert_eq!(inside(&registry, "s3://b/p/out", "s3://b/"), Some(vec!["p".to_string(), "out".to_string()]));
        assert_eq!(inside(&registry, "/tmp/p/out", "s3://b/p"), None);
    }

    #[test]
    fn local_paths_contain_as_the_file_system_resolves_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("corpus")).unwrap();
        std::os::unix::fs::symlink(root.join("corpus"), root.join("link")).unwrap();
        let registry = StoreRegistry::default();
        let path = |p: &str| root.join(p).to_string_lossy().into_owned();
        let corpus = path("corpus");
        assert_eq!(inside(&registry, &path("link/new/out"), &corpus), Some(vec!["new".into(), "out".into()]));
        assert_eq!(inside(&registry, &path("corpus/../corpus"), &path("link")), Some(vec![]));
        assert_eq!(inside(&registry, &format!("file://{}", path("corpus/x")), &corpus), Some(vec!["x".into()]));
        assert_eq!(inside(&registry, &path("corpus-out"), &corpus), None);
        assert_eq!(inside(&registry, &path("other/corpus"), &corpus), None);
    }
}
