//! A simulated, fault-injecting file system for tests.
//!
//! Every file keeps two images: `written` (what reads see) and `durable` (what
//! survives a crash). `fdatasync` copies the first onto the second. The writes
//! made since the last `fdatasync` are remembered in order, so that a crash
//! can decide for each of them, from the seed, whether it reached the disk
//! whole, not at all, as a torn prefix, or as a torn prefix with a flipped
//! bit. File creations, removals and renames become durable only with
//! `sync_dir`; a crash before it undoes a rename, bringing `from` back with
//! the contents it had when it was renamed (the log syncs the directory
//! right after a rename, before it writes the file).
//!
//! Faults are driven by one seeded generator, so a failing test is replayed
//! by its seed. Each operation may also return `Pending` a few times before it
//! completes, which interleaves concurrent callers differently per seed.
//!
//! A handle opened [`Writes::Through`] (`O_DSYNC`) makes each successful
//! write durable as it returns, and nothing else: the write's own bytes,
//! and the file's length (`O_DSYNC` syncs the size with the data). It takes
//! two steps, each a point where a crash can fall: the write lands
//! (unsynced, so a crash now may tear it or lose it), then it is made
//! durable. A write-through write that fails stays unsynced, to be lost or
//! torn by a crash like any other.
//!
//! The simulation is stricter than Linux where strictness finds bugs: writes
//! must be aligned to [`IO_ALIGN_BYTES`], and a handle opened before a crash
//! fails every later operation.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;

use super::{IO_ALIGN_BYTES, Storage, StorageFile, Writes};

/// A small, fast, seedable generator (SplitMix64). Good enough to drive
/// faults and workloads; not for anything cryptographic.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator that yields the same sequence for the same seed.
    pub fn new(seed: u64) -> Self {
        SimRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        self.next_u64() % bound
    }

    /// True with probability `ppm` / 1,000,000.
    pub fn chance_ppm(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.below(1_000_000) < u64::from(ppm)
    }
}

/// Fault rates and scheduling noise, in parts per million of operations.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimFaults {
    /// Chance that a write fails (after tearing part of it into the file).
    pub write_fail_ppm: u32,
    /// Chance that an fdatasync fails (making nothing durable).
    pub sync_fail_ppm: u32,
    /// Each operation returns `Pending` up to this many times first.
    pub yields_max: u32,
    /// The disk is full: every allocation fails with `StorageFull`
    /// (ENOSPC), having changed nothing: a `preallocate` that would grow
    /// a file, and a `create_with` of a file that does not exist yet.
    /// Writes are not refused (the log writes only into space it
    /// allocated first).
    pub disk_full: bool,
}

fn disk_full_error(what: &str, path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::StorageFull,
        format!("simulated ENOSPC: {what} {}", path.display()),
    )
}

/// What a crash does to each write that was not yet fdatasynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Every such write is lost.
    DropUnsynced,
    /// Each such write, chosen by the seed, is lost, kept whole, kept as a
    /// torn prefix, or kept as a torn prefix with one bit flipped among the
    /// bytes it changed.
    Torn,
}

#[derive(Debug, Default, Clone)]
struct SimFile {
    written: Vec<u8>,
    durable: Vec<u8>,
    /// Writes not yet covered by an fdatasync, in order.
    unsynced: Vec<Unsynced>,
    /// Writes ever removed from the front of `unsynced` (so that an
    /// fdatasync can name, by count, the writes it covers).
    unsynced_base: u64,
    /// The newest fdatasync issued, and the newest applied: an older one
    /// finishing later does not undo a newer one.
    syncs_issued: u64,
    syncs_applied: u64,
    /// Whether the file survives a crash (its creation was `sync_dir`ed).
    exists_durably: bool,
}

/// A write not yet covered by an fdatasync.
#[derive(Debug, Clone)]
struct Unsynced {
    pos: u64,
    bytes: Vec<u8>,
    /// Made durable by itself (a write-through write that returned): it is
    /// in `durable`, and a crash keeps it whole, over the older writes
    /// before it. It stays in the list only to keep that order.
    durable: bool,
}

#[derive(Debug)]
struct SimFs {
    files: BTreeMap<PathBuf, SimFile>,
    /// Files removed since their directory was last synced: they come back
    /// after a crash, with their durable contents.
    removed: BTreeMap<PathBuf, SimFile>,
    dirs: BTreeSet<PathBuf>,
    rng: SimRng,
    faults: SimFaults,
    /// Bumped by every crash; handles from an older generation are dead.
    generation: u64,
    /// Operations performed so far (used to crash at a chosen point).
    ops: u64,
    crash_at_op: Option<u64>,
    frozen: bool,
    stats: SimStats,
}

/// Counts of completed operations, for tests that check how the log uses
/// its storage (group commit, for one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Successful writes.
    pub writes: u64,
    /// Successful fdatasyncs.
    pub syncs: u64,
}

/// A simulated file system; clones share the same files.
#[derive(Debug, Clone)]
pub struct SimStorage {
    fs: Rc<RefCell<SimFs>>,
}

fn crashed_error() -> io::Error {
    io::Error::other("simulated crash: the storage is frozen until restart")
}

impl SimStorage {
    /// An empty file system whose faults and noise follow `seed`.
    pub fn new(seed: u64, faults: SimFaults) -> Self {
        SimStorage {
            fs: Rc::new(RefCell::new(SimFs {
                files: BTreeMap::new(),
                removed: BTreeMap::new(),
                dirs: BTreeSet::new(),
                rng: SimRng::new(seed),
                faults,
                generation: 0,
                ops: 0,
                crash_at_op: None,
                frozen: false,
                stats: SimStats::default(),
            })),
        }
    }

    /// Changes the fault rates from now on.
    pub fn set_faults(&self, faults: SimFaults) {
        self.fs.borrow_mut().faults = faults;
    }

    /// Freezes the storage after `ops` more operations: from then on every
    /// operation fails, as if the machine had lost power, until [`restart`].
    ///
    /// [`restart`]: SimStorage::restart
    pub fn crash_after_ops(&self, ops: u64) {
        let mut fs = self.fs.borrow_mut();
        fs.crash_at_op = Some(fs.ops + ops);
    }

    /// Operations completed so far.
    pub fn stats(&self) -> SimStats {
        self.fs.borrow().stats
    }

    /// Cancels a crash armed by [`crash_after_ops`](SimStorage::crash_after_ops)
    /// that has not happened yet.
    pub fn disarm_crash(&self) {
        self.fs.borrow_mut().crash_at_op = None;
    }

    /// Whether the storage is frozen by a crash.
    pub fn is_frozen(&self) -> bool {
        self.fs.borrow().frozen
    }

    /// Crashes now and restarts: see [`restart`](SimStorage::restart).
    pub fn crash(&self, mode: CrashMode) {
        self.fs.borrow_mut().frozen = true;
        self.restart(mode);
    }

    /// Brings the storage back after a crash: every file becomes what its
    /// durable image plus `mode`'s treatment of its unsynced writes make it;
    /// files whose creation was not synced disappear, files whose removal was
    /// not synced come back; handles opened before are dead.
    pub fn restart(&self, mode: CrashMode) {
        let mut guard = self.fs.borrow_mut();
        let fs = &mut *guard;
        let removed = std::mem::take(&mut fs.removed);
        for (path, file) in removed {
            if file.exists_durably && !fs.files.contains_key(&path) {
                fs.files.insert(path, file);
            }
        }
        fs.files.retain(|_, f| f.exists_durably);
        for file in fs.files.values_mut() {
            let mut image = std::mem::take(&mut file.durable);
            file.unsynced_base += file.unsynced.len() as u64;
            for Unsynced {
                pos,
                bytes,
                durable,
            } in std::mem::take(&mut file.unsynced)
            {
                if durable {
                    write_into(&mut image, pos, &bytes);
                    continue;
                }
                let keep = match mode {
                    CrashMode::DropUnsynced => 0,
                    CrashMode::Torn => match fs.rng.below(4) {
                        0 => 0,
                        1 => bytes.len(),
                        _ => fs.rng.below(bytes.len() as u64 + 1) as usize,
                    },
                };
                let mut kept = bytes[..keep].to_vec();
                // Garbage lands only where the write changed the contents:
                // disks write a sector atomically, so rewriting bytes with
                // the same values (the log's partial tail page) cannot
                // corrupt them.
                let changed: Vec<usize> = (0..keep)
                    .filter(|&i| image.get(pos as usize + i) != Some(&kept[i]))
                    .collect();
                if mode == CrashMode::Torn && !changed.is_empty() && fs.rng.below(4) == 0 {
                    let at = changed[fs.rng.below(changed.len() as u64) as usize];
                    kept[at] ^= 1 << fs.rng.below(8);
                }
                write_into(&mut image, pos, &kept);
            }
            file.written = image.clone();
            file.durable = image;
        }
        fs.generation += 1;
        fs.crash_at_op = None;
        fs.frozen = false;
    }

    /// Flips one bit of `path` at byte `pos`, in both images: media
    /// corruption, which no fdatasync protects against.
    pub fn flip_bit(&self, path: &Path, pos: u64, bit: u8) -> io::Result<()> {
        let mut fs = self.fs.borrow_mut();
        let file = fs.files.get_mut(path).ok_or_else(|| not_found(path))?;
        for image in [&mut file.written, &mut file.durable] {
            if let Some(byte) = image.get_mut(pos as usize) {
                *byte ^= 1 << (bit % 8);
            }
        }
        Ok(())
    }

    /// Overwrites `path` at `pos` with `bytes` in both images, as a test's
    /// way of planting any on-disk state it likes.
    pub fn plant(&self, path: &Path, pos: u64, bytes: &[u8]) -> io::Result<()> {
        let mut fs = self.fs.borrow_mut();
        let file = fs.files.get_mut(path).ok_or_else(|| not_found(path))?;
        write_into(&mut file.written, pos, bytes);
        write_into(&mut file.durable, pos, bytes);
        Ok(())
    }

    /// Sets the length of `path` in both images.
    pub fn set_len(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut fs = self.fs.borrow_mut();
        let file = fs.files.get_mut(path).ok_or_else(|| not_found(path))?;
        file.written.resize(len as usize, 0);
        file.durable.resize(len as usize, 0);
        Ok(())
    }

    /// Creates `path` durably with exactly `bytes` in it, replacing any file
    /// there: a test's way of starting from a given disk image.
    pub fn put_file(&self, path: &Path, bytes: &[u8]) {
        let mut fs = self.fs.borrow_mut();
        fs.removed.remove(path);
        fs.files.insert(
            path.to_path_buf(),
            SimFile {
                written: bytes.to_vec(),
                durable: bytes.to_vec(),
                exists_durably: true,
                ..SimFile::default()
            },
        );
    }

    /// Removes `path` at once and durably, whatever state it was in.
    pub fn delete(&self, path: &Path) {
        let mut fs = self.fs.borrow_mut();
        fs.files.remove(path);
        fs.removed.remove(path);
    }

    /// What reads of `path` see now, if it exists.
    pub fn written_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        self.fs.borrow().files.get(path).map(|f| f.written.clone())
    }

    /// What of `path` would survive a crash that keeps no unsynced write.
    pub fn durable_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        self.fs.borrow().files.get(path).map(|f| f.durable.clone())
    }

    /// Every file's path, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.fs.borrow().files.keys().cloned().collect()
    }

    /// Counts an operation and fails it if the storage is (now) frozen.
    fn begin_op(&self) -> io::Result<u32> {
        let mut fs = self.fs.borrow_mut();
        if fs.frozen {
            return Err(crashed_error());
        }
        fs.ops += 1;
        if fs.crash_at_op.is_some_and(|at| fs.ops >= at) {
            fs.frozen = true;
            return Err(crashed_error());
        }
        let yields_max = u64::from(fs.faults.yields_max);
        Ok(if yields_max == 0 {
            0
        } else {
            fs.rng.below(yields_max + 1) as u32
        })
    }

    /// Runs one operation: counts it, lets other tasks run a few times as the
    /// seed decides, then applies `apply` unless a crash came in between.
    async fn op<T>(&self, apply: impl FnOnce(&mut SimFs) -> io::Result<T>) -> io::Result<T> {
        let yields = self.begin_op()?;
        YieldNow(yields).await;
        let mut fs = self.fs.borrow_mut();
        if fs.frozen {
            return Err(crashed_error());
        }
        apply(&mut fs)
    }
}

fn write_into(image: &mut Vec<u8>, pos: u64, bytes: &[u8]) {
    let pos = pos as usize;
    if image.len() < pos + bytes.len() {
        image.resize(pos + bytes.len(), 0);
    }
    image[pos..pos + bytes.len()].copy_from_slice(bytes);
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("simulated storage: no file {}", path.display()),
    )
}

/// A future that returns `Pending` a given number of times, waking itself at
/// once each time.
struct YieldNow(u32);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 == 0 {
            return Poll::Ready(());
        }
        self.0 -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// An open file of a [`SimStorage`].
#[derive(Debug)]
pub struct SimFileHandle {
    storage: SimStorage,
    path: PathBuf,
    generation: u64,
    writes: Writes,
}

impl SimFileHandle {
    /// The second step of a write-through write: makes write `at` (its
    /// number in the file's `unsynced` sequence) durable, with the file's
    /// length, unless a crash comes first.
    async fn make_durable(&self, at: u64) -> io::Result<()> {
        self.storage
            .op(|fs| {
                let ppm = fs.faults.sync_fail_ppm;
                if fs.rng.chance_ppm(ppm) {
                    return Err(io::Error::other(
                        "simulated O_DSYNC write failure (EIO): written, not durable",
                    ));
                }
                fs.stats.writes += 1;
                let file = self.file(fs)?;
                file.durable.resize(file.written.len(), 0);
                let index = at.checked_sub(file.unsynced_base);
                // Not in the list: an fdatasync made it durable already.
                if let Some(w) = index.and_then(|i| file.unsynced.get_mut(i as usize)) {
                    write_into(&mut file.durable, w.pos, &w.bytes);
                    w.durable = true;
                }
                if file.unsynced.iter().all(|w| w.durable) {
                    // Nothing older waits to be synced: forget them, and
                    // let no fdatasync still under way (which covers only
                    // these) replace `durable` with an older image.
                    file.unsynced_base += file.unsynced.len() as u64;
                    file.unsynced.clear();
                    file.syncs_applied = file.syncs_issued;
                }
                Ok(())
            })
            .await
    }

    fn file<'a>(&self, fs: &'a mut SimFs) -> io::Result<&'a mut SimFile> {
        if fs.generation != self.generation {
            return Err(io::Error::other(
                "simulated storage: handle opened before a crash",
            ));
        }
        fs.files
            .get_mut(&self.path)
            .ok_or_else(|| not_found(&self.path))
    }
}

/// A read-only snapshot of a simulated file.
#[derive(Debug)]
pub struct SimMap(Vec<u8>);

impl Deref for SimMap {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Storage for SimStorage {
    type File = SimFileHandle;
    type Map = SimMap;

    async fn create_with(&self, path: &Path, writes: Writes) -> io::Result<SimFileHandle> {
        let generation = self
            .op(|fs| {
                if fs.faults.disk_full && !fs.files.contains_key(path) {
                    return Err(disk_full_error("create", path));
                }
                match fs.files.get_mut(path) {
                    Some(file) => {
                        file.written.clear();
                        file.unsynced_base += file.unsynced.len() as u64;
                        file.unsynced.clear();
                    }
                    None => {
                        // A file created again before its removal was synced
                        // has no old self left to resurrect.
                        fs.removed.remove(path);
                        fs.files.insert(path.to_path_buf(), SimFile::default());
                    }
                }
                Ok(fs.generation)
            })
            .await?;
        Ok(SimFileHandle {
            storage: self.clone(),
            path: path.to_path_buf(),
            generation,
            writes,
        })
    }

    async fn open_with(&self, path: &Path, writes: Writes) -> io::Result<SimFileHandle> {
        let generation = self
            .op(|fs| {
                if fs.files.contains_key(path) {
                    Ok(fs.generation)
                } else {
                    Err(not_found(path))
                }
            })
            .await?;
        Ok(SimFileHandle {
            storage: self.clone(),
            path: path.to_path_buf(),
            generation,
            writes,
        })
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        self.op(|fs| {
            let file = fs.files.remove(path).ok_or_else(|| not_found(path))?;
            fs.removed.insert(path.to_path_buf(), file);
            Ok(())
        })
        .await
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.op(|fs| {
            if fs.files.contains_key(to) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("simulated storage: {} exists", to.display()),
                ));
            }
            let mut file = fs.files.remove(from).ok_or_else(|| not_found(from))?;
            if file.exists_durably {
                fs.removed.insert(from.to_path_buf(), file.clone());
            }
            file.exists_durably = false;
            // Whatever `to` was removed as is gone for good once it is
            // replaced, as with a creation.
            fs.removed.remove(to);
            fs.files.insert(to.to_path_buf(), file);
            Ok(())
        })
        .await
    }

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.op(|fs| {
            fs.dirs.insert(dir.to_path_buf());
            Ok(())
        })
        .await
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.op(|fs| {
            Ok(fs
                .files
                .keys()
                .filter(|p| p.parent() == Some(dir))
                .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(String::from))
                .collect())
        })
        .await
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.op(|fs| {
            for (path, file) in fs.files.iter_mut() {
                if path.parent() == Some(dir) {
                    file.exists_durably = true;
                }
            }
            fs.removed.retain(|path, _| path.parent() != Some(dir));
            Ok(())
        })
        .await
    }

    async fn map_readonly(&self, path: &Path) -> io::Result<Option<SimMap>> {
        self.op(|fs| {
            let file = fs.files.get(path).ok_or_else(|| not_found(path))?;
            Ok((!file.written.is_empty()).then(|| SimMap(file.written.clone())))
        })
        .await
    }
}

impl StorageFile for SimFileHandle {
    type Buf = Vec<u8>;

    fn alloc_buf(&self, len: usize) -> Vec<u8> {
        vec![0xA5; len]
    }

    async fn write_at(&self, buf: Vec<u8>, pos: u64) -> io::Result<()> {
        let through = self.writes == Writes::Through;
        let written = self
            .storage
            .op(|fs| {
                if !pos.is_multiple_of(IO_ALIGN_BYTES)
                    || !(buf.len() as u64).is_multiple_of(IO_ALIGN_BYTES)
                {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "simulated O_DIRECT: unaligned write of {} bytes at {pos}",
                            buf.len()
                        ),
                    ));
                }
                let fail = {
                    let ppm = fs.faults.write_fail_ppm;
                    fs.rng.chance_ppm(ppm)
                };
                let keep = if fail {
                    fs.rng.below(buf.len() as u64 + 1) as usize
                } else {
                    buf.len()
                };
                let file = self.file(fs)?;
                write_into(&mut file.written, pos, &buf[..keep]);
                file.unsynced.push(Unsynced {
                    pos,
                    bytes: buf[..keep].to_vec(),
                    durable: false,
                });
                if fail {
                    return Err(io::Error::other("simulated write failure (EIO)"));
                }
                let at = file.unsynced_base + file.unsynced.len() as u64 - 1;
                if !through {
                    fs.stats.writes += 1;
                }
                Ok(at)
            })
            .await?;
        if through {
            self.make_durable(written).await?;
        }
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        self.storage
            .op(|fs| {
                let file = self.file(fs)?;
                let start = (pos as usize).min(file.written.len());
                let end = (pos as usize).saturating_add(len).min(file.written.len());
                Ok(Bytes::copy_from_slice(&file.written[start..end]))
            })
            .await
    }

    /// Makes durable what was written when it was called, as the kernel
    /// does, and no more: writes that complete while it is under way stay
    /// unsynced, so a log that acked them on this fdatasync's strength
    /// would lose them in a crash.
    async fn fdatasync(&self) -> io::Result<()> {
        let (seq, image, covered) = {
            let mut fs = self.storage.fs.borrow_mut();
            if fs.frozen {
                return Err(crashed_error());
            }
            let file = self.file(&mut fs)?;
            file.syncs_issued += 1;
            (
                file.syncs_issued,
                file.written.clone(),
                file.unsynced_base + file.unsynced.len() as u64,
            )
        };
        self.storage
            .op(|fs| {
                let ppm = fs.faults.sync_fail_ppm;
                if fs.rng.chance_ppm(ppm) {
                    return Err(io::Error::other("simulated fdatasync failure (EIO)"));
                }
                let file = self.file(fs)?;
                if seq > file.syncs_applied {
                    file.syncs_applied = seq;
                    file.durable = image;
                    let n = covered.saturating_sub(file.unsynced_base) as usize;
                    let n = n.min(file.unsynced.len());
                    file.unsynced.drain(..n);
                    file.unsynced_base += n as u64;
                    // Write-through writes that returned after this
                    // fdatasync was issued stay durable.
                    for w in file.unsynced.iter().filter(|w| w.durable) {
                        write_into(&mut file.durable, w.pos, &w.bytes);
                    }
                }
                fs.stats.syncs += 1;
                Ok(())
            })
            .await
    }

    async fn preallocate(&self, len: u64) -> io::Result<()> {
        self.storage
            .op(|fs| {
                let full = fs.faults.disk_full;
                let file = self.file(fs)?;
                if (file.written.len() as u64) < len {
                    if full {
                        return Err(disk_full_error("preallocate", &self.path));
                    }
                    file.written.resize(len as usize, 0);
                }
                Ok(())
            })
            .await
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.storage
            .op(|fs| {
                let file = self.file(fs)?;
                file.written.resize(len as usize, 0);
                // A write past the new end must not come back in a crash.
                for w in file.unsynced.iter_mut() {
                    let keep = len.saturating_sub(w.pos).min(w.bytes.len() as u64) as usize;
                    w.bytes.truncate(keep);
                }
                Ok(())
            })
            .await
    }

    async fn size(&self) -> io::Result<u64> {
        self.storage
            .op(|fs| Ok(self.file(fs)?.written.len() as u64))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    fn page(byte: u8) -> Vec<u8> {
        vec![byte; IO_ALIGN_BYTES as usize]
    }

    #[test]
    fn unsynced_writes_are_lost_in_a_crash_and_synced_ones_kept() {
        let sim = SimStorage::new(1, SimFaults::default());
        let dir = Path::new("/d");
        let path = dir.join("f");
        block_on(async {
            let f = sim.create(&path).await.unwrap();
            sim.sync_dir(dir).await.unwrap();
            f.write_at(page(1), 0).await.unwrap();
            f.fdatasync().await.unwrap();
            f.write_at(page(2), 4096).await.unwrap();
            assert_eq!(f.read_at(4096, 1).await.unwrap()[..], [2]);
        });
        sim.crash(CrashMode::DropUnsynced);
        assert_eq!(sim.written_bytes(&path).unwrap(), page(1));
    }

    #[test]
    fn an_fdatasync_covers_only_writes_completed_before_it_was_issued() {
        // Write page 1, issue an fdatasync, and let a write of page 2
        // complete while it is under way: only page 1 is durable after it.
        // Then an older fdatasync finishing after a newer one undoes nothing.
        let mut overlapped = 0;
        for seed in 0..32 {
            let faults = SimFaults {
                yields_max: 4,
                ..SimFaults::default()
            };
            let sim = SimStorage::new(seed, faults);
            let dir = Path::new("/d");
            let path = dir.join("f");
            let under_way = block_on(async {
                let f = sim.create(&path).await.unwrap();
                sim.sync_dir(dir).await.unwrap();
                f.write_at(page(1), 0).await.unwrap();
                let mut first = Box::pin(f.fdatasync());
                if futures::poll!(first.as_mut()).is_ready() {
                    return false;
                }
                f.write_at(page(2), 4096).await.unwrap();
                first.await.unwrap();
                assert_eq!(sim.durable_bytes(&path).unwrap(), page(1), "seed {seed}");
                // An older fdatasync (covering pages 1-2) that ends after a
                // newer one (covering page 3 too) leaves page 3 durable.
                let mut older = Box::pin(f.fdatasync());
                if futures::poll!(older.as_mut()).is_ready() {
                    return false;
                }
                f.write_at(page(3), 8192).await.unwrap();
                f.fdatasync().await.unwrap();
                older.await.unwrap();
                let mut all = page(1);
                all.extend(page(2));
                all.extend(page(3));
                assert_eq!(sim.durable_bytes(&path).unwrap(), all, "seed {seed}");
                true
            });
            if under_way {
                overlapped += 1;
                sim.crash(CrashMode::DropUnsynced);
                assert_eq!(sim.written_bytes(&path).unwrap().len(), 3 * 4096);
            }
        }
        assert!(overlapped > 0, "no seed left the fdatasync under way");
    }

    #[test]
    fn write_through_writes_are_durable_as_they_return() {
        let mut overlapped = 0;
        for mode in [CrashMode::DropUnsynced, CrashMode::Torn] {
            for seed in 0..16 {
                let faults = SimFaults {
                    yields_max: 4,
                    ..SimFaults::default()
                };
                let sim = SimStorage::new(seed, faults);
                let dir = Path::new("/d");
                let (through, buffered) = (dir.join("t"), dir.join("b"));
                block_on(async {
                    let t = sim.create_with(&through, Writes::Through).await.unwrap();
                    let b = sim.create(&buffered).await.unwrap();
                    sim.sync_dir(dir).await.unwrap();
                    // An fdatasync under way, older than a write-through
                    // write, must not undo it when it ends.
                    t.write_at(page(1), 0).await.unwrap();
                    let mut older = Box::pin(t.fdatasync());
                    let first = futures::poll!(older.as_mut());
                    t.write_at(page(2), 4096).await.unwrap();
                    match first {
                        Poll::Pending => {
                            overlapped += 1;
                            older.await.unwrap();
                        }
                        Poll::Ready(synced) => {
                            synced.unwrap();
                            drop(older);
                        }
                    }
                    let mut both = page(1);
                    both.extend(page(2));
                    assert_eq!(sim.durable_bytes(&through).unwrap(), both, "seed {seed}");
                    b.write_at(page(3), 0).await.unwrap();
                    // Reopened write-through, still so.
                    drop(t);
                    let t = sim.open_with(&through, Writes::Through).await.unwrap();
                    t.write_at(page(4), 8192).await.unwrap();
                });
                let mut all = page(1);
                all.extend(page(2));
                all.extend(page(4));
                assert_eq!(sim.durable_bytes(&through).unwrap(), all, "seed {seed}");
                sim.crash(mode);
                assert_eq!(sim.written_bytes(&through).unwrap(), all, "seed {seed}");
                if mode == CrashMode::DropUnsynced {
                    assert!(sim.written_bytes(&buffered).unwrap().is_empty());
                }
            }
        }
        assert!(overlapped > 0, "no seed left the older fdatasync under way");
    }

    #[test]
    fn a_crash_inside_a_write_through_write_may_tear_it() {
        let mut outcomes = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let sim = SimStorage::new(seed, SimFaults::default());
            let dir = Path::new("/d");
            let path = dir.join("f");
            block_on(async {
                let f = sim.create_with(&path, Writes::Through).await.unwrap();
                sim.sync_dir(dir).await.unwrap();
                f.write_at(page(1), 0).await.unwrap();
                // The crash falls after the write lands, before it is durable.
                sim.crash_after_ops(2);
                assert!(f.write_at(page(2), 4096).await.is_err());
            });
            sim.restart(CrashMode::Torn);
            let after = sim.written_bytes(&path).unwrap();
            assert_eq!(
                after[..4096],
                page(1)[..],
                "seed {seed}: the durable write stays"
            );
            let second = &after[4096.min(after.len())..];
            outcomes.insert(match second.iter().filter(|&&b| b == 2).count() {
                0 => "lost",
                4096 => "whole",
                _ => "torn",
            });
        }
        assert_eq!(outcomes.len(), 3, "{outcomes:?}");
    }

    #[test]
    fn a_failed_write_through_write_is_not_durable_and_a_later_one_is() {
        // The write itself fails (a torn prefix may land), or it lands and
        // its sync fails: either way its bytes are not durable, and the next
        // write-through write makes durable its own bytes and the length only.
        let write_fails = SimFaults {
            write_fail_ppm: 1_000_000,
            ..SimFaults::default()
        };
        let sync_fails = SimFaults {
            sync_fail_ppm: 1_000_000,
            ..SimFaults::default()
        };
        for (faults, says) in [(write_fails, "write failure"), (sync_fails, "O_DSYNC")] {
            let sim = SimStorage::new(5, SimFaults::default());
            let dir = Path::new("/d");
            let path = dir.join("f");
            block_on(async {
                let f = sim.create_with(&path, Writes::Through).await.unwrap();
                sim.sync_dir(dir).await.unwrap();
                f.write_at(page(1), 0).await.unwrap();
                sim.set_faults(faults);
                let err = f.write_at(page(2), 4096).await.unwrap_err();
                assert!(err.to_string().contains(says), "{err}");
                if says == "O_DSYNC" {
                    // Written (reads see it), not durable.
                    assert_eq!(f.read_at(4096, 1).await.unwrap()[..], [2]);
                    assert_eq!(sim.durable_bytes(&path).unwrap(), page(1));
                }
                sim.set_faults(SimFaults::default());
                f.write_at(page(3), 8192).await.unwrap();
            });
            let mut expected = page(1);
            expected.extend(vec![0; 4096]);
            expected.extend(page(3));
            assert_eq!(sim.durable_bytes(&path).unwrap(), expected, "{says}");
            sim.crash(CrashMode::DropUnsynced);
            assert_eq!(sim.written_bytes(&path).unwrap(), expected, "{says}");
        }
    }

    #[test]
    fn unsynced_creation_is_lost_and_unsynced_removal_undone() {
        let sim = SimStorage::new(2, SimFaults::default());
        let dir = Path::new("/d");
        block_on(async {
            let kept = sim.create(&dir.join("kept")).await.unwrap();
            kept.write_at(page(7), 0).await.unwrap();
            kept.fdatasync().await.unwrap();
            sim.sync_dir(dir).await.unwrap();
            sim.create(&dir.join("new")).await.unwrap();
            sim.remove(&dir.join("kept")).await.unwrap();
        });
        sim.crash(CrashMode::DropUnsynced);
        assert_eq!(sim.paths(), vec![dir.join("kept")]);
        assert_eq!(sim.written_bytes(&dir.join("kept")).unwrap(), page(7));
    }

    #[test]
    fn handles_die_with_a_crash_and_frozen_storage_fails_everything() {
        let sim = SimStorage::new(3, SimFaults::default());
        let path = Path::new("/d/f");
        block_on(async {
            let f = sim.create(path).await.unwrap();
            sim.crash_after_ops(1);
            assert!(f.write_at(page(1), 0).await.is_err());
            assert!(sim.is_frozen());
            assert!(f.fdatasync().await.is_err());
            sim.restart(CrashMode::DropUnsynced);
            assert!(f.size().await.is_err(), "a handle from before the crash");
        });
    }

    #[test]
    fn unaligned_writes_are_refused() {
        let sim = SimStorage::new(4, SimFaults::default());
        block_on(async {
            let f = sim.create(Path::new("/f")).await.unwrap();
            assert!(f.write_at(vec![0; 100], 0).await.is_err());
            assert!(f.write_at(page(0), 100).await.is_err());
        });
    }

    #[test]
    fn torn_crashes_keep_prefixes_of_unsynced_writes() {
        // Over many seeds, a torn crash keeps some, none or all of an unsynced
        // write, but always a prefix (apart from at most one flipped bit).
        let mut saw_partial = false;
        for seed in 0..64 {
            let sim = SimStorage::new(seed, SimFaults::default());
            let path = Path::new("/d/f");
            block_on(async {
                let f = sim.create(path).await.unwrap();
                sim.sync_dir(Path::new("/d")).await.unwrap();
                f.write_at(page(9), 0).await.unwrap();
            });
            sim.crash(CrashMode::Torn);
            let bytes = sim.written_bytes(path).unwrap();
            assert!(bytes.len() <= 4096, "seed {seed}");
            let wrong = bytes.iter().filter(|&&b| b != 9).count();
            assert!(wrong <= 1, "seed {seed}: {wrong} bytes differ");
            saw_partial |= !bytes.is_empty() && bytes.len() < 4096;
        }
        assert!(saw_partial);
    }

    #[test]
    fn faults_fail_writes_and_syncs_at_the_configured_rate() {
        let sim = SimStorage::new(
            5,
            SimFaults {
                write_fail_ppm: 1_000_000,
                sync_fail_ppm: 1_000_000,
                yields_max: 3,
                disk_full: false,
            },
        );
        block_on(async {
            let f = sim.create(Path::new("/f")).await.unwrap();
            assert!(f.write_at(page(1), 0).await.is_err());
            assert!(f.fdatasync().await.is_err());
        });
        assert!(sim.durable_bytes(Path::new("/f")).unwrap().is_empty());
    }

    #[test]
    fn a_full_disk_fails_allocations_with_enospc_and_changes_nothing() {
        let sim = SimStorage::new(6, SimFaults::default());
        block_on(async {
            let f = sim.create(Path::new("/f")).await.unwrap();
            f.preallocate(8192).await.unwrap();
            sim.set_faults(SimFaults {
                disk_full: true,
                ..SimFaults::default()
            });
            let e = f.preallocate(16384).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
            assert_eq!(f.size().await.unwrap(), 8192);
            // Within the allocation nothing is refused.
            f.preallocate(4096).await.unwrap();
            f.write_at(page(7), 4096).await.unwrap();
            let e = sim.create(Path::new("/g")).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
            assert!(sim.written_bytes(Path::new("/g")).is_none());
            sim.set_faults(SimFaults::default());
            f.preallocate(16384).await.unwrap();
            assert_eq!(f.size().await.unwrap(), 16384);
            sim.create(Path::new("/g")).await.unwrap();
        });
    }
}
