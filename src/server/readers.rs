//! Read-only store connections for HTTP reads: each request takes its own, so a long scan
//! never holds up a `limit=1` behind it (the store's own reader is one shared connection).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Result;

use crate::store::Store;

/// Idle read-only connections kept for the next request; more are opened when needed.
const IDLE_MAX: usize = 4;

pub struct ReadPool {
    data_dir: PathBuf,
    idle: Mutex<Vec<Store>>,
}

impl ReadPool {
    /// A pool over the store whose database file is `db_path`.
    pub fn new(db_path: &Path) -> ReadPool {
        ReadPool {
            data_dir: db_path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on a read-only connection of its own (blocking: call from the blocking pool).
    pub fn with<T>(&self, f: impl FnOnce(&Store) -> T) -> Result<T> {
        let taken = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let store = match taken {
            Some(s) => s,
            None => Store::open_read_only(&self.data_dir)?,
        };
        let out = f(&store);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE_MAX {
            idle.push(store);
        }
        Ok(out)
    }
}
