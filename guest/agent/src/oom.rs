//! OOM events: watches each container's `memory.events` with inotify (the
//! kernel signals a modification when a counter changes) and queues the
//! container id whenever `oom_kill` grows, for the runtime's long-poll
//! GetOomEvent. One thread, no polling.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use crate::cgroup::parse_flat_keyed;

/// Errors setting up OOM watching.
#[derive(Debug, thiserror::Error)]
pub enum OomError {
    #[error("inotify: {0}")]
    Inotify(nix::Error),
    #[error("watch {path}: {source}")]
    Watch { path: PathBuf, source: nix::Error },
}

struct Watch {
    container_id: String,
    file: PathBuf,
    oom_kills: u64,
}

#[derive(Default)]
struct State {
    watches: HashMap<WatchDescriptor, Watch>,
    events: VecDeque<String>,
}

/// Queue of containers that had a process OOM-killed.
pub struct OomWatcher {
    inotify: Inotify,
    state: Mutex<State>,
    ready: Condvar,
}

fn oom_kills(file: &PathBuf) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| parse_flat_keyed(&t, "oom_kill"))
        .unwrap_or(0)
}

impl OomWatcher {
    pub fn new() -> Result<OomWatcher, OomError> {
        Ok(OomWatcher {
            inotify: Inotify::init(InitFlags::IN_CLOEXEC).map_err(OomError::Inotify)?,
            state: Mutex::default(),
            ready: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts watching `file` (a cgroup's memory.events) for `container_id`.
    pub fn watch(&self, container_id: &str, file: PathBuf) -> Result<(), OomError> {
        let wd = self
            .inotify
            .add_watch(&file, AddWatchFlags::IN_MODIFY)
            .map_err(|source| OomError::Watch {
                path: file.clone(),
                source,
            })?;
        let oom_kills = oom_kills(&file);
        self.lock().watches.insert(
            wd,
            Watch {
                container_id: container_id.to_string(),
                file,
                oom_kills,
            },
        );
        Ok(())
    }

    /// Stops watching the container (its cgroup is going away).
    pub fn unwatch(&self, container_id: &str) {
        let mut st = self.lock();
        let wds: Vec<_> = st
            .watches
            .iter()
            .filter(|(_, w)| w.container_id == container_id)
            .map(|(wd, _)| *wd)
            .collect();
        for wd in wds {
            st.watches.remove(&wd);
            let _ = self.inotify.rm_watch(wd);
        }
    }

    /// Blocks until a container had an OOM kill and returns its id.
    pub fn next_event(&self) -> String {
        let mut st = self.lock();
        loop {
            if let Some(id) = st.events.pop_front() {
                return id;
            }
            st = self.ready.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Re-reads the counters of the watches that fired.
    fn handle(&self, fired: &[WatchDescriptor]) {
        let mut st = self.lock();
        let mut new = Vec::new();
        for wd in fired {
            if let Some(w) = st.watches.get_mut(wd) {
                let now = oom_kills(&w.file);
                if now > w.oom_kills {
                    tracing::info!(container = %w.container_id, "OOM kill");
                    new.push(w.container_id.clone());
                }
                w.oom_kills = now;
            }
        }
        if !new.is_empty() {
            st.events.extend(new);
            drop(st);
            self.ready.notify_all();
        }
    }

    /// The watcher thread's body.
    pub fn run(&self) -> ! {
        loop {
            match self.inotify.read_events() {
                Ok(events) => {
                    let fired: Vec<_> = events.iter().map(|e| e.wd).collect();
                    self.handle(&fired);
                }
                Err(e) => {
                    tracing::error!("inotify read: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn growing_oom_kill_counter_queues_the_container() {
        let dir = std::env::temp_dir().join(format!("skiff-oom-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("memory.events");
        std::fs::write(&file, "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n").unwrap();
        let w = Arc::new(OomWatcher::new().unwrap());
        w.watch("c1", file.clone()).unwrap();
        let w2 = w.clone();
        std::thread::spawn(move || w2.run());
        // A change that is not an OOM kill queues nothing...
        std::fs::write(&file, "low 0\nhigh 1\nmax 0\noom 0\noom_kill 0\n").unwrap();
        std::fs::write(&file, "low 0\nhigh 1\nmax 1\noom 1\noom_kill 1\n").unwrap();
        // ...an OOM kill does.
        assert_eq!(w.next_event(), "c1");
        w.unwatch("c1");
        assert!(w.lock().watches.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
