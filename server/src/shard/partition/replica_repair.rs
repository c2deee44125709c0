//! Recovery of a replica whose log is damaged (docs/replication.md
//! section 10): the replica repairs the damaged range from its peers
//! instead of refusing to start, without ever helping to elect a leader
//! that lacks what it had acknowledged.
//!
//! ```text
//!  open (a replicated log, `open_log_as`):
//!    find the first damaged batch anywhere     Log::find_damage: sealed or
//!      (every batch verified, index files        active segment, header or
//!      ignored; a torn tail is not damage)       payload, index unusable
//!    T = max(hard-state term in log.meta, every term in the log, past
//!        the damage too, the T of a marker already there)
//!    write raft.recovering = T, durably        before anything is cut
//!    cut the log before the damage             Log::open_cut (crash-safe)
//!  replicate (`repair_at_open`): the commit in log.meta lowered to the
//!    log's end; damage the open could not see (a log opened as a single
//!    node's) cut the same way, marker first
//!  run: abstain while the log holds no COMMITTED entry of a term > T:
//!    no vote or pre-vote granted, no campaign, a heartbeat's commit held
//!    to its own log, a leader of a term <= T asked to hand over
//!    term(commit) > T: raft.recovering removed, a voter again
//! ```
//!
//! **Why it is safe.** Let N be the voters, this replica r among them, and
//! e an entry r acknowledged before the loss, at index i and term t. r's
//! term only grows and is recorded before it acknowledges anything, so
//! t <= T; and every leader of a term <= T led before r's loss or while r
//! abstained.
//!
//! 1. *While r abstains* (from its restart until it leaves), every leader
//!    is elected without r's vote, by a majority M of the other N - 1
//!    voters. A commit majority Q (which may have counted r) still has
//!    |Q| - 1 members other than r, and |M| + |Q| - 1 > N - 1, so M holds
//!    a voter of Q: Raft's up-to-date check then makes every such leader
//!    hold every entry committed before its term, r's lost copies
//!    notwithstanding.
//! 2. *r leaves* once its commit index c has term T' = term(c) > T. The
//!    entry at c was committed by a leader L of term T' (r's commit never
//!    passes an entry the leader told it is committed and r holds; raft's
//!    consistency check makes r's log up to c equal L's).
//! 3. *Each e at i <= c*: if e was committed, by 1 L holds it at i, so r's
//!    log holds e again at i. If it was not, what r holds at i is L's
//!    entry, committed: r acknowledged nothing that was, or will ever be,
//!    committed with another value.
//! 4. *Each e at i > c* can never be committed: L's log holds term T' at
//!    c, so every entry after c in it has a term >= T' > t; every later
//!    leader holds the entry at c (committed, by 1 and the normal Raft
//!    argument after r votes again) and so no entry of term t after it.
//!
//! So nothing r acknowledged is lost or given a second value, and from then
//! on r's log holds everything committed up to c: it votes again as any
//! replica. If too few other voters are up, no leader is elected: the
//! group waits (safety over availability). The marker is written before
//! the cut, so a crash in the middle resumes abstaining at the next start;
//! a marker of the first form (`HDRREC01`, holding an index) is read as the
//! term known at this start, which is at least the term at its writing.
//!
//! A **torn tail** (the end of the last write round, never acknowledged
//! durable) is not damage and leaves no marker: after a crash of every
//! replica each would otherwise abstain and none would lead. Damage within
//! one write round of the end of the active segment, past its watermark,
//! cannot be told from a torn tail (`engine/src/log/recovery.rs`): an entry
//! there this replica acknowledged past its recorded commit is not
//! protected. Damage on every replica of a batch is not repairable
//! (recovery needs one good copy).
//!
//! **A lost `log.meta`** (both slots bad, `meta::state` = `Lost`; one bad
//! slot is survived by the other) refuses to open a replicated log,
//! changing nothing: the hard state is gone, so the highest term t this
//! replica r held, and voted or acknowledged in, is unknown. Rebuilding r
//! under its id on an empty log with no voters (as a moved-in replica) is
//! not safe, whatever term bound the log or the leader's messages give:
//!
//! - *A stale leader.* Say r led term t with voter a (N = 3), and b still
//!   leads an older term t' < t, not yet knowing t. r, rebuilt at term 0,
//!   accepts b's appends (t' is above its term) and acknowledges them; b,
//!   still listing r as a voter, commits with {b, r} an entry at an index
//!   where r and a had committed another one at t. Abstaining from votes
//!   does not help: the acknowledgement is the fault. `check_quorum`
//!   steps b down within about two election timeouts without a quorum, so
//!   a rebuild that stayed silent that long would be safe, but only under
//!   a timing assumption nothing else in this module makes.
//! - *A second vote.* r voted for L1 in t (L1 won); rebuilt, it learns a
//!   term T <= t from the leader's messages and, once past T, may grant a
//!   vote in t to another candidate that a majority without L1's other
//!   voters elects: two leaders in t. The terms in r's log (kept aside)
//!   bound only what it acknowledged, not what it voted in; a safe bound
//!   needs the current terms of a majority of the other voters (a poll no
//!   message here carries).
//!
//! So the replica stays down: a partition's (or a pipeline run's) is
//! offline on its node, which serves everything else (`shard/offline.rs`;
//! the metadata log's refuses the node's start). The operator restores the
//! directory and restarts the node, or moves the replica off the node (a
//! conf change removing r is committed by the others; r, down,
//! acknowledges nothing meanwhile), and the node then deletes it. A log its caller knows is replicated
//! (`open_log_as`) is handled so even before its `log.meta` records a
//! configuration (a joining replica before its first conf change), and a
//! torn first write of `log.meta` (never recorded anything) opens as new.

use std::path::{Path, PathBuf};

use bytes::BufMut;
use hadron_engine::log::{RaftReadError, ReadError};
use hadron_engine::storage::{IO_ALIGN_BYTES, Storage, StorageFile};
use hadron_engine::{Log, LogConfig};

/// The marker file in the log's directory.
pub const RECOVERING_FILE: &str = "raft.recovering";
/// The marker: magic, then the term T (u64 little-endian), in one page.
const MARKER_MAGIC: &[u8; 8] = b"HDRREC02";
/// The first form's marker: magic, then an index (read, never written).
const MARKER_MAGIC_V1: &[u8; 8] = b"HDRREC01";
const MARKER_BYTES: usize = 16;
/// Bytes of entries verified per read.
const VERIFY_READ_BYTES: u64 = 4 << 20;

fn marker_path(dir: &Path) -> PathBuf {
    dir.join(RECOVERING_FILE)
}

/// A marker left by an earlier start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    /// The term T to pass.
    Term(u64),
    /// The first form's: T is the term known now (at least that known
    /// when it was written).
    FirstForm,
}

async fn read_marker<S: Storage>(storage: &S, path: &Path) -> Result<Option<Marker>, String> {
    let file = match storage.open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let bytes = file
        .read_at(0, MARKER_BYTES)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut value = [0u8; 8];
    if bytes.len() >= MARKER_BYTES {
        value.copy_from_slice(&bytes[8..MARKER_BYTES]);
    }
    match bytes.get(..8) {
        _ if bytes.len() < MARKER_BYTES => {}
        Some(m) if m == MARKER_MAGIC => return Ok(Some(Marker::Term(u64::from_le_bytes(value)))),
        Some(m) if m == MARKER_MAGIC_V1 => return Ok(Some(Marker::FirstForm)),
        _ => {}
    }
    Err(format!(
        "{}: not a recovery marker (remove it only if this replica's log is whole)",
        path.display()
    ))
}

/// Writes the marker durably: the file, then its directory entry.
async fn write_marker<S: Storage>(storage: &S, path: &Path, term: u64) -> Result<(), String> {
    let io = |e: std::io::Error| format!("writing {}: {e}", path.display());
    let file = storage.create(path).await.map_err(io)?;
    let mut buf = file.alloc_buf(IO_ALIGN_BYTES as usize);
    let b = buf.as_mut();
    b.fill(0);
    let mut at = &mut b[..MARKER_BYTES];
    at.put_slice(MARKER_MAGIC);
    at.put_u64_le(term);
    file.write_at(buf, 0).await.map_err(io)?;
    file.fdatasync().await.map_err(io)?;
    drop(file);
    if let Some(dir) = path.parent() {
        storage.sync_dir(dir).await.map_err(io)?;
    }
    Ok(())
}

/// Whether the log in `dir` belongs to a Raft group: its `log.meta`
/// records a configuration, or a recovery is under way.
async fn is_replicated<S: Storage>(storage: &S, dir: &Path) -> Result<bool, String> {
    if read_marker(storage, &marker_path(dir)).await?.is_some() {
        return Ok(true);
    }
    let meta = hadron_engine::log::meta::read(storage, dir)
        .await
        .map_err(|e| format!("reading {}: {e}", dir.display()))?;
    Ok(meta.is_some_and(|m| {
        let r = &m.raft;
        !(r.voters.is_empty() && r.learners.is_empty() && r.voters_outgoing.is_empty())
    }))
}

/// The refusal to open a replica whose `log.meta` is lost (module
/// header, "A lost `log.meta`").
fn lost_meta_error(dir: &Path) -> String {
    format!(
        "{}: neither of its two slots is valid, so this replica's Raft term and vote are lost; \
         it must not rejoin its group under a guessed term (it could vote twice in one term, \
         or help a stale leader commit over entries it had acknowledged), so it is not opened \
         and nothing was changed. Restore the directory from a copy taken while this node was \
         down and restart the node, or move this replica off the node (hadron cluster move, \
         or hadron cluster rebalance --drain): the group refills a new one from the leader, \
         and this node then deletes {}",
        hadron_engine::log::meta::meta_path(dir).display(),
        dir.display()
    )
}

/// Opens the log in `dir`. A replicated one (`replicated`: its caller
/// knows it is, or see [`is_replicated`]) that is damaged anywhere is cut
/// before the damage, the marker written first (module header), and one
/// whose `log.meta` is lost refuses to open, changing nothing (its caller
/// says so once: a partition goes offline on this node, the metadata log
/// refuses the start); a single node's opens as
/// [`Log::open`] does (damage refuses the open or leaves the log
/// read-only, for `hadron repair`).
pub async fn open_log_as<S: Storage + Clone>(
    storage: &S,
    dir: &Path,
    config: LogConfig,
    replicated: bool,
) -> Result<Log<S>, String> {
    let opened = |r: Result<Log<S>, hadron_engine::OpenError>| r.map_err(|e| e.to_string());
    if !(replicated || is_replicated(storage, dir).await?) {
        return opened(Log::open(storage.clone(), dir, config).await);
    }
    let state = hadron_engine::log::meta::state(storage, dir)
        .await
        .map_err(|e| format!("reading {}: {e}", dir.display()))?;
    if state == hadron_engine::log::meta::MetaState::Lost {
        return Err(lost_meta_error(dir));
    }
    let found = Log::find_damage(storage, dir, &config)
        .await
        .map_err(|e| e.to_string())?;
    let Some(found) = found else {
        let log = opened(Log::open(storage.clone(), dir, config).await)?;
        log.mark_verified();
        return Ok(log);
    };
    let path = marker_path(dir);
    let term = match read_marker(storage, &path).await? {
        Some(Marker::Term(t)) => t.max(found.term_max),
        Some(Marker::FirstForm) | None => found.term_max,
    };
    tracing::error!(
        log = %dir.display(),
        "{found}: cutting the log there and refilling it from the leader; this replica abstains from elections until it holds a committed entry of a term above {term}"
    );
    write_marker(storage, &path, term).await?;
    let log = opened(Log::open_cut(storage.clone(), dir, config, &found).await)?;
    log.mark_verified();
    Ok(log)
}

/// The first Raft index of `log` whose batch fails its checks, if any.
async fn first_damaged<S: Storage>(log: &Log<S>) -> Result<Option<u64>, String> {
    let last = log.last_index();
    let mut lo = log.first_index();
    while lo <= last {
        match log.entries(lo, last + 1, VERIFY_READ_BYTES).await {
            Ok(got) if !got.is_empty() => lo += got.len() as u64,
            Ok(_) => return Err(format!("no batch at Raft index {lo} of {last}")),
            Err(_) => {
                // Somewhere in this read: find the batch, one at a time.
                loop {
                    match log.entries(lo, lo + 1, 0).await {
                        Ok(_) => lo += 1,
                        Err(RaftReadError::Read(ReadError::Corrupt { .. })) => {
                            return Ok(Some(lo));
                        }
                        Err(e) => return Err(format!("verifying Raft index {lo}: {e}")),
                    }
                }
            }
        }
    }
    Ok(None)
}

/// The highest term `log` knew: its hard state's, its last entry's, and a
/// marker's.
fn term_known<S: Storage>(log: &Log<S>, pending: Option<Marker>) -> u64 {
    let marked = match pending {
        Some(Marker::Term(t)) => t,
        _ => 0,
    };
    let last = log.term(log.last_index()).unwrap_or(0);
    log.raft_meta().term.max(last).max(marked)
}

/// Checks a replicated log once open (by [`open_log_as`]) and repairs what is
/// left as the module header says. Returns the term T the replica must see
/// committed past before it votes again, when it must abstain (damage found
/// now or at open, a log ending below its recorded commit, or a marker
/// left by an earlier start).
pub async fn repair_at_open<S: Storage>(storage: &S, log: &Log<S>) -> Result<Option<u64>, String> {
    let path = marker_path(log.dir());
    let pending = read_marker(storage, &path).await?;
    log.load_raft_index()
        .await
        .map_err(|e| format!("loading the Raft index: {e}"))?;
    // `open_log_as` verified it whole already, unless it opened it as a
    // single node's.
    let damaged = if log.verified() {
        None
    } else {
        first_damaged(log).await?
    };
    let Some(damaged) = damaged else {
        let commit = log.raft_meta().commit;
        if commit <= log.last_index() {
            return Ok(match pending {
                Some(Marker::Term(t)) => Some(t),
                Some(Marker::FirstForm) => Some(term_known(log, pending)),
                None => None,
            });
        }
        // Committed entries missing without damage in what is left: the
        // open cut damage (the marker is there), or the engine's recovery
        // cut a tail it could not tell from a torn write, or an earlier
        // start cut the log and ended before lowering the commit. Raft
        // refuses a commit past the log: recover as from damage.
        let term = term_known(log, pending);
        tracing::error!(
            log = %log.dir().display(),
            "the log ends at Raft index {} below its recorded commit {commit}: refilling it from the leader; this replica abstains from elections until it holds a committed entry of a term above {term}",
            log.last_index()
        );
        write_marker(storage, &path, term).await?;
        clamp_commit(log).await?;
        return Ok(Some(term));
    };
    let term = term_known(log, pending);
    tracing::error!(
        log = %log.dir().display(),
        "Raft index {damaged} is damaged: cutting the log after {} and refilling it from the leader; this replica abstains from elections until it holds a committed entry of a term above {term}",
        damaged - 1
    );
    write_marker(storage, &path, term).await?;
    let mut meta = log.raft_meta();
    if meta.commit >= damaged {
        meta.commit = damaged - 1;
        log.write_raft_state(&meta)
            .await
            .map_err(|e| format!("lowering the recorded commit: {e}"))?;
    }
    log.truncate_after(damaged - 1)
        .await
        .map_err(|e| format!("cutting the damaged log after {}: {e}", damaged - 1))?;
    clamp_commit(log).await?;
    Ok(Some(term))
}

/// Lowers the commit recorded in `log.meta` to the log's last index.
async fn clamp_commit<S: Storage>(log: &Log<S>) -> Result<(), String> {
    let mut meta = log.raft_meta();
    if meta.commit > log.last_index() {
        meta.commit = log.last_index();
        log.write_raft_state(&meta)
            .await
            .map_err(|e| format!("lowering the recorded commit: {e}"))?;
    }
    Ok(())
}

/// Whether a recovery that must pass term `past` is over: the entry at
/// the commit index is in the log with a higher term.
pub fn recovery_done<S: Storage>(log: &Log<S>, commit: u64, past: u64) -> bool {
    commit > 0 && log.term(commit).is_some_and(|t| t > past)
}

/// Ends a recovery: the marker goes (durably).
pub async fn recovered<S: Storage>(storage: &S, log: &Log<S>) -> Result<(), String> {
    let path = marker_path(log.dir());
    storage
        .remove(&path)
        .await
        .map_err(|e| format!("removing {}: {e}", path.display()))?;
    if let Some(dir) = path.parent() {
        storage
            .sync_dir(dir)
            .await
            .map_err(|e| format!("syncing {}: {e}", dir.display()))?;
    }
    Ok(())
}
