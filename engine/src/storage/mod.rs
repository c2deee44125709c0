//! The storage seam: the few file operations the log needs, as a trait.
//!
//! The engine never calls the operating system directly. Everything it does to
//! a disk goes through [`Storage`] and [`StorageFile`], which have two
//! implementations:
//!
//! - [`dma::DmaStorage`] (feature `glommio`): glommio `DmaFile`, O_DIRECT
//!   reads and writes through io_uring. It is the only module of the engine
//!   that touches glommio.
//! - [`sim::SimStorage`]: an in-memory file system for tests that keeps
//!   *written* bytes apart from *durable* ones and, driven by a seed, can crash
//!   (dropping what was not fdatasynced, or keeping a torn prefix of it),
//!   flip bits, and fail writes and fdatasyncs.
//!
//! Invariants every implementation keeps, and the log relies on:
//! - Writes are positional, at a position and of a length that are multiples
//!   of [`IO_ALIGN_BYTES`] (O_DIRECT's rule; the simulation refuses anything
//!   else so that a misaligned write is caught in tests, not in production).
//! - A write that returned `Ok` is visible to reads at once, and durable only
//!   after a later `fdatasync` of the same file returned `Ok`, or at once
//!   when the handle was opened [`Writes::Through`].
//! - A file that was created, removed or renamed is certain to stay so across
//!   a crash only after `sync_dir` of its directory returned `Ok`.
//!
//! The traits use `async fn` without `Send` bounds on purpose: Hadron is
//! thread-per-core, and a storage future never leaves the core that made it.

use std::io;
use std::ops::Deref;
use std::path::Path;

use bytes::Bytes;

#[cfg(feature = "glommio")]
pub mod dma;
pub mod sim;

/// How the writes made through a file handle become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// Durable once a later `fdatasync` of the file returns.
    Buffered,
    /// Durable when `write_at` returns: the file is opened `O_DSYNC`, so the
    /// kernel completes each write only once its bytes, and the metadata
    /// needed to read them back (an unwritten extent made written, a new
    /// size), are on stable storage. Each write then costs the device a
    /// flush (or is a FUA write), as a write followed by `fdatasync` does,
    /// but in one request: nothing waits between the write's end and the
    /// flush's start.
    Through,
}

/// Alignment of every write position and length, in bytes. 4 KiB covers the
/// logical block size of every disk Hadron targets (512 B and 4 KiB).
pub const IO_ALIGN_BYTES: u64 = 4096;

/// Rounds `value` down to a multiple of [`IO_ALIGN_BYTES`].
pub const fn align_down(value: u64) -> u64 {
    value & !(IO_ALIGN_BYTES - 1)
}

/// Rounds `value` up to a multiple of [`IO_ALIGN_BYTES`].
pub const fn align_up(value: u64) -> u64 {
    align_down(value + IO_ALIGN_BYTES - 1)
}

/// A file system the log keeps its segments in.
#[expect(
    async_fn_in_trait,
    reason = "thread-per-core: storage futures never move to another thread"
)]
pub trait Storage {
    /// An open file.
    type File: StorageFile;
    /// A read-only view of a whole file (a memory map in production).
    type Map: Deref<Target = [u8]>;

    /// Creates `path` empty (truncating it if it exists) for reading and
    /// writing, its writes made durable as `writes` says.
    async fn create_with(&self, path: &Path, writes: Writes) -> io::Result<Self::File>;
    /// Opens the existing file `path` for reading and writing, its writes
    /// made durable as `writes` says.
    async fn open_with(&self, path: &Path, writes: Writes) -> io::Result<Self::File>;
    /// [`create_with`](Storage::create_with) [`Writes::Buffered`].
    async fn create(&self, path: &Path) -> io::Result<Self::File> {
        self.create_with(path, Writes::Buffered).await
    }
    /// [`open_with`](Storage::open_with) [`Writes::Buffered`].
    async fn open(&self, path: &Path) -> io::Result<Self::File> {
        self.open_with(path, Writes::Buffered).await
    }
    /// Removes `path`.
    async fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` to `to` within one directory; `to` must not exist.
    /// Durable, like a creation, only after `sync_dir`. Handles open on
    /// `from` must be dropped first (the simulation enforces it).
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Creates `dir` and its parents if they do not exist.
    async fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the files in `dir`, in no particular order.
    async fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Makes the creations and removals of files in `dir` durable.
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Maps the whole of `path` read-only. `Ok(None)` when the file is empty,
    /// which cannot be mapped. The caller must never write the file while a
    /// map of it lives: only sealed index files are mapped.
    async fn map_readonly(&self, path: &Path) -> io::Result<Option<Self::Map>>;
}

/// An open file of a [`Storage`].
#[expect(
    async_fn_in_trait,
    reason = "thread-per-core: storage futures never move to another thread"
)]
pub trait StorageFile {
    /// A buffer suitable for an aligned write: DMA memory in production.
    type Buf: AsRef<[u8]> + AsMut<[u8]>;

    /// Allocates a write buffer of exactly `len` bytes; `len` is a multiple of
    /// [`IO_ALIGN_BYTES`]. Its contents are unspecified: the caller fills all
    /// of it.
    fn alloc_buf(&self, len: usize) -> Self::Buf;
    /// Writes all of `buf` at `pos`. Both are multiples of [`IO_ALIGN_BYTES`].
    async fn write_at(&self, buf: Self::Buf, pos: u64) -> io::Result<()>;
    /// Reads up to `len` bytes at `pos`; fewer only at the end of the file.
    /// Neither needs to be aligned.
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes>;
    /// Makes every write that completed before this call durable.
    async fn fdatasync(&self) -> io::Result<()>;
    /// Allocates space so that the file is at least `len` bytes long; the new
    /// bytes read as zeros.
    async fn preallocate(&self, len: u64) -> io::Result<()>;
    /// Sets the file's length to `len`.
    async fn truncate(&self, len: u64) -> io::Result<()>;
    /// The file's current length.
    async fn size(&self) -> io::Result<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_helpers_round_to_pages() {
        assert_eq!(align_down(0), 0);
        assert_eq!(align_down(4095), 0);
        assert_eq!(align_down(4096), 4096);
        assert_eq!(align_up(0), 0);
        assert_eq!(align_up(1), 4096);
        assert_eq!(align_up(4096), 4096);
        assert_eq!(align_up(4097), 8192);
    }
}
