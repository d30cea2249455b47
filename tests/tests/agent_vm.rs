//! The guest agent in a real VM: the host reaches it over vsock through
//! the VMM's in-process connector (no socket file), creates a container
//! whose busybox rootfs is shared over virtio-fs, reads its output, execs
//! into it, removes it and shuts the sandbox down. Prints each step's time.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use skiff_agent_protocol::agent::*;
use skiff_agent_protocol::agent_ttrpc::AgentServiceClient;
use skiff_agent_protocol::ttrpc;
use skiff_tests::{agent_vm_config, connect_agent, make_ext4, Scratch, Steps};
use skiff_vmm::config::{BlockConfig, DeviceConfig, FsCache, FsConfig, NetConfig, VsockConfig};
use skiff_vmm::{DeviceError, ExitReason, VmmError, VmmHandle};

const SHARE_TAG: &str = "rootfs";
const SHARE_IN_GUEST: &str = "/run/skiff/shared";
const CONTAINER: &str = "c1";
const OOM_CONTAINER: &str = "oom";
const VOLUME_CONTAINER: &str = "vol";
/// Boot devices (vsock, virtio-fs) take slots 0 and 1.
const FIRST_HOTPLUG_SLOT: u32 = 2;

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(120).as_nanos() as i64)
}

/// A busybox root filesystem: the static binary and the applets we use.
fn busybox_rootfs(dir: &Path) {
    for sub in ["bin", "proc", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox is missing: apt-get install busybox-static"
    );
    std::fs::copy(busybox, dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "cat", "read", "sleep", "hostname", "id"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
}

/// The first container also sees the whole share at /share, as root in
/// the guest kernel would: it plants what the host must not follow.
fn spec(args: &[&str]) -> serde_json::Value {
    let mut spec = spec_for(CONTAINER, args);
    spec["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/share", "type": "bind", "source": SHARE_IN_GUEST, "options": ["rbind", "rw"]
    }));
    spec
}

/// The guest plants symlinks where the runtime makes a container's bind
/// targets (`<cid>/mounts/N`, `<cid>/rootfs`), pointing at host paths;
/// the runtime's share code, run on the host against that real share,
/// refuses them by name, and nothing is created or mounted outside.
fn planted_symlinks_are_refused(client: &AgentServiceClient, share: &Path, scratch: &Path) {
    use skiff_runtime::share::{self, HostDir};
    let mut exec = ExecProcessRequest::new();
    exec.container_id = CONTAINER.into();
    exec.exec_id = "plant".into();
    exec.oci_process_json = serde_json::to_vec(&json!({
        "args": ["sh", "-c", "busybox mkdir /share/next && busybox ln -s /etc /share/next/mounts \
            && busybox ln -s / /share/next/rootfs && echo planted"],
        "env": ["PATH=/bin"],
        "cwd": "/",
        "user": {"uid": 0, "gid": 0}
    }))
    .unwrap();
    client.exec_process(ctx(), &exec).unwrap();
    assert_eq!(read_until(client, "plant", "\n"), "planted\n");
    assert_eq!(wait(client, "plant"), 0);
    assert!(share.join("next/mounts").is_symlink());

    let mountinfo = || std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let before = mountinfo();
    let root = HostDir::open(share).unwrap();
    let file = scratch.join("hosts");
    std::fs::write(&file, "127.0.0.1 localhost\n").unwrap();
    let dir = scratch.join("rootfs-source");
    std::fs::create_dir(&dir).unwrap();
    for (target, source) in [("next/mounts/0", &file), ("next/rootfs", &dir)] {
        let err = share::bind(
            &root,
            Path::new(target),
            source,
            share::BindMode::READ_WRITE,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("symlink planted in the guest-writable share"),
            "{target}: {err}"
        );
    }
    assert!(
        !Path::new("/etc/0").exists(),
        "a bind target was made in /etc"
    );
    assert_eq!(mountinfo(), before, "something was mounted");
}

fn spec_for(id: &str, args: &[&str]) -> serde_json::Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/",
            "noNewPrivileges": true
        },
        "root": {"path": format!("{SHARE_IN_GUEST}/{id}")},
        "hostname": id,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
        }
    })
}

fn read_until(client: &AgentServiceClient, exec_id: &str, needle: &str) -> String {
    read_until_in(client, CONTAINER, exec_id, needle)
}

fn read_until_in(
    client: &AgentServiceClient,
    container: &str,
    exec_id: &str,
    needle: &str,
) -> String {
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains(needle) {
        let mut req = ReadStreamRequest::new();
        req.container_id = container.into();
        req.exec_id = exec_id.into();
        req.max_bytes = 4096;
        let data = client.read_stdout(ctx(), &req).unwrap().data;
        if data.is_empty() {
            break;
        }
        out.extend(data);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn wait(client: &AgentServiceClient, exec_id: &str) -> i32 {
    wait_in(client, CONTAINER, exec_id)
}

fn wait_in(client: &AgentServiceClient, container: &str, exec_id: &str) -> i32 {
    let mut req = ProcessRequest::new();
    req.container_id = container.into();
    req.exec_id = exec_id.into();
    client.wait_process(ctx(), &req).unwrap().exit_status
}

#[test]
fn agent_runs_a_container_from_a_virtio_fs_rootfs() {
    let scratch_dir = Scratch::new("agent-vm");
    let scratch = scratch_dir.0.clone();
    let share = scratch.join("share");
    busybox_rootfs(&share.join(CONTAINER));
    std::fs::create_dir(share.join(CONTAINER).join("share")).unwrap();
    busybox_rootfs(&share.join(OOM_CONTAINER));
    busybox_rootfs(&share.join(VOLUME_CONTAINER));
    std::fs::create_dir(share.join(VOLUME_CONTAINER).join("data")).unwrap();
    let volume = scratch.join("volume");
    std::fs::create_dir(&volume).unwrap();
    std::fs::write(volume.join("hello.txt"), "hello from a hot-added disk\n").unwrap();
    make_ext4(&scratch.join("volume.img"), &volume);
    let console = scratch.join("console.log");

    let mut steps = Steps::start();
    let vmm = VmmHandle::spawn(Instant::now()).unwrap();
    vmm.configure(agent_vm_config(
        &console,
        vec![
            DeviceConfig::Vsock(VsockConfig {
                guest_cid: 3,
                socket: scratch.join("v.sock"),
            }),
            DeviceConfig::Fs(FsConfig {
                tag: SHARE_TAG.into(),
                path: share.clone(),
                read_only: false,
                cache: FsCache::Auto,
            }),
        ],
        2,
    ))
    .unwrap();
    vmm.start().unwrap();
    steps.mark("VM started");

    let client = connect_agent(&vmm, &console);
    client.check(ctx(), &CheckRequest::new()).unwrap();
    steps.mark("agent ready (vsock connected)");

    let mut storage = Storage::new();
    storage.driver = StorageDriver::STORAGE_DRIVER_VIRTIO_FS.into();
    storage.source = SHARE_TAG.into();
    storage.mount_point = SHARE_IN_GUEST.into();
    let mut create = CreateContainerRequest::new();
    create.container_id = CONTAINER.into();
    create.oci_spec_json =
        serde_json::to_vec(&spec(&["sh", "-c", "echo hello; read line; exit 0"])).unwrap();
    create.storages.push(storage.clone());
    client.create_container(ctx(), &create).unwrap();
    steps.mark("CreateContainer");

    let mut start = ContainerRequest::new();
    start.container_id = CONTAINER.into();
    client.start_container(ctx(), &start).unwrap();
    steps.mark("StartContainer");
    assert_eq!(read_until(&client, "", "hello\n"), "hello\n");
    steps.mark("read `hello` from stdout");

    let mut exec = ExecProcessRequest::new();
    exec.container_id = CONTAINER.into();
    exec.exec_id = "e1".into();
    exec.oci_process_json = serde_json::to_vec(&json!({
        "args": ["sh", "-c", "echo exec in $(hostname)"],
        "env": ["PATH=/bin"],
        "cwd": "/",
        "user": {"uid": 0, "gid": 0}
    }))
    .unwrap();
    client.exec_process(ctx(), &exec).unwrap();
    assert_eq!(
        read_until(&client, "e1", "\n"),
        format!("exec in {CONTAINER}\n")
    );
    assert_eq!(wait(&client, "e1"), 0);
    steps.mark("ExecProcess + output + wait");
    planted_symlinks_are_refused(&client, &share, &scratch);
    steps.mark("symlinks planted by the guest refused by the runtime's share code");

    // Let the init process finish: it reads one line, then exits 0.
    let mut stdin = WriteStreamRequest::new();
    stdin.container_id = CONTAINER.into();
    stdin.data = b"done\n".to_vec();
    client.write_stdin(ctx(), &stdin).unwrap();
    assert_eq!(wait(&client, ""), 0);
    steps.mark("init exits 0 (WaitProcess)");

    // Bad input gets a clear error and changes nothing.
    let mut bad = ExecProcessRequest::new();
    bad.container_id = "missing".into();
    bad.exec_id = "e2".into();
    bad.oci_process_json = exec.oci_process_json.clone();
    let err = client.exec_process(ctx(), &bad).unwrap_err();
    assert!(format!("{err:?}").contains("missing"), "{err:?}");

    let mut remove = RemoveContainerRequest::new();
    remove.container_id = CONTAINER.into();
    client.remove_container(ctx(), &remove).unwrap();
    steps.mark("RemoveContainer");

    // A memory limit from the spec is enforced by the guest's cgroup v2 and
    // reported as an OOM event: the shell doubles a string until killed.
    let mut oom_spec = spec_for(
        OOM_CONTAINER,
        &["sh", "-c", "x=a; while :; do x=$x$x; done"],
    );
    oom_spec["linux"]["resources"] = json!({"memory": {"limit": 16 << 20}});
    let mut create = CreateContainerRequest::new();
    create.container_id = OOM_CONTAINER.into();
    create.oci_spec_json = serde_json::to_vec(&oom_spec).unwrap();
    create.storages.push(storage.clone());
    client.create_container(ctx(), &create).unwrap();
    let mut start = ContainerRequest::new();
    start.container_id = OOM_CONTAINER.into();
    client.start_container(ctx(), &start).unwrap();
    let mut wait_oom = ProcessRequest::new();
    wait_oom.container_id = OOM_CONTAINER.into();
    let status = client.wait_process(ctx(), &wait_oom).unwrap().exit_status;
    assert_eq!(status, 128 + 9, "the memory hog was not OOM-killed");
    let event = client.get_oom_event(ctx(), &Empty::new()).unwrap();
    assert_eq!(event.container_id, OOM_CONTAINER);
    let mut remove = RemoveContainerRequest::new();
    remove.container_id = OOM_CONTAINER.into();
    client.remove_container(ctx(), &remove).unwrap();
    steps.mark("memory limit: OOM kill + OomEvent");

    hotplug(&vmm, &client, &scratch, &storage, &mut steps);

    client.destroy_sandbox(ctx(), &Empty::new()).unwrap();
    let exit = vmm.wait_exit(Some(Duration::from_secs(120)));
    steps.mark("DestroySandbox -> VM exit");
    let console = std::fs::read_to_string(&console).unwrap_or_default();
    let exit = exit.unwrap_or_else(|| panic!("VM still running; console:\n{console}"));
    assert_eq!(
        exit.reason,
        ExitReason::GuestShutdown,
        "console:\n{console}"
    );
    // The container's rootfs on the host is intact.
    assert!(share.join(CONTAINER).join("bin/busybox").exists());
}

fn device_request(slot: u32) -> DeviceRequest {
    let mut req = DeviceRequest::new();
    req.mmio_slot = slot;
    req
}

fn rpc_error(err: ttrpc::Error) -> (ttrpc::Code, String) {
    match err {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message),
        other => panic!("not a status: {other:?}"),
    }
}

/// Devices in and out of the running VM: a disk goes into an empty slot,
/// the agent binds it and a container reads a file from it; the disk goes
/// out and a network device takes a slot; a freed slot takes a disk again.
fn hotplug(
    vmm: &VmmHandle,
    client: &AgentServiceClient,
    scratch: &Path,
    rootfs_share: &Storage,
    steps: &mut Steps,
) {
    let disk = DeviceConfig::Block(BlockConfig {
        path: scratch.join("volume.img"),
        read_only: true,
        direct: false,
    });
    let slot = vmm.add_device(disk.clone()).unwrap();
    assert_eq!(slot.index, FIRST_HOTPLUG_SLOT);
    let added = client
        .add_device(ctx(), &device_request(slot.index))
        .unwrap();
    assert_eq!((added.virtio_type, added.name.as_str()), (2, "/dev/vda"));
    steps.mark("hot-add a disk (VMM AddDevice + agent AddDevice)");

    let mut spec = spec_for(VOLUME_CONTAINER, &["cat", "/data/hello.txt"]);
    spec["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/data", "type": "bind", "source": "/run/skiff/volume",
        "options": ["rbind", "ro"]
    }));
    let mut volume = Storage::new();
    volume.driver = StorageDriver::STORAGE_DRIVER_BLOCK.into();
    volume.source = added.name.clone();
    volume.fstype = "ext4".into();
    volume.options = vec!["ro".into()];
    volume.mount_point = "/run/skiff/volume".into();
    let mut create = CreateContainerRequest::new();
    create.container_id = VOLUME_CONTAINER.into();
    create.oci_spec_json = serde_json::to_vec(&spec).unwrap();
    create.storages = vec![rootfs_share.clone(), volume];
    client.create_container(ctx(), &create).unwrap();
    // Mounted: the agent will not unbind it.
    let (code, msg) = rpc_error(
        client
            .remove_device(ctx(), &device_request(slot.index))
            .unwrap_err(),
    );
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    assert_eq!(msg, "/dev/vda is still mounted at /run/skiff/volume");
    let mut start = ContainerRequest::new();
    start.container_id = VOLUME_CONTAINER.into();
    client.start_container(ctx(), &start).unwrap();
    assert_eq!(
        read_until_in(client, VOLUME_CONTAINER, "", "\n"),
        "hello from a hot-added disk\n"
    );
    assert_eq!(wait_in(client, VOLUME_CONTAINER, ""), 0);
    let mut remove = RemoveContainerRequest::new();
    remove.container_id = VOLUME_CONTAINER.into();
    client.remove_container(ctx(), &remove).unwrap();
    steps.mark("a container reads the hot-added disk");

    client
        .remove_device(ctx(), &device_request(slot.index))
        .unwrap();
    vmm.remove_device(slot.index).unwrap();
    steps.mark("hot-remove the disk (agent RemoveDevice + VMM RemoveDevice)");
    // The slot is empty again: nothing to bind, nothing to remove.
    let (code, msg) = rpc_error(
        client
            .add_device(ctx(), &device_request(slot.index))
            .unwrap_err(),
    );
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    assert!(msg.contains("is there a device in the slot?"), "{msg}");
    assert!(matches!(
        vmm.remove_device(slot.index),
        Err(VmmError::Device(DeviceError::SlotEmpty(_)))
    ));
    let (code, _) = rpc_error(client.add_device(ctx(), &device_request(9)).unwrap_err());
    assert_eq!(code, ttrpc::Code::NOT_FOUND);

    // A network device on a tap the VMM creates; gone with the device.
    let tap = format!("skhp{}", std::process::id() % 100_000);
    let mac = [0x02, 0, 0, 0x5e, 0x11, 0x07];
    let nic = vmm
        .add_device(DeviceConfig::Net(NetConfig {
            tap: tap.clone(),
            mac: Some(mac),
        }))
        .unwrap();
    assert_eq!(nic.index, FIRST_HOTPLUG_SLOT, "the freed slot is reused");
    let added = client
        .add_device(ctx(), &device_request(nic.index))
        .unwrap();
    assert_eq!(added.virtio_type, 1);
    let listed = client.list_interfaces(ctx(), &Empty::new()).unwrap();
    let guest_nic = listed
        .interfaces
        .iter()
        .find(|i| i.name == added.name)
        .unwrap_or_else(|| panic!("{} not listed: {listed:?}", added.name));
    assert_eq!(guest_nic.hardware_address, "02:00:00:5e:11:07");
    assert!(Path::new("/sys/class/net").join(&tap).exists());

    // The other slot takes the disk again; then none is left, and vsock
    // cannot be hot-plugged at all.
    let again = vmm.add_device(disk).unwrap();
    assert_eq!(again.index, FIRST_HOTPLUG_SLOT + 1);
    let added_disk = client
        .add_device(ctx(), &device_request(again.index))
        .unwrap();
    assert_eq!(added_disk.name, "/dev/vda");
    let full = vmm.add_device(DeviceConfig::Block(BlockConfig {
        path: scratch.join("volume.img"),
        read_only: true,
        direct: false,
    }));
    assert!(
        matches!(full, Err(VmmError::Device(DeviceError::NoFreeSlot(4)))),
        "{full:?}"
    );
    let vsock = vmm.add_device(DeviceConfig::Vsock(VsockConfig {
        guest_cid: 4,
        socket: scratch.join("v2.sock"),
    }));
    assert!(matches!(
        vsock,
        Err(VmmError::Device(DeviceError::VsockNotHotpluggable))
    ));
    // Slot 0 holds the agent's vsock: not removable either.
    assert!(matches!(
        vmm.remove_device(0),
        Err(VmmError::Device(DeviceError::VsockNotHotpluggable))
    ));
    assert!(matches!(
        vmm.remove_device(9),
        Err(VmmError::Device(DeviceError::NoSuchSlot(9)))
    ));
    steps.mark("hot-add a NIC and the disk again; full and vsock refused");

    client
        .remove_device(ctx(), &device_request(nic.index))
        .unwrap();
    vmm.remove_device(nic.index).unwrap();
    let listed = client.list_interfaces(ctx(), &Empty::new()).unwrap();
    assert!(
        listed.interfaces.iter().all(|i| i.name != added.name),
        "{listed:?}"
    );
    assert!(
        !Path::new("/sys/class/net").join(&tap).exists(),
        "tap {tap} outlived its device"
    );
    steps.mark("hot-remove the NIC");
}
