//! Values built from files on disk and built again when the files change: server and client
//! certificates, CA files.
//!
//! Files are looked at when the value is asked for (a handshake comes in), at most once per
//! [`RELOAD_CHECK_INTERVAL`]. A change is found by comparing the files' bytes with those of
//! the last look, not by modification times: a symbolic link swapped to a file with the same
//! time (a Nix store, `cp -p`, `rsync -a`) is a change too. A version that cannot be read or
//! does not build keeps the last good value in place and is logged once; the next look tries
//! again only when the bytes differ (a writer that was half-way through has finished).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

/// Files are looked at again at most this often: a handshake pays for reading a few small
/// files once per interval, and a renewed file is taken within it.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Builds the value from the files' bytes, in the order of the paths; errors name the file.
type Build<T> = Box<dyn Fn(&[(&Path, &[u8])]) -> Result<T, String> + Send + Sync>;

/// A value built from files, rebuilt when they change.
pub struct Reloading<T> {
    /// What the files hold, for logs: "TLS certificate", "TLS CA file", …
    what: &'static str,
    paths: Vec<PathBuf>,
    build: Build<T>,
    current: ArcSwap<T>,
    seen: Mutex<Seen>,
}

/// The last look at the files.
struct Seen {
    checked: Instant,
    /// What each file held, or why it could not be read: a version is built, or its failure
    /// logged, once.
    contents: Vec<Result<Vec<u8>, String>>,
}

impl<T> Reloading<T> {
    /// Reads `paths` and builds the first value; an error names the file and fails the
    /// configuration.
    pub fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        build: impl Fn(&[(&Path, &[u8])]) -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let contents = read_all(&paths);
        let bytes = contents
            .iter()
            .zip(&paths)
            .map(|(read, path)| {
                read.as_deref()
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let first = build(&with_paths(&paths, &bytes))?;
        Ok(Reloading {
            what,
            paths,
            build: Box::new(build),
            current: ArcSwap::from_pointee(first),
            seen: Mutex::new(Seen {
                checked: Instant::now(),
                contents,
            }),
        })
    }

    /// The value, after taking changed files if it is time to look.
    pub fn current(&self) -> Arc<T> {
        self.refresh();
        self.current.load_full()
    }

    fn refresh(&self) {
        let Ok(mut seen) = self.seen.try_lock() else {
            return; // another handshake is looking right now
        };
        if seen.checked.elapsed() < RELOAD_CHECK_INTERVAL {
            return;
        }
        seen.checked = Instant::now();
        let contents = read_all(&self.paths);
        if contents == seen.contents {
            return;
        }
        seen.contents = contents;
        let files = self.files();
        let built = seen
            .contents
            .iter()
            .zip(&self.paths)
            .map(|(read, path)| {
                read.as_deref()
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
            })
            .collect::<Result<Vec<_>, _>>()
            .and_then(|bytes| (self.build)(&with_paths(&self.paths, &bytes)));
        match built {
            Ok(value) => {
                self.current.store(Arc::new(value));
                tracing::info!(files = %files, "{} reloaded", self.what);
            }
            Err(e) => tracing::warn!(
                files = %files, error = %e,
                "{} not reloaded; keeping the previous one until the files change again",
                self.what
            ),
        }
    }

    fn files(&self) -> String {
        self.paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("what", &self.what)
            .field("paths", &self.paths)
            .finish()
    }
}

fn read_all(paths: &[PathBuf]) -> Vec<Result<Vec<u8>, String>> {
    paths
        .iter()
        .map(|p| std::fs::read(p).map_err(|e| e.to_string()))
        .collect()
}

fn with_paths<'a>(paths: &'a [PathBuf], bytes: &[&'a [u8]]) -> Vec<(&'a Path, &'a [u8])> {
    paths
        .iter()
        .map(PathBuf::as_path)
        .zip(bytes.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A value that is the file's text, and counts its builds.
    fn text_of(path: &Path, builds: &Arc<AtomicUsize>) -> Reloading<String> {
        let builds = builds.clone();
        Reloading::new("test file", vec![path.to_path_buf()], move |files| {
            builds.fetch_add(1, Ordering::Relaxed);
            let text = std::str::from_utf8(files[0].1).map_err(|e| e.to_string())?;
            if text.starts_with("bad") {
                return Err(format!("{}: bad", files[0].0.display()));
            }
            Ok(text.to_string())
        })
        .unwrap()
    }

    /// Lets the next `current` look at the files.
    fn expire(reloading: &Reloading<String>) {
        reloading.seen.lock().unwrap().checked = Instant::now() - RELOAD_CHECK_INTERVAL;
    }

    #[test]
    fn a_change_with_the_same_modification_time_is_taken() {
        let dir = std::env::temp_dir().join(format!("gost-reload-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("same-time");
        fs::write(&path, "one").unwrap();
        let time = fs::metadata(&path).unwrap().modified().unwrap();
        let builds = Arc::new(AtomicUsize::new(0));
        let reloading = text_of(&path, &builds);
        assert_eq!(*reloading.current(), "one");

        // Same length, same modification time: only the bytes tell.
        fs::write(&path, "two").unwrap();
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(time)
            .unwrap();
        assert_eq!(
            *reloading.current(),
            "one",
            "looked again within the interval"
        );
        expire(&reloading);
        assert_eq!(*reloading.current(), "two");

        // A broken version is built once, keeps the last good value, and is not tried again
        // until it changes.
        fs::write(&path, "bad one").unwrap();
        for _ in 0..3 {
            expire(&reloading);
            assert_eq!(*reloading.current(), "two");
        }
        assert_eq!(builds.load(Ordering::Relaxed), 3, "one, two, bad once");
        fs::write(&path, "three").unwrap();
        expire(&reloading);
        assert_eq!(*reloading.current(), "three");
        // A file that is gone keeps the value too.
        fs::remove_file(&path).unwrap();
        expire(&reloading);
        assert_eq!(*reloading.current(), "three");
        let _ = fs::remove_dir_all(&dir);
    }
}
