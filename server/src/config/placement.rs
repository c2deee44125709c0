//! Placement overrides: where `hadron cluster move` put a replicated
//! partition's replicas, kept in `<data dir>/cluster.placement` until a
//! metadata group holds them (docs/replication.md section 9). One line
//! per moved partition, in (stream, partition) order:
//!
//! ```text
//! STREAM PARTITION V1,V2,V3 [created]
//! ```
//!
//! The voters are in preference order (the first is the preferred
//! leader). `created` marks a partition the metadata group's leader
//! placed when its stream was created or grew (`Overrides::place`): its
//! replicas start a fresh group with these voters, as under static
//! placement; a moved one's new replicas join from the group's leader
//! instead. A partition with no line is placed statically
//! (`ClusterConfig::placement`). The file is rewritten whole, durably (a
//! temporary file, fsync, rename, fsync of the directory), before a move
//! is applied, so a restart says the same target again.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

/// The overrides file in the data directory.
pub const PLACEMENT_FILE: &str = "cluster.placement";
/// Largest overrides file read at start.
pub const PLACEMENT_FILE_BYTES_MAX: u64 = 16 << 20;
/// Most voters one override names (the reconciler's limit too).
pub const PLACEMENT_VOTERS_MAX: usize = 7;

/// The word that marks a placement made at creation.
const CREATED: &str = "created";

/// (stream, partition) -> (voters, placed at creation).
type Map = BTreeMap<(String, u32), (Vec<u64>, bool)>;

/// This node's overrides, shared by its shards.
#[derive(Debug, Default)]
pub struct Overrides {
    map: Mutex<Map>,
}

impl Overrides {
    /// Reads `<data_dir>/cluster.placement`; none when it does not exist.
    pub fn load(data_dir: &Path) -> Result<Overrides, String> {
        let path = data_dir.join(PLACEMENT_FILE);
        let text = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
            Ok(m) if m.len() > PLACEMENT_FILE_BYTES_MAX => {
                return Err(format!(
                    "{}: {} bytes, more than {PLACEMENT_FILE_BYTES_MAX}",
                    path.display(),
                    m.len()
                ));
            }
            Ok(_) => std::fs::read_to_string(&path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?,
        };
        let map = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Overrides {
            map: Mutex::new(map),
        })
    }

    /// The voters `stream`'s `partition` was moved to, if it was.
    pub fn get(&self, stream: &str, partition: u32) -> Option<Vec<u64>> {
        self.lock()
            .get(&(stream.to_owned(), partition))
            .map(|(voters, _)| voters.clone())
    }

    /// Whether `stream`'s `partition` was placed at its creation (and not
    /// moved since): its fresh replicas start with its voters.
    pub fn created(&self, stream: &str, partition: u32) -> bool {
        self.lock()
            .get(&(stream.to_owned(), partition))
            .is_some_and(|(_, created)| *created)
    }

    /// Every override, in (stream, partition) order (the metadata group's
    /// `State` carries them).
    pub fn all(&self) -> Vec<(String, u32, Vec<u64>)> {
        self.lock()
            .iter()
            .map(|((stream, partition), (voters, _))| (stream.clone(), *partition, voters.clone()))
            .collect()
    }

    /// The partitions placed at creation, in (stream, partition) order.
    pub fn all_created(&self) -> Vec<(String, u32)> {
        self.lock()
            .iter()
            .filter(|(_, (_, created))| *created)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Persists `voters` for `stream`'s `partition` in `data_dir`, then
    /// holds it (a failed write changes nothing).
    pub fn set(
        &self,
        data_dir: &Path,
        stream: &str,
        partition: u32,
        voters: Vec<u64>,
    ) -> Result<(), String> {
        let placed = [(stream.to_owned(), partition, voters)];
        self.write(data_dir, &placed, false)
    }

    /// Persists the placements of new partitions (`created`: see the
    /// module header) in `data_dir` in one write, then holds them (a
    /// failed write changes nothing).
    pub fn place(&self, data_dir: &Path, placed: &[(String, u32, Vec<u64>)]) -> Result<(), String> {
        self.write(data_dir, placed, true)
    }

    fn write(
        &self,
        data_dir: &Path,
        placed: &[(String, u32, Vec<u64>)],
        created: bool,
    ) -> Result<(), String> {
        for (stream, partition, voters) in placed {
            check_voters(voters).map_err(|e| format!("{stream}/{partition}: {e}"))?;
        }
        let mut map = self.lock();
        let mut next = map.clone();
        for (stream, partition, voters) in placed {
            next.insert((stream.clone(), *partition), (voters.clone(), created));
        }
        if next == *map {
            return Ok(());
        }
        super::cluster::write_members(&data_dir.join(PLACEMENT_FILE), &render(&next))?;
        *map = next;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        // A panic while holding it left a whole map (every write replaces
        // it at once): still usable.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// 1 to [`PLACEMENT_VOTERS_MAX`] distinct node ids, from 1.
pub fn check_voters(voters: &[u64]) -> Result<(), String> {
    let mut sorted = voters.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if voters.is_empty()
        || voters.len() > PLACEMENT_VOTERS_MAX
        || sorted.len() != voters.len()
        || voters.contains(&0)
    {
        return Err(format!(
            "voters {voters:?}: 1 to {PLACEMENT_VOTERS_MAX} distinct node ids (from 1)"
        ));
    }
    Ok(())
}

fn parse(text: &str) -> Result<Map, String> {
    let mut map = Map::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |why: String| format!("line {}: {why}", i + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let (stream, partition, voters, created) = match fields[..] {
            [stream, partition, voters] => (stream, partition, voters, false),
            [stream, partition, voters, CREATED] => (stream, partition, voters, true),
            _ => {
                return Err(bad(format!(
                    "expected `STREAM PARTITION V1,V2,.. [{CREATED}]`, found {line:?}"
                )));
            }
        };
        let partition = partition
            .parse::<u32>()
            .map_err(|e| bad(format!("partition {partition:?}: {e}")))?;
        let voters = voters
            .split(',')
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|e| bad(format!("voter {v:?}: {e}")))
            })
            .collect::<Result<Vec<u64>, String>>()?;
        check_voters(&voters).map_err(bad)?;
        map.insert((stream.to_owned(), partition), (voters, created));
    }
    Ok(map)
}

fn render(map: &Map) -> String {
    let mut text = String::new();
    for ((stream, partition), (voters, created)) in map {
        let voters: Vec<String> = voters.iter().map(u64::to_string).collect();
        let mark = if *created { " created" } else { "" };
        text.push_str(&format!(
            "{stream} {partition} {}{mark}\n",
            voters.join(",")
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_is_read_back_after_a_restart_and_a_second_move_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let overrides = Overrides::load(dir.path()).unwrap();
        assert_eq!(overrides.get("orders", 0), None);
        overrides
            .set(dir.path(), "orders", 0, vec![1, 2, 4])
            .unwrap();
        overrides.set(dir.path(), "orders", 3, vec![4, 3]).unwrap();
        overrides
            .set(dir.path(), "orders", 0, vec![2, 4, 3])
            .unwrap();
        let text = std::fs::read_to_string(dir.path().join(PLACEMENT_FILE)).unwrap();
        assert_eq!(text, "orders 0 2,4,3\norders 3 4,3\n");
        let again = Overrides::load(dir.path()).unwrap();
        assert_eq!(again.get("orders", 0), Some(vec![2, 4, 3]));
        assert_eq!(again.get("orders", 3), Some(vec![4, 3]));
        assert_eq!(again.get("orders", 1), None);
    }

    #[test]
    fn placements_at_creation_are_read_back_marked_and_a_move_clears_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let overrides = Overrides::load(dir.path()).unwrap();
        let placed = vec![
            ("orders".into(), 0, vec![4, 1, 2]),
            ("orders".into(), 1, vec![2, 3, 4]),
        ];
        overrides.place(dir.path(), &placed).unwrap();
        let text = std::fs::read_to_string(dir.path().join(PLACEMENT_FILE)).unwrap();
        assert_eq!(text, "orders 0 4,1,2 created\norders 1 2,3,4 created\n");
        let again = Overrides::load(dir.path()).unwrap();
        assert_eq!(again.get("orders", 0), Some(vec![4, 1, 2]));
        assert!(again.created("orders", 0) && again.created("orders", 1));
        assert!(!again.created("orders", 2));
        again.set(dir.path(), "orders", 1, vec![1, 3, 4]).unwrap();
        assert!(!again.created("orders", 1));
        assert_eq!(again.all_created(), vec![("orders".to_owned(), 0)]);
        let bad = vec![("orders".into(), 5, vec![1, 1])];
        let e = again.place(dir.path(), &bad).unwrap_err();
        assert!(e.starts_with("orders/5: voters [1, 1]"), "{e}");
        assert_eq!(again.get("orders", 5), None);
    }

    #[test]
    fn bad_voters_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let overrides = Overrides::load(dir.path()).unwrap();
        for voters in [vec![], vec![1, 1], vec![0, 1], (1..=8).collect()] {
            let e = overrides.set(dir.path(), "s", 0, voters).unwrap_err();
            assert!(e.contains("distinct node ids"), "{e}");
        }
        assert!(!dir.path().join(PLACEMENT_FILE).exists());
    }

    #[test]
    fn a_damaged_file_is_refused_naming_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PLACEMENT_FILE);
        std::fs::write(&path, "orders 0 1,2,3\norders x 1,2\n").unwrap();
        let e = Overrides::load(dir.path()).unwrap_err();
        assert!(e.contains("line 2: partition \"x\""), "{e}");
        std::fs::write(&path, "orders 0 1,2,2\n").unwrap();
        let e = Overrides::load(dir.path()).unwrap_err();
        assert!(e.contains("line 1: voters [1, 2, 2]"), "{e}");
    }
}
