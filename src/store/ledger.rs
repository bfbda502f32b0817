//! What `kill -9` can lose, accounted after the restart.
//!
//! Records accepted by [`super::Store::save`] wait in memory until the writer commits them.
//! The ledger counts acceptances in a small file mapped into memory (an increment is a memory
//! write; the page cache keeps it when the process dies, however it dies), and the store
//! counts commits in the database, in the same transaction as the records. At the next start
//! `accepted − committed − given up` is what the killed agent had accepted and not written.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

pub const LEDGER_FILE: &str = "bianque.ledger";
const MAGIC: u64 = 0x6269_616e_7175_6531; // "bianque1"
pub const LEN: usize = 4 * 8;

/// Slots of the mapped file, one u64 each.
const SLOT_MAGIC: usize = 0;
const SLOT_ACCEPTED: usize = 1;
/// Records accepted and then given up on (counted as write errors when it happened).
const SLOT_GIVEN_UP: usize = 2;

pub struct Ledger {
    map: memmap2::MmapMut,
}

impl Ledger {
    /// Maps the ledger in `dir`, creating it (0600) when missing or not a ledger.
    pub fn open(dir: &Path) -> Result<Ledger> {
        let path = dir.join(LEDGER_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let fresh = file
            .metadata()
            .map(|m| m.len() != LEN as u64)
            .unwrap_or(true);
        if fresh {
            // Written, not just sized: a sparse page would need a block at the first store
            // through the mapping, and a full disk would turn that into SIGBUS.
            use std::io::Write;
            file.set_len(0)
                .and_then(|_| (&file).write_all(&[0u8; LEN]))
                .and_then(|_| file.sync_all())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        // SAFETY: the file is ours (0600, in the private data dir) and sized to LEN; other
        // processes do not resize it while mapped. Concurrent writers go through atomics.
        let map = unsafe { memmap2::MmapMut::map_mut(&file) }
            .with_context(|| format!("cannot map {}", path.display()))?;
        let ledger = Ledger { map };
        if ledger.slot(SLOT_MAGIC).load(Ordering::Relaxed) != MAGIC {
            for s in [SLOT_ACCEPTED, SLOT_GIVEN_UP] {
                ledger.slot(s).store(0, Ordering::Relaxed);
            }
            ledger.slot(SLOT_MAGIC).store(MAGIC, Ordering::Relaxed);
        }
        Ok(ledger)
    }

    fn slot(&self, i: usize) -> &AtomicU64 {
        debug_assert!(i < LEN / 8);
        // SAFETY: the mapping is page-aligned and LEN bytes long, so slot i (< 4) is an aligned
        // u64 inside it that lives as long as &self; all access is atomic.
        unsafe { &*(self.map.as_ptr().add(i * 8) as *const AtomicU64) }
    }

    pub fn accepted(&self) -> u64 {
        self.slot(SLOT_ACCEPTED).load(Ordering::Relaxed)
    }

    pub fn given_up(&self) -> u64 {
        self.slot(SLOT_GIVEN_UP).load(Ordering::Relaxed)
    }

    pub fn add_accepted(&self, n: u64) {
        self.slot(SLOT_ACCEPTED).fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_given_up(&self, n: u64) {
        self.slot(SLOT_GIVEN_UP).fetch_add(n, Ordering::Relaxed);
    }

    /// Starts the count again from `committed` (what the database holds), nothing given up.
    pub fn reset(&self, committed: u64) {
        self.slot(SLOT_ACCEPTED).store(committed, Ordering::Relaxed);
        self.slot(SLOT_GIVEN_UP).store(0, Ordering::Relaxed);
    }

    /// Accepted records neither committed nor given up: what a killed agent lost.
    pub fn lost_since(&self, committed: u64) -> u64 {
        self.accepted()
            .saturating_sub(committed)
            .saturating_sub(self.given_up())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_survive_a_reopen_and_the_gap_is_what_was_not_committed() {
        let dir = std::env::temp_dir().join(format!("bianque-ledger-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        {
            let l = Ledger::open(&dir).unwrap();
            l.reset(10);
            l.add_accepted(25);
            l.add_given_up(5);
            // Dropped without any flush, as a killed process would leave it.
        }
        let l = Ledger::open(&dir).unwrap();
        assert_eq!((l.accepted(), l.given_up()), (35, 5));
        assert_eq!(l.lost_since(20), 10);
        assert_eq!(l.lost_since(40), 0, "never negative");
        // Garbage in the file: a fresh ledger.
        drop(l);
        std::fs::write(dir.join(LEDGER_FILE), [7u8; LEN]).unwrap();
        let l = Ledger::open(&dir).unwrap();
        assert_eq!((l.accepted(), l.given_up()), (0, 0));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
