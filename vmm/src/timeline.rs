//! Boot milestones, in wall-clock and host CPU time since process start.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Points in a VM's life, in the order they happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Milestone {
    VmCreated,
    KernelLoaded,
    /// The VM was rebuilt from a snapshot (instead of a kernel loaded).
    Restored,
    FirstKvmRun,
    /// The guest's init wrote the boot timer port.
    GuestInit,
    Exited,
}

impl Milestone {
    pub const ALL: [Milestone; 6] = [
        Milestone::VmCreated,
        Milestone::KernelLoaded,
        Milestone::Restored,
        Milestone::FirstKvmRun,
        Milestone::GuestInit,
        Milestone::Exited,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Milestone::VmCreated => "VM created",
            Milestone::KernelLoaded => "kernel loaded",
            Milestone::Restored => "restored from snapshot",
            Milestone::FirstKvmRun => "first KVM_RUN",
            Milestone::GuestInit => "guest init (boot timer)",
            Milestone::Exited => "VM exited",
        }
    }
}

/// When a milestone was reached.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Mark {
    pub milestone: Milestone,
    /// Wall-clock milliseconds since process start.
    pub wall_ms: f64,
    /// Host CPU milliseconds used by the whole process so far.
    pub cpu_ms: f64,
}

/// Records each milestone once; safe to call from any thread.
pub struct Timeline {
    origin: Instant,
    marks: [OnceLock<Mark>; Milestone::ALL.len()],
    vcpu_cpu_ns: AtomicU64,
}

impl Timeline {
    /// `origin` is the process start as seen by `main`.
    pub fn new(origin: Instant) -> Self {
        Self {
            origin,
            marks: Default::default(),
            vcpu_cpu_ns: AtomicU64::new(0),
        }
    }

    pub fn mark(&self, milestone: Milestone) {
        let index = Milestone::ALL
            .iter()
            .position(|m| *m == milestone)
            .unwrap_or_default();
        let _ = self.marks[index].get_or_init(|| Mark {
            milestone,
            wall_ms: ms(self.origin.elapsed()),
            cpu_ms: ms(cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID)),
        });
    }

    /// Adds the CPU time of a vCPU thread that is about to end.
    pub fn add_vcpu_thread_cpu(&self) {
        let used = cpu_time(libc::CLOCK_THREAD_CPUTIME_ID).as_nanos() as u64;
        self.vcpu_cpu_ns.fetch_add(used, Ordering::Relaxed);
    }

    pub fn report(&self) -> TimelineReport {
        TimelineReport {
            marks: self.marks.iter().filter_map(|m| m.get().copied()).collect(),
            vcpu_threads_cpu_ms: self.vcpu_cpu_ns.load(Ordering::Relaxed) as f64 / 1e6,
            process_cpu_ms: ms(cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID)),
        }
    }
}

/// A snapshot of a [`Timeline`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimelineReport {
    pub marks: Vec<Mark>,
    /// CPU time of the vCPU threads (guest execution plus their exit
    /// handling), summed when the threads ended.
    pub vcpu_threads_cpu_ms: f64,
    /// CPU time of the whole process when the report was taken.
    pub process_cpu_ms: f64,
}

impl TimelineReport {
    pub fn get(&self, milestone: Milestone) -> Option<Mark> {
        self.marks
            .iter()
            .copied()
            .find(|m| m.milestone == milestone)
    }

    /// Process CPU not spent on vCPU threads: the VMM's own overhead.
    pub fn vmm_cpu_ms(&self) -> f64 {
        (self.process_cpu_ms - self.vcpu_threads_cpu_ms).max(0.0)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_once_in_order_of_arrival() {
        let t = Timeline::new(Instant::now());
        t.mark(Milestone::KernelLoaded);
        std::thread::sleep(Duration::from_millis(2));
        t.mark(Milestone::VmCreated);
        let first = t.report().get(Milestone::KernelLoaded).unwrap();
        t.mark(Milestone::KernelLoaded);
        let report = t.report();
        assert_eq!(report.get(Milestone::KernelLoaded), Some(first));
        assert!(report.get(Milestone::VmCreated).unwrap().wall_ms > first.wall_ms);
        assert!(report.get(Milestone::Exited).is_none());
        assert_eq!(report.marks.len(), 2);
    }
}
