//! Runs every committed input, `fuzz/corpus/<target>/*` (the seeds and
//! what fuzzing added) and `fuzz/regressions/<target>/*` (every crash or
//! hang a fuzzer found), through the target's library function, as the
//! fuzzer would but without libFuzzer. An input that panics or does not
//! finish within a minute fails the test, named.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);

/// The targets check that the process's fd count is back where it was
/// after each input: no other test of this binary may open files while
/// they run, so the tests take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let hidden = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if path.is_file() && !hidden {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Runs `data` on a thread of its own, so a hang is reported instead of
/// stalling the test run.
fn run_one(target: &'static str, data: Vec<u8>) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("replay-{target}"))
        .spawn(move || {
            let result = std::panic::catch_unwind(|| skiff_fuzz::run_target(target, &data));
            let _ = tx.send(result.map_err(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into())
            }));
        })
        .expect("thread");
    match rx.recv_timeout(LIMIT) {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err("unknown target".into()),
        Ok(Err(msg)) => Err(msg),
        Err(_) => Err(format!("did not finish within {LIMIT:?} (a spin or hang)")),
    }
}

/// Replays one target's inputs; returns its failures.
fn replay(target: &'static str) -> Vec<String> {
    let files = inputs(target);
    let mut failures = Vec::new();
    if files.is_empty() {
        failures.push(format!("{target}: no corpus"));
    }
    let start = Instant::now();
    for path in &files {
        let data = std::fs::read(path).expect("input");
        if let Err(msg) = run_one(target, data) {
            let hung = msg.starts_with("did not finish");
            failures.push(format!("{}: {msg}", path.display()));
            if hung {
                break; // the stuck input holds the targets' lock
            }
        }
    }
    eprintln!(
        "{target}: {} inputs in {:.2} s",
        files.len(),
        start.elapsed().as_secs_f64()
    );
    failures
}

/// One test for all targets: they share the process's fd count and
/// scratch directory, which goes once they are done.
#[test]
fn corpus_and_regressions_replay() {
    let _serial = serial();
    let mut failures = Vec::new();
    for target in skiff_fuzz::TARGETS {
        failures.extend(replay(target));
        if failures.iter().any(|f| f.contains("did not finish")) {
            break;
        }
    }
    skiff_fuzz::cleanup();
    assert!(
        failures.is_empty(),
        "{} inputs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn seeds_in_the_corpus_are_current() {
    // Every seed the crate writes is committed as it is written now, so
    // the corpus follows the decoders when they change.
    let _serial = serial();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut stale = Vec::new();
    for (target, name, data) in skiff_fuzz::seeds::all() {
        let path = root.join(target).join(format!("seed-{name}"));
        if std::fs::read(&path).ok().as_deref() != Some(&data[..]) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "seed files missing or stale (regenerate with `cargo test -p skiff-fuzz -- \
         --ignored write_seed_corpus`):\n{}",
        stale.join("\n")
    );
}
