//! Cluster state from a YAML file (what `kubectl get ... -o yaml` prints), watched for changes.
//!
//! Polls the file's metadata: it works the same on every filesystem, with editors that replace the
//! file (rename) and with ConfigMap volumes (symlink swaps), where inotify needs special cases.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tracing::{info, warn};

use super::{ClusterSource, SourceSnapshot};
use crate::parse_manifest;

pub struct FileSource {
    path: PathBuf,
    poll_interval: Duration,
}

impl FileSource {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            poll_interval: Duration::from_millis(50),
        }
    }

    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }
}

/// What identifies a version of the file without reading it.
#[derive(PartialEq, Eq, Clone, Copy)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &std::path::Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

impl ClusterSource for FileSource {
    async fn run(self, updates: watch::Sender<SourceSnapshot>) {
        let name = format!("file:{}", self.path.display());
        updates.send_modify(|s| s.status.name = name.clone());
        let mut last: Option<Stamp> = None;
        let mut interval = tokio::time::interval(self.poll_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if updates.is_closed() {
                return;
            }
            let result = match stamp(&self.path) {
                Ok(current) if Some(current) == last => continue,
                Ok(current) => {
                    last = Some(current);
                    let path = self.path.clone();
                    tokio::task::spawn_blocking(move || {
                        let text = std::fs::read_to_string(&path)
                            .map_err(|e| format!("cannot read: {e}"))?;
                        parse_manifest(&text).map_err(|e| e.to_string())
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("reader failed: {e}")))
                }
                Err(e) => {
                    // Re-read as soon as the file is back, even with the same stamp as before.
                    last = None;
                    Err(format!("cannot read: {e}"))
                }
            };
            match result {
                Ok(state) => {
                    info!(source = %name, services = state.services.len(), nodes = state.nodes.len(),
                          endpoint_slices = state.endpoint_slices.len(), "cluster state read");
                    let version = updates.borrow().version + 1;
                    updates.send_replace(SourceSnapshot::synced(&name, Arc::new(state), version));
                }
                Err(error) => {
                    let changed =
                        updates.borrow().status.last_error.as_deref() != Some(error.as_str());
                    if changed {
                        warn!(source = %name, %error, "cluster state not usable; keeping the last plan");
                        updates.send_modify(|s| s.status.last_error = Some(error));
                    }
                }
            }
        }
    }
}
