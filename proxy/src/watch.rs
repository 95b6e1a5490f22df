//! Noticing that configuration files changed on disk.
//!
//! In a pod the configuration is a mounted ConfigMap or Secret: the kubelet writes a new
//! timestamped directory and swaps a `..data` symlink, so the file itself never sees a write
//! event. The watcher therefore watches each file's directory (inotify through `notify`) and
//! compares contents rather than trusting event kinds; a timer re-reads the files as well, in
//! case events are not available (some network and overlay file systems) or were missed.

use std::path::PathBuf;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

/// How often the files are re-read even without events: the fallback's worst-case delay.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Quiet time after an event before the files are read: an editor's save or a `cp` arrives
/// as several events, and reading between them would see a half-written file. Short, so
/// that a reload still applies within the 50 ms of the change.
pub const SETTLE_TIME: Duration = Duration::from_millis(10);

/// Longer quiet time when a file that had contents reads as empty or missing: a file rewritten
/// in place (`>` in a shell, most tools' plain write) is truncated first, and a loaded machine
/// can hold the writer back for more than [`SETTLE_TIME`]. Taking that instant for the new
/// configuration would stop every service until the write lands.
pub const EMPTIED_SETTLE_TIME: Duration = Duration::from_millis(250);

/// Reports when the contents of any watched file differ from what it last saw.
pub struct FileWatcher {
    changed: mpsc::Receiver<()>,
    _task: AbortOnDropHandle<()>,
    // Kept alive for its inotify watches; `None` where events are unavailable.
    _events: Option<notify::RecommendedWatcher>,
}

impl FileWatcher {
    /// Watches `files` (their current contents are the baseline). Must be called within a
    /// Tokio runtime.
    pub fn new(files: Vec<PathBuf>) -> Self {
        let (event_tx, mut events) = mpsc::unbounded_channel::<()>();
        let watcher = notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
            if result.is_ok() {
                let _ = event_tx.send(());
            }
        });
        let events_watcher = match watcher {
            Ok(mut watcher) => {
                let mut ok = true;
                for dir in directories(&files) {
                    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch; polling every {POLL_INTERVAL:?}");
                        ok = false;
                    }
                }
                ok.then_some(watcher)
            }
            Err(e) => {
                tracing::warn!(error = %e, "file events unavailable; polling every {POLL_INTERVAL:?}");
                None
            }
        };
        let (changed_tx, changed) = mpsc::channel(1);
        // Read now, not in the task: a change between this call and the task's first run
        // would otherwise become the baseline and go unnoticed.
        let mut seen = contents(&files);
        let task = tokio::spawn(async move {
            let mut poll = tokio::time::interval(POLL_INTERVAL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    Some(()) = events.recv() => {
                        tokio::time::sleep(SETTLE_TIME).await;
                        while events.try_recv().is_ok() {}
                    }
                    _ = poll.tick() => {}
                }
                let mut now = contents(&files);
                let emptied = now
                    .iter()
                    .zip(&seen)
                    .any(|(now, before)| is_empty(now) && !is_empty(before));
                if emptied {
                    tokio::time::sleep(EMPTIED_SETTLE_TIME).await;
                    while events.try_recv().is_ok() {}
                    now = contents(&files);
                }
                if now != seen {
                    seen = now;
                    // A reload already pending covers this change too.
                    let _ = changed_tx.try_send(());
                }
            }
        });
        FileWatcher {
            changed,
            _task: AbortOnDropHandle::new(task),
            _events: events_watcher,
        }
    }

    /// Waits for the next change.
    pub async fn changed(&mut self) {
        if self.changed.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

/// The directories holding `files` (each once), where the kubelet's symlink swaps happen.
fn directories(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .map(|f| match f.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Every file's contents (following symlinks); `None` for a file that cannot be read, so that
/// its return is a change, even empty (an empty users file is no user, not a missing file).
fn contents(files: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    files.iter().map(|f| std::fs::read(f).ok()).collect()
}

/// Whether a file read as [`contents`] has nothing in it, or is not there.
fn is_empty(contents: &Option<Vec<u8>>) -> bool {
    contents.as_ref().is_none_or(Vec::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn changed_within(watcher: &mut FileWatcher, limit: Duration) -> bool {
        tokio::time::timeout(limit, watcher.changed()).await.is_ok()
    }

    #[tokio::test]
    async fn a_kubelet_style_symlink_swap_is_noticed() {
        let dir = std::env::temp_dir().join(format!("gost-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("v1")).unwrap();
        std::fs::create_dir_all(dir.join("v2")).unwrap();
        std::fs::write(dir.join("v1/gost.yaml"), "one").unwrap();
        std::fs::write(dir.join("v2/gost.yaml"), "two").unwrap();
        std::os::unix::fs::symlink("v1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/gost.yaml", dir.join("gost.yaml")).unwrap();
        let mut watcher = FileWatcher::new(vec![dir.join("gost.yaml")]);
        // Nothing changed yet.
        assert!(!changed_within(&mut watcher, Duration::from_millis(300)).await);
        // The kubelet's swap: a new symlink renamed over `..data`.
        std::os::unix::fs::symlink("v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert!(changed_within(&mut watcher, Duration::from_secs(1)).await);
        // Touching without a content change is not a change.
        std::fs::write(dir.join("v2/gost.yaml"), "two").unwrap();
        assert!(!changed_within(&mut watcher, Duration::from_millis(300)).await);
        std::fs::write(dir.join("v2/gost.yaml"), "three").unwrap();
        // Written inside v2/, which is not watched: the poll finds it.
        assert!(changed_within(&mut watcher, POLL_INTERVAL * 2).await);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_file_rewritten_in_place_is_not_taken_for_empty() {
        let dir = std::env::temp_dir().join(format!("gost-watch-trunc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("gost.yaml");
        std::fs::write(&file, "services: [one]").unwrap();
        let mut watcher = FileWatcher::new(vec![file.clone()]);
        // Truncated, and the writer held back well past the usual settle time.
        let truncated = std::fs::File::create(&file).unwrap();
        tokio::time::sleep(SETTLE_TIME * 5).await;
        assert!(
            !changed_within(&mut watcher, Duration::from_millis(50)).await,
            "the emptied file was reported before its new contents landed"
        );
        std::fs::write(&file, "services: [two]").unwrap();
        drop(truncated);
        assert!(changed_within(&mut watcher, Duration::from_secs(1)).await);
        // A file that really stays empty is a change too, after the longer wait.
        std::fs::write(&file, "").unwrap();
        assert!(changed_within(&mut watcher, EMPTIED_SETTLE_TIME * 4).await);
        // Removed, then back empty (a users file emptied to revoke everyone): two changes.
        std::fs::write(&file, "services: [three]").unwrap();
        assert!(changed_within(&mut watcher, Duration::from_secs(1)).await);
        std::fs::remove_file(&file).unwrap();
        assert!(changed_within(&mut watcher, EMPTIED_SETTLE_TIME * 4).await);
        std::fs::write(&file, "").unwrap();
        assert!(
            changed_within(&mut watcher, POLL_INTERVAL * 2).await,
            "a missing file that came back empty was not noticed"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
