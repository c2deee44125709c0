//! The streams, pipelines and tokens a server serves ([`Topology`]) and the file
//! that keeps applied resources across restarts (`<data dir>/resources.yaml`,
//! written only when its content changes).

use super::*;

/// The file that keeps applied resources.
pub const RESOURCES_FILE: &str = "resources.yaml";

/// The streams, pipelines and tokens the server serves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    /// Streams by name.
    pub streams: BTreeMap<String, StreamSpec>,
    /// Pipelines by name.
    pub pipelines: BTreeMap<String, PipelineSpec>,
    /// Tokens by name (each holds only its secret's hash).
    pub tokens: BTreeMap<String, TokenSpec>,
}

impl Topology {
    /// The resources, for persisting: streams first, so that pipelines'
    /// source streams are known when they are read back.
    pub fn resources(&self) -> Vec<Resource> {
        let streams = self.streams.values().cloned().map(Resource::Stream);
        let pipelines = self.pipelines.values().cloned().map(Resource::Pipeline);
        let tokens = self.tokens.values().cloned().map(Resource::Token);
        streams.chain(pipelines).chain(tokens).collect()
    }

    /// What these resources cost, for the server's limits.
    pub fn counts(&self) -> ResourceCounts {
        let partitions_of = |stream: &str| {
            self.streams
                .get(stream)
                .map_or(0, |s| u64::from(s.partitions))
        };
        ResourceCounts {
            streams: self.streams.len() as u64,
            partitions: self.streams.values().map(|s| u64::from(s.partitions)).sum(),
            pipelines: self.pipelines.len() as u64,
            pipeline_runs: self
                .pipelines
                .values()
                .map(|p| partitions_of(&p.source_stream))
                .sum(),
            tokens: self.tokens.len() as u64,
        }
    }

    /// Adds or replaces a resource, checking what can be checked without
    /// runtime state. Returns a one-line summary.
    pub fn put(&mut self, resource: Resource) -> Result<String, Error> {
        match resource {
            Resource::Stream(spec) => match self.streams.get(&spec.name) {
                Some(old) if old == &spec => Ok(format!("stream/{} unchanged", spec.name)),
                Some(old) if spec.partitions < old.partitions => Err(Error::PartitionsShrink {
                    stream: spec.name.clone(),
                    from: old.partitions,
                    to: spec.partitions,
                }),
                old => {
                    let verb = if old.is_some() {
                        "configured"
                    } else {
                        "created"
                    };
                    let line = format!(
                        "stream/{} {verb} ({} partitions)",
                        spec.name, spec.partitions
                    );
                    self.streams.insert(spec.name.clone(), spec);
                    Ok(line)
                }
            },
            Resource::Pipeline(spec) => {
                spec.plan(|s| self.streams.contains_key(s))?;
                let line = match self.pipelines.get(&spec.name) {
                    Some(old) if old == &spec => format!("pipeline/{} unchanged", spec.name),
                    Some(_) => format!(
                        "pipeline/{} configured ({} stages)",
                        spec.name,
                        spec.stages.len()
                    ),
                    None => format!(
                        "pipeline/{} created ({} stages)",
                        spec.name,
                        spec.stages.len()
                    ),
                };
                self.pipelines.insert(spec.name.clone(), spec);
                Ok(line)
            }
            Resource::Token(spec) => {
                let verb = match self.tokens.get(&spec.name) {
                    Some(old) if old == &spec => "unchanged",
                    Some(_) => "configured",
                    None => "created",
                };
                let line = format!("token/{} {verb}", spec.name);
                self.tokens.insert(spec.name.clone(), spec);
                Ok(line)
            }
        }
    }
}

/// Where shard 0 keeps the applied resources, so that a restart installs
/// them again: `<data dir>/resources.yaml` in the server; in memory (that
/// survives the simulated crashes) in the shard simulation.
pub trait ResourceStore {
    /// Makes `resources` durable; `Ok(false)` when they were already.
    fn save(&self, resources: &[Resource]) -> Result<bool, String>;
}

/// The resources file in a data directory.
#[derive(Debug)]
pub struct FileResources(pub std::path::PathBuf);

impl ResourceStore for FileResources {
    fn save(&self, resources: &[Resource]) -> Result<bool, String> {
        persist_resources(&self.0, resources)
    }
}

/// Writes the resources file when its content changes (see
/// [`write_if_changed`]). Returns whether it wrote.
pub fn persist_resources(data_dir: &Path, resources: &[Resource]) -> Result<bool, String> {
    let yaml = config::to_yaml_documents(resources).map_err(|e| e.to_string())?;
    write_if_changed(data_dir, RESOURCES_FILE, yaml.as_bytes())
}

/// Writes `<dir>/<name>` atomically (a temporary file, fsync, rename, fsync
/// of the directory), unless it already holds exactly `content`: then
/// nothing is written, so a start that changes nothing needs no disk space
/// and no write permission. Returns whether it wrote.
pub fn write_if_changed(dir: &Path, name: &str, content: &[u8]) -> Result<bool, String> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(old) if old == content => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    let tmp = dir.join(format!("{name}.tmp"));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, content)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(true)
}

/// Reads the persisted resources; `None` when the data dir has none yet
/// (a first start).
pub fn load_resources(data_dir: &Path) -> Result<Option<Vec<Resource>>, String> {
    let path = data_dir.join(RESOURCES_FILE);
    match std::fs::read_to_string(&path) {
        Ok(yaml) => config::parse_documents(&yaml)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    pub(super) fn resources_file_is_written_only_when_its_content_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RESOURCES_FILE);
        let events = [Resource::Stream(StreamSpec::with_defaults("events"))];
        assert_eq!(persist_resources(dir.path(), &events), Ok(true));
        let first = std::fs::metadata(&path).unwrap();
        // A write now would fail: the temporary file's name is taken by a
        // directory (as a full disk or a read-only file would make it fail).
        std::fs::create_dir(dir.path().join(format!("{RESOURCES_FILE}.tmp"))).unwrap();
        assert_eq!(persist_resources(dir.path(), &events), Ok(false));
        let second = std::fs::metadata(&path).unwrap();
        assert_eq!(first.ino(), second.ino());
        assert_eq!(first.mtime_nsec(), second.mtime_nsec());
        assert_eq!(load_resources(dir.path()), Ok(Some(events.to_vec())));
        // A change must be written, and the failure is reported.
        let orders = [Resource::Stream(StreamSpec::with_defaults("orders"))];
        let e = persist_resources(dir.path(), &orders).unwrap_err();
        assert!(e.starts_with("cannot write "), "{e}");
        std::fs::remove_dir(dir.path().join(format!("{RESOURCES_FILE}.tmp"))).unwrap();
        assert_eq!(persist_resources(dir.path(), &orders), Ok(true));
        assert_eq!(load_resources(dir.path()), Ok(Some(orders.to_vec())));
        assert_ne!(std::fs::metadata(&path).unwrap().ino(), first.ino());
    }

    #[test]
    pub(super) fn a_data_dir_without_resources_file_is_a_first_start() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_resources(dir.path()), Ok(None));
    }
}
