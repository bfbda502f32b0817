//! A procfs/sysfs/cgroup file kept open and re-read from offset 0 at each scrape (cheaper than
//! open + close), into a buffer reused across scrapes. A missing file is `Ok(None)`: collectors
//! skip what the kernel does not have.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};

pub struct ProcFile {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    file: Option<File>,
    buf: String,
}

impl ProcFile {
    pub fn new(path: impl Into<PathBuf>) -> ProcFile {
        ProcFile {
            path: path.into(),
            state: Mutex::new(State::default()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the whole file and hands its text to `f`. `Ok(None)` if the file does not exist.
    pub fn with<R>(&self, f: impl FnOnce(&str) -> Result<R>) -> Result<Option<R>> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *st;
        if st.file.is_none() {
            match File::open(&self.path) {
                Ok(file) => st.file = Some(file),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) => {
                    return Err(e).with_context(|| format!("opening {}", self.path.display()))
                }
            }
        }
        st.buf.clear();
        let read = match st.file.as_mut() {
            Some(file) => file.rewind().and_then(|_| file.read_to_string(&mut st.buf)),
            None => return Ok(None),
        };
        if let Err(e) = read {
            // Re-open next time (the file may have been replaced).
            st.file = None;
            return Err(e).with_context(|| format!("reading {}", self.path.display()));
        }
        f(&st.buf)
            .with_context(|| format!("parsing {}", self.path.display()))
            .map(Some)
    }
}

/// Reads a small file once (no handle kept): `Ok(None)` if it does not exist.
pub fn read_optional(path: &Path, buf: &mut String) -> Result<bool> {
    buf.clear();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_string(buf)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(true)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("opening {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rereads_the_same_handle_and_skips_missing() {
        let dir = std::env::temp_dir().join(format!("bq-procfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        std::fs::write(&p, "a 1\n").unwrap();
        let pf = ProcFile::new(&p);
        assert_eq!(pf.with(|t| Ok(t.to_string())).unwrap().unwrap(), "a 1\n");
        // Same inode rewritten in place: the kept handle sees the new text.
        std::fs::write(&p, "b 22\n").unwrap();
        assert_eq!(pf.with(|t| Ok(t.to_string())).unwrap().unwrap(), "b 22\n");
        let missing = ProcFile::new(dir.join("nope"));
        assert!(missing.with(|_| Ok(())).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
