//! The container manager against a fake sandbox and the fake agent: the
//! task API's life cycle, its error paths and what each leaves behind,
//! and the events, without KVM.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oci_spec::runtime::{Spec, SpecBuilder};

use super::*;
use crate::agent::fake::FakeAgent;
use crate::cri::annotations;
use skiff_agent_protocol::agent::CreateContainerRequest;

/// Long enough for a watcher thread on a loaded CI machine; a test that
/// waits this long has failed.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A sandbox whose "guest" is the fake agent: adding a container creates
/// it there, as the real one does after sharing it.
struct FakeSandbox {
    id: String,
    agent: Arc<FakeAgent>,
    added: Mutex<Vec<String>>,
    shut_down: AtomicBool,
    teardown: Mutex<Option<Teardown>>,
    /// While held, a teardown waits (the VM is slow to end).
    teardown_gate: Mutex<()>,
}

impl PodSandbox for FakeSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn agent(&self) -> Arc<dyn Agent> {
        self.agent.clone()
    }

    fn timeline(&self) -> String {
        "agent ready 1.0 ms".into()
    }

    fn add_container(
        &self,
        container_id: &str,
        _bundle: &Path,
        _rootfs: &Path,
        _spec: Spec,
    ) -> Result<(), SandboxError> {
        self.agent.create_container(CreateContainerRequest {
            container_id: container_id.into(),
            ..Default::default()
        })?;
        self.added.lock().unwrap().push(container_id.into());
        Ok(())
    }

    fn remove_container(&self, container_id: &str) -> Result<(), SandboxError> {
        self.added.lock().unwrap().retain(|c| c != container_id);
        Ok(self.agent.remove_container(container_id)?)
    }

    fn shutdown(&self, how: Teardown) -> Result<(), SandboxError> {
        drop(self.teardown_gate.lock().unwrap());
        self.shut_down.store(true, Ordering::SeqCst);
        *self.teardown.lock().unwrap() = Some(how);
        match how {
            Teardown::PowerOff => self.agent.destroy_sandbox(Duration::from_secs(1))?,
            // The VM is stopped: its connection drops.
            Teardown::Kill => self.agent.close(),
        }
        Ok(())
    }
}

/// Boots fake sandboxes, all with the same agent, and keeps them for the
/// test to look at.
#[derive(Default)]
struct FakeFactory {
    agent: Arc<FakeAgent>,
    boots: AtomicUsize,
    fail_boot: AtomicBool,
    booted: Mutex<HashMap<String, Arc<FakeSandbox>>>,
}

impl SandboxFactory for FakeFactory {
    fn boot(&self, req: BootRequest<'_>) -> Result<Arc<dyn PodSandbox>, SandboxError> {
        self.boots.fetch_add(1, Ordering::SeqCst);
        if self.fail_boot.load(Ordering::SeqCst) {
            return Err(SandboxError::AgentTimeout {
                secs: 1,
                state: "Running".into(),
                console: "Kernel panic".into(),
            });
        }
        let sandbox = Arc::new(FakeSandbox {
            id: req.sandbox_id.into(),
            agent: self.agent.clone(),
            added: Mutex::default(),
            shut_down: AtomicBool::new(false),
            teardown: Mutex::default(),
            teardown_gate: Mutex::default(),
        });
        self.booted
            .lock()
            .unwrap()
            .insert(req.sandbox_id.into(), sandbox.clone());
        Ok(sandbox)
    }
}

impl FakeFactory {
    fn sandbox(&self, id: &str) -> Arc<FakeSandbox> {
        self.booted.lock().unwrap()[id].clone()
    }
}

struct Harness {
    pod: Pod,
    events: Receiver<PodEvent>,
    factory: Arc<FakeFactory>,
    config: RuntimeConfig,
}

fn harness() -> Harness {
    let factory = Arc::new(FakeFactory::default());
    let (pod, events) = Pod::new(factory.clone());
    Harness {
        pod,
        events,
        factory,
        config: RuntimeConfig::default(),
    }
}

/// A spec with no CRI annotations (a container of its own), or one of
/// pod `sandbox`'s app containers.
fn spec(pod_of: Option<&str>) -> Spec {
    let mut builder = SpecBuilder::default();
    if let Some(sandbox) = pod_of {
        builder = builder.annotations(HashMap::from([
            (
                annotations::CONTAINER_TYPE.to_string(),
                annotations::TYPE_CONTAINER.to_string(),
            ),
            (annotations::SANDBOX_ID.to_string(), sandbox.to_string()),
        ]));
    }
    builder.build().unwrap()
}

impl Harness {
    fn create(&self, id: &str, pod_of: Option<&str>) -> Result<Created, PodError> {
        self.pod.create(NewContainer {
            id,
            bundle: Path::new("/run/bundle"),
            rootfs: Path::new("/run/bundle/rootfs"),
            spec: spec(pod_of),
            config: &self.config,
            stdio: StdioPaths::default(),
        })
    }

    fn agent(&self) -> &FakeAgent {
        &self.factory.agent
    }

    fn next_event(&self) -> PodEvent {
        self.events
            .recv_timeout(EVENT_TIMEOUT)
            .expect("a pod event")
    }

    fn wait_in_agent(&self, call: &str) {
        let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
        while !self.agent().calls().iter().any(|c| c == call) {
            assert!(std::time::Instant::now() < deadline, "no {call}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The next `n` events, in the order they came (exit watchers race).
fn events(h: &Harness, n: usize) -> Vec<PodEvent> {
    (0..n).map(|_| h.next_event()).collect()
}

/// The exit status reported for `container_id`'s init in `events`.
fn exit_of(events: &[PodEvent], container_id: &str) -> Option<u32> {
    events.iter().find_map(|e| match e {
        PodEvent::Exited {
            container_id: c,
            exec_id,
            exit,
        } if c == container_id && exec_id.is_empty() => Some(exit.status),
        _ => None,
    })
}

fn exited(container_id: &str, exec_id: &str, event: PodEvent) -> u32 {
    match event {
        PodEvent::Exited {
            container_id: c,
            exec_id: e,
            exit,
        } if c == container_id && e == exec_id => exit.status,
        other => panic!("expected the exit of {container_id}/{exec_id}, got {other:?}"),
    }
}

#[test]
fn a_pod_boots_once_runs_its_containers_and_ends_with_its_sandbox() {
    let h = harness();
    let created = h.create("pod", None).unwrap();
    assert_eq!(
        created,
        Created {
            sandbox_id: "pod".into(),
            booted: true
        }
    );
    let joined = h.create("app", Some("pod")).unwrap();
    assert_eq!(
        joined,
        Created {
            sandbox_id: "pod".into(),
            booted: false
        }
    );
    assert_eq!(h.factory.boots.load(Ordering::SeqCst), 1);
    assert_eq!(h.agent().containers(), ["app", "pod"]);
    assert_eq!(
        h.pod.state("app", "").unwrap().status,
        ProcessStatus::Created
    );
    assert_eq!(
        h.pod.state("app", "").unwrap().bundle,
        Path::new("/run/bundle")
    );

    h.pod.start("app", "").unwrap();
    assert_eq!(
        h.pod.state("app", "").unwrap().status,
        ProcessStatus::Running
    );
    h.wait_in_agent("WaitProcess(app,)");
    h.agent().exit("app", "", 7);
    assert_eq!(exited("app", "", h.next_event()), 7);
    assert_eq!(h.pod.wait("app", "").unwrap().status, 7);
    let state = h.pod.state("app", "").unwrap();
    assert_eq!(state.status, ProcessStatus::Stopped);
    assert_eq!(state.exit.unwrap().status, 7);

    assert_eq!(h.pod.delete("app", "").unwrap().status, 7);
    assert!(matches!(h.pod.state("app", ""), Err(PodError::NotFound(_))));
    assert_eq!(h.agent().containers(), ["pod"]);
    let sandbox = h.factory.sandbox("pod");
    assert!(!sandbox.shut_down.load(Ordering::SeqCst));
    assert!(!h.pod.shutdown(), "a container is left");

    // The sandbox's own container never ran: it exits 0 at delete, and
    // the VM goes with it.
    assert_eq!(h.pod.delete("pod", "").unwrap().status, 0);
    assert!(sandbox.shut_down.load(Ordering::SeqCst));
    assert!(h.pod.is_empty());
    assert!(h.pod.shutdown());
}

#[test]
fn an_exec_runs_beside_its_container_and_is_forgotten_at_delete() {
    let h = harness();
    h.create("c", None).unwrap();
    h.pod.start("c", "").unwrap();
    assert!(matches!(
        h.pod.add_exec("c", "e", StdioPaths::default(), Vec::new()),
        Err(PodError::InvalidArgument(_))
    ));
    assert!(matches!(
        h.pod
            .add_exec("nope", "e", StdioPaths::default(), b"{}".to_vec()),
        Err(PodError::NotFound(_))
    ));
    h.pod
        .add_exec("c", "e", StdioPaths::default(), b"{}".to_vec())
        .unwrap();
    let again = h
        .pod
        .add_exec("c", "e", StdioPaths::default(), b"{}".to_vec());
    assert_eq!(again.unwrap_err().kind(), ErrorKind::AlreadyExists);
    assert_eq!(
        h.pod.state("c", "e").unwrap().status,
        ProcessStatus::Created
    );

    h.pod.start("c", "e").unwrap();
    assert!(h.agent().calls().contains(&"ExecProcess(c,e)".to_string()));
    let started_twice = h.pod.start("c", "e").unwrap_err();
    assert_eq!(started_twice.kind(), ErrorKind::FailedPrecondition);
    let running = h.pod.delete("c", "e").unwrap_err();
    assert_eq!(running.kind(), ErrorKind::FailedPrecondition);
    assert!(running.to_string().contains("still running"), "{running}");

    h.wait_in_agent("WaitProcess(c,e)");
    h.agent().exit("c", "e", 3);
    assert_eq!(exited("c", "e", h.next_event()), 3);
    assert_eq!(h.pod.delete("c", "e").unwrap().status, 3);
    assert!(matches!(h.pod.state("c", "e"), Err(PodError::NotFound(_))));
    // The container itself runs on.
    assert_eq!(h.pod.state("c", "").unwrap().status, ProcessStatus::Running);
}

#[test]
fn kill_reaches_the_agent_until_the_process_exited() {
    let h = harness();
    h.create("c", None).unwrap();
    h.pod.start("c", "").unwrap();
    h.pod.signal("c", "", 15, false).unwrap();
    assert!(h
        .agent()
        .calls()
        .contains(&"SignalProcess(c,,15)".to_string()));
    h.wait_in_agent("WaitProcess(c,)");
    h.agent().exit("c", "", 143);
    assert_eq!(exited("c", "", h.next_event()), 143);
    let gone = h.pod.signal("c", "", 9, true).unwrap_err();
    assert_eq!(gone.kind(), ErrorKind::NotFound);
    assert!(gone.to_string().contains("already exited"), "{gone}");
}

#[test]
fn pause_resume_update_stats_and_io_go_to_the_agent() {
    let h = harness();
    h.create("c", None).unwrap();
    h.pod.start("c", "").unwrap();
    h.pod.pause("c").unwrap();
    assert_eq!(h.pod.state("c", "").unwrap().status, ProcessStatus::Paused);
    assert_eq!(
        h.pod.delete("c", "").unwrap_err().kind(),
        ErrorKind::FailedPrecondition
    );
    h.pod.resume("c").unwrap();
    assert_eq!(h.pod.state("c", "").unwrap().status, ProcessStatus::Running);
    h.pod.update("c", b"{}".to_vec()).unwrap();
    h.pod.resize_pty("c", "", 24, 80).unwrap();
    h.pod.close_stdin("c", "").unwrap();
    let stats = h.pod.stats("c").unwrap();
    assert_eq!(stats.cpu_usage_usec, 42);
    assert_eq!(stats.memory_usage_bytes, 4096);
    assert_eq!(stats.pids_current, 1);
    let calls = h.agent().calls();
    for call in [
        "PauseContainer(c)",
        "ResumeContainer(c)",
        "UpdateContainer(c)",
        "TtyWinResize(c,,24x80)",
        "CloseStdin(c,)",
        "StatsContainer(c)",
    ] {
        assert!(calls.contains(&call.to_string()), "{call} in {calls:?}");
    }
    for unknown in [
        h.pod.pause("x"),
        h.pod.resume("x"),
        h.pod.update("x", Vec::new()),
        h.pod.stats("x").map(drop),
        h.pod.close_stdin("x", ""),
        h.pod.resize_pty("c", "x", 1, 1),
    ] {
        assert_eq!(unknown.unwrap_err().kind(), ErrorKind::NotFound);
    }
}

#[test]
fn a_failed_boot_leaves_no_container_and_the_next_create_boots_again() {
    let h = harness();
    h.factory.fail_boot.store(true, Ordering::SeqCst);
    let err = h.create("c", None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unknown);
    let text = err.to_string();
    assert!(
        text.starts_with("boot sandbox c: the guest agent did not answer"),
        "{text}"
    );
    assert!(text.contains("Kernel panic"), "{text}");
    assert!(h.pod.is_empty());
    assert!(matches!(h.pod.state("c", ""), Err(PodError::NotFound(_))));

    h.factory.fail_boot.store(false, Ordering::SeqCst);
    h.create("c", None).unwrap();
    assert_eq!(h.factory.boots.load(Ordering::SeqCst), 2);
}

#[test]
fn a_container_that_cannot_be_added_shuts_down_the_sandbox_booted_for_it() {
    let h = harness();
    h.agent().fail("CreateContainer");
    let err = h.create("c", None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "create container c: agent CreateContainer: CreateContainer failed (fake)"
    );
    assert!(h.factory.sandbox("c").shut_down.load(Ordering::SeqCst));
    assert!(h.pod.is_empty());
    // No sandbox is left to reach.
    assert!(h.pod.shutdown(), "nothing is left for the shim to wait for");
}

#[test]
fn a_container_that_cannot_join_leaves_its_pod_running() {
    let h = harness();
    h.create("pod", None).unwrap();
    h.agent().fail("CreateContainer");
    assert!(h.create("app", Some("pod")).is_err());
    assert!(!h.factory.sandbox("pod").shut_down.load(Ordering::SeqCst));
    assert!(matches!(h.pod.state("app", ""), Err(PodError::NotFound(_))));
    assert_eq!(
        h.pod.state("pod", "").unwrap().status,
        ProcessStatus::Created
    );
}

#[test]
fn creates_that_cannot_be_are_refused_before_any_boot() {
    let h = harness();
    h.create("pod", None).unwrap();
    let twice = h.create("pod", None).unwrap_err();
    assert_eq!(twice.kind(), ErrorKind::AlreadyExists);
    let other = h.create("stranger", Some("other-pod")).unwrap_err();
    assert_eq!(other.kind(), ErrorKind::FailedPrecondition);
    assert_eq!(
        other.to_string(),
        "this shim runs sandbox pod, not other-pod"
    );

    let mut with_device = spec(None);
    let device = oci_spec::runtime::LinuxDeviceBuilder::default()
        .path("/dev/nope")
        .typ(oci_spec::runtime::LinuxDeviceType::B)
        .major(4095)
        .minor(4095)
        .build()
        .unwrap();
    with_device.set_linux(Some(
        oci_spec::runtime::LinuxBuilder::default()
            .devices(vec![device])
            .build()
            .unwrap(),
    ));
    let fresh = harness();
    let err = fresh
        .pod
        .create(NewContainer {
            id: "d",
            bundle: Path::new("/b"),
            rootfs: Path::new("/b/rootfs"),
            spec: with_device,
            config: &fresh.config,
            stdio: StdioPaths::default(),
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(
        err.to_string()
            .starts_with("block device /dev/nope (4095:4095): not on this host"),
        "{err}"
    );
    assert_eq!(fresh.factory.boots.load(Ordering::SeqCst), 0);
}

#[test]
fn an_exec_start_does_not_wait_out_a_slow_guest_and_a_kill_then_ends_it_at_once() {
    let h = harness();
    h.create("c", None).unwrap();
    h.pod.start("c", "").unwrap();
    // containerd's side of the exec's stdout: a reader that waits for a
    // writer, then for the end, as ExecSync's output copy does.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("stdout");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let (ended, output_end) = std::sync::mpsc::channel();
    let reader = fifo.clone();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let read = std::fs::File::open(reader).and_then(|mut f| f.read_to_end(&mut out));
        let _ = ended.send(read.map(|_| out));
    });
    let stdio = StdioPaths {
        stdout: fifo.display().to_string(),
        ..StdioPaths::default()
    };
    h.pod.add_exec("c", "e", stdio, b"{}".to_vec()).unwrap();
    h.agent().hold("ExecProcess");
    // Answers while the guest is still spawning: containerd's exec
    // timeout starts now, not when the guest is done.
    let (answered, answer) = std::sync::mpsc::channel();
    let pod = h.pod.clone();
    std::thread::spawn(move || answered.send(pod.start("c", "e")));
    answer
        .recv_timeout(EVENT_TIMEOUT)
        .expect("Start answers while the guest spawns")
        .unwrap();
    assert_eq!(
        h.pod.state("c", "e").unwrap().status,
        ProcessStatus::Running
    );
    h.pod.signal("c", "e", 15, false).unwrap();
    h.pod.signal("c", "e", 9, false).unwrap();
    assert!(
        !h.agent()
            .calls()
            .iter()
            .any(|c| c.starts_with("SignalProcess(c,e")),
        "queued until the guest has the process"
    );
    // The SIGKILL is the exit, now, and the output ends with it: the
    // timeout ends on time.
    assert_eq!(exited("c", "e", h.next_event()), 137);
    let output = output_end.recv_timeout(EVENT_TIMEOUT).expect("stdout ends");
    assert!(output.unwrap().is_empty());
    assert_eq!(h.pod.delete("c", "e").unwrap().status, 137);

    // Once spawned, the guest's process gets the queued signals in order
    // and is reaped, with no second exit.
    h.agent().release("ExecProcess");
    h.wait_in_agent("WaitProcess(c,e)");
    let signals: Vec<String> = h
        .agent()
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("SignalProcess(c,e"))
        .collect();
    assert_eq!(signals, ["SignalProcess(c,e,15)", "SignalProcess(c,e,9)"]);
    h.agent().exit("c", "e", 137);
    assert!(h.events.recv_timeout(Duration::from_millis(200)).is_err());
}

#[test]
fn a_spawn_that_fails_is_a_start_error_in_time_and_an_exit_127_after() {
    let h = harness();
    h.create("c", None).unwrap();
    h.pod.start("c", "").unwrap();
    h.agent().fail("ExecProcess");
    h.pod
        .add_exec("c", "quick", StdioPaths::default(), b"{}".to_vec())
        .unwrap();
    let err = h.pod.start("c", "quick").unwrap_err();
    assert_eq!(err.to_string(), "exec in c: ExecProcess failed (fake)");
    assert_eq!(
        h.pod.state("c", "quick").unwrap().status,
        ProcessStatus::Created
    );

    h.agent().hold("ExecProcess");
    h.pod
        .add_exec("c", "slow", StdioPaths::default(), b"{}".to_vec())
        .unwrap();
    h.pod.start("c", "slow").unwrap();
    h.agent().release("ExecProcess");
    assert_eq!(exited("c", "slow", h.next_event()), 127);
    assert_eq!(h.pod.delete("c", "slow").unwrap().status, 127);
}

#[test]
fn an_agent_refusal_keeps_its_code_and_the_process_its_state() {
    let h = harness();
    h.create("c", None).unwrap();
    h.agent().fail("StartContainer");
    let err = h.pod.start("c", "").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert_eq!(
        err.to_string(),
        "start container c: StartContainer failed (fake)"
    );
    assert_eq!(h.pod.state("c", "").unwrap().status, ProcessStatus::Created);
    // Never started: it can go at once.
    assert_eq!(h.pod.delete("c", "").unwrap().status, 0);
}

#[test]
fn processes_of_a_vm_that_ended_are_reported_exited() {
    let h = harness();
    h.create("c", None).unwrap();
    h.pod.start("c", "").unwrap();
    h.wait_in_agent("WaitProcess(c,)");
    h.agent().close();
    assert_eq!(exited("c", "", h.next_event()), LOST_STATUS);
    let unreachable = h.pod.signal("x", "", 9, false).unwrap_err();
    assert_eq!(unreachable.kind(), ErrorKind::NotFound);
    let late = h.create("d", Some("c")).unwrap_err();
    assert!(late.to_string().contains("agent unreachable"), "{late}");
}

#[test]
fn the_guests_oom_kills_are_events() {
    let h = harness();
    h.create("c", None).unwrap();
    h.agent().report_oom("c");
    assert_eq!(
        h.next_event(),
        PodEvent::OomKilled {
            container_id: "c".into()
        }
    );
}

#[test]
fn agent_codes_sort_into_error_kinds() {
    assert_eq!(ErrorKind::from(Code::NOT_FOUND), ErrorKind::NotFound);
    assert_eq!(
        ErrorKind::from(Code::OUT_OF_RANGE),
        ErrorKind::InvalidArgument
    );
    assert_eq!(ErrorKind::from(Code::UNAVAILABLE), ErrorKind::Unavailable);
    assert_eq!(ErrorKind::from(Code::DATA_LOSS), ErrorKind::Unknown);
    let unreachable = PodError::Agent {
        what: "pause container".into(),
        err: AgentError::Unreachable {
            call: "PauseContainer",
            why: "connection closed".into(),
        },
    };
    assert_eq!(unreachable.kind(), ErrorKind::Unavailable);
    assert_eq!(
        unreachable.to_string(),
        "pause container: agent unreachable: connection closed"
    );
}

#[test]
fn sigkill_to_the_pods_init_ends_the_vm_without_asking_the_guest() {
    let h = harness();
    h.create("pod", None).unwrap();
    h.pod.start("pod", "").unwrap();
    h.create("app", Some("pod")).unwrap();
    h.pod.start("app", "").unwrap();
    h.create("idle", Some("pod")).unwrap();
    h.wait_in_agent("WaitProcess(app,)");

    // The Kill answers before the VM has ended (a signal is delivered,
    // its exit reported later), however long the teardown takes.
    let sandbox = h.factory.sandbox("pod");
    let slow_teardown = sandbox.teardown_gate.lock().unwrap();
    h.pod.signal("pod", "", SIGKILL, false).unwrap();
    assert!(
        h.events.try_recv().is_err(),
        "an exit reported before the Kill answered"
    );
    drop(slow_teardown);
    // Every process died with the VM, the never-started one too.
    let seen = events(&h, 4);
    assert_eq!(*sandbox.teardown.lock().unwrap(), Some(Teardown::Kill));
    let calls = h.agent().calls();
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("SignalProcess") || c.starts_with("DestroySandbox")),
        "{calls:?}"
    );
    for id in ["pod", "app", "idle"] {
        assert_eq!(exit_of(&seen, id), Some(KILLED_STATUS), "{id}: {seen:?}");
    }
    assert!(seen.contains(&PodEvent::SandboxEnded), "{seen:?}");
    assert_eq!(h.pod.wait("idle", "").unwrap().status, KILLED_STATUS);

    // No VM: the pod takes no new container, and its dead ones are
    // deleted without the guest; then the shim may go.
    let late = h.create("late", Some("pod")).unwrap_err();
    assert_eq!(late.kind(), ErrorKind::FailedPrecondition, "{late}");
    let calls = h.agent().calls().len();
    for id in ["app", "idle"] {
        assert_eq!(h.pod.delete(id, "").unwrap().status, KILLED_STATUS);
    }
    assert!(!h.pod.shutdown(), "the sandbox's container is left");
    assert_eq!(h.pod.delete("pod", "").unwrap().status, KILLED_STATUS);
    assert_eq!(h.agent().calls().len(), calls, "{:?}", h.agent().calls());
    assert!(h.pod.shutdown());
    assert_eq!(h.factory.boots.load(Ordering::SeqCst), 1);
}

#[test]
fn deleting_the_sandboxs_container_ends_the_vm_and_what_was_left_in_it() {
    let h = harness();
    h.create("pod", None).unwrap();
    h.pod.start("pod", "").unwrap();
    h.create("never-started", Some("pod")).unwrap();
    h.wait_in_agent("WaitProcess(pod,)");
    h.agent().exit("pod", "", 0);
    assert_eq!(exited("pod", "", h.next_event()), 0);

    // containerd deletes the sandbox's task before the container it
    // created but never started (a pod stopped in between).
    assert_eq!(h.pod.delete("pod", "").unwrap().status, 0);
    let sandbox = h.factory.sandbox("pod");
    assert_eq!(*sandbox.teardown.lock().unwrap(), Some(Teardown::PowerOff));
    assert!(
        !h.agent()
            .calls()
            .iter()
            .any(|c| c == "RemoveContainer(pod)"),
        "the VM goes whole: {:?}",
        h.agent().calls()
    );
    let seen = events(&h, 2);
    assert_eq!(
        exit_of(&seen, "never-started"),
        Some(KILLED_STATUS),
        "{seen:?}"
    );
    assert!(seen.contains(&PodEvent::SandboxEnded), "{seen:?}");
    assert!(!h.pod.shutdown());
    assert_eq!(
        h.pod.delete("never-started", "").unwrap().status,
        KILLED_STATUS
    );
    assert!(h.pod.shutdown());
}
