//! Production storage: glommio `DmaFile`, O_DIRECT through io_uring.
//!
//! This is the only module of the engine that touches glommio, so that the
//! rest of the engine stays runtime-free and the low-maintenance dependency
//! can be swapped in one place.
//!
//! **The read probe.** glommio 0.9.0 decides once per executor and device
//! whether to use its poll ring, by reading from the first `DmaFile` opened on
//! that device. If that file is empty, the read "succeeds" at EOF and the poll
//! ring is chosen; on disks without poll queues (virtio, most cloud disks)
//! every later read then fails with EOPNOTSUPP. [`DmaStorage::new`] therefore
//! opens and reads a non-empty probe file in the data directory before
//! anything else, which makes glommio pick the right ring. Call it once per
//! executor, before any other `DmaFile` on that device is opened.
//!
//! Directory listing, creation, renames and memory maps use `std` (blocking) calls:
//! they happen when a log opens, rolls or deletes a segment, never per append.

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use glommio::io::{DmaBuffer, DmaFile, OpenOptions};

use super::{IO_ALIGN_BYTES, Storage, StorageFile, Writes};

/// The name of the probe file [`DmaStorage::new`] keeps in the data directory.
pub const PROBE_FILE_NAME: &str = ".dma-probe";

/// [`Storage`] on glommio `DmaFile`s. Must be created and used inside a
/// glommio executor.
#[derive(Debug, Clone)]
pub struct DmaStorage {
    root: PathBuf,
}

impl DmaStorage {
    /// Prepares storage under `root` (created if missing) on the current
    /// executor, running the read probe described in the module header.
    pub async fn new(root: &Path) -> io::Result<DmaStorage> {
        std::fs::create_dir_all(root)?;
        let probe = root.join(PROBE_FILE_NAME);
        let probe_len = std::fs::metadata(&probe).map(|m| m.len()).unwrap_or(0);
        if probe_len < IO_ALIGN_BYTES {
            write_probe(&probe)?;
        }
        let file = DmaFile::open(&probe).await.map_err(io::Error::from)?;
        let read = file.read_at(0, IO_ALIGN_BYTES as usize).await;
        let closed = file.close().await;
        let read = read.map_err(io::Error::from)?;
        closed.map_err(io::Error::from)?;
        if read.len() != IO_ALIGN_BYTES as usize {
            return Err(io::Error::other(format!(
                "DMA read probe of {} returned {} bytes, expected {IO_ALIGN_BYTES}",
                probe.display(),
                read.len()
            )));
        }
        Ok(DmaStorage {
            root: root.to_path_buf(),
        })
    }

    /// The directory this storage was prepared on.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Writes the probe file so that no reader can ever open it short: the
/// bytes go to a file of this thread's own and are renamed over the probe
/// path, which holds either nothing, an older whole probe or this one. (All
/// shards prepare their storage at once; a plain `fs::write` truncated the
/// probe while another shard was reading it, and that shard's glommio
/// executor then chose the poll ring and failed every read with
/// EOPNOTSUPP.)
fn write_probe(probe: &Path) -> io::Result<()> {
    use std::io::Write;
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    let tmp = probe.with_extension(format!("tmp-{}-{thread}", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&[0x48u8; IO_ALIGN_BYTES as usize])?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, probe)
}

/// A glommio `DmaFile`.
#[derive(Debug)]
pub struct DmaStorageFile {
    file: DmaFile,
}

/// A DMA buffer from glommio's registered `io_memory` (or the heap when that
/// is exhausted).
#[derive(Debug)]
pub struct DmaBuf(DmaBuffer);

impl AsRef<[u8]> for DmaBuf {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl AsMut<[u8]> for DmaBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        self.0.as_bytes_mut()
    }
}

/// A read-only memory map of a sealed file.
#[derive(Debug)]
pub struct DmaMap(memmap2::Mmap);

impl std::ops::Deref for DmaMap {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// The `open(2)` flags, beyond glommio's own, for `writes`.
fn open_flags(writes: Writes) -> libc::c_int {
    match writes {
        Writes::Buffered => 0,
        Writes::Through => libc::O_DSYNC,
    }
}

impl Storage for DmaStorage {
    type File = DmaStorageFile;
    type Map = DmaMap;

    async fn create_with(&self, path: &Path, writes: Writes) -> io::Result<DmaStorageFile> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .custom_flags(open_flags(writes))
            .dma_open(path)
            .await
            .map_err(io::Error::from)?;
        Ok(DmaStorageFile { file })
    }

    async fn open_with(&self, path: &Path, writes: Writes) -> io::Result<DmaStorageFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(open_flags(writes))
            .dma_open(path)
            .await
            .map_err(io::Error::from)?;
        Ok(DmaStorageFile { file })
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        glommio::io::remove(path).await.map_err(io::Error::from)
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        // rename(2) would silently replace `to`; the log never means that.
        if std::fs::exists(to)? {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("rename target {} exists", to.display()),
            ));
        }
        std::fs::rename(from, to)
    }

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file()
                && let Some(name) = entry.file_name().to_str()
            {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        // glommio 0.9's directory open fails with EBADF on a relative path.
        let absolute;
        let dir = if dir.is_relative() {
            absolute = std::env::current_dir()?.join(dir);
            absolute.as_path()
        } else {
            dir
        };
        let directory = glommio::io::Directory::open(dir)
            .await
            .map_err(io::Error::from)?;
        let synced = directory.sync().await.map_err(io::Error::from);
        directory.close().await.map_err(io::Error::from)?;
        synced
    }

    async fn map_readonly(&self, path: &Path) -> io::Result<Option<DmaMap>> {
        let file = std::fs::File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Ok(None);
        }
        #[expect(unsafe_code, reason = "memmap2's map is unsafe by contract")]
        // SAFETY: only sealed index files are mapped (see `Storage::map_readonly`):
        // the engine never writes, truncates or removes a file while a map of it
        // lives, and no other process is expected to touch Hadron's data dir.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(Some(DmaMap(map)))
    }
}

impl StorageFile for DmaStorageFile {
    type Buf = DmaBuf;

    fn alloc_buf(&self, len: usize) -> DmaBuf {
        DmaBuf(self.file.alloc_dma_buffer(len))
    }

    async fn write_at(&self, buf: DmaBuf, pos: u64) -> io::Result<()> {
        let len = buf.0.len();
        let written = self
            .file
            .write_at(buf.0, pos)
            .await
            .map_err(io::Error::from)?;
        if written != len {
            // O_DIRECT writes of aligned buffers are all-or-nothing on the
            // file systems Hadron supports; a short one means the disk is
            // full or failing, and the log poisons itself either way.
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short O_DIRECT write: {written} of {len} bytes at {pos}"),
            ));
        }
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        let read = self.file.read_at(pos, len).await.map_err(io::Error::from)?;
        Ok(Bytes::copy_from_slice(&read))
    }

    async fn fdatasync(&self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(io::Error::from)
    }

    async fn preallocate(&self, len: u64) -> io::Result<()> {
        self.file
            .pre_allocate(len, false)
            .await
            .map_err(io::Error::from)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.truncate(len).await.map_err(io::Error::from)
    }

    async fn size(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(io::Error::from)
    }
}
