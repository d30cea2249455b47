//! Device hotplug latency: boots one agent VM with a free slot, then hot-adds
//! and removes a disk `--rounds` times, timing each half on each side.
//!
//! `cargo run --release -p skiff-tests --example bench_hotplug -- --rounds 10`
//! (after `make build guest`, as root). Prints a Markdown table.

use std::time::{Duration, Instant};

use skiff_agent_protocol::agent::{CheckRequest, DeviceRequest};
use skiff_agent_protocol::ttrpc;
use skiff_tests::{agent_vm_config, connect_agent, Scratch};
use skiff_vmm::config::{host_has_hardware_virt, BlockConfig, DeviceConfig, VsockConfig};
use skiff_vmm::VmmHandle;

const PHASES: [&str; 4] = [
    "VMM add_device (host)",
    "agent AddDevice (guest bind + probe)",
    "agent RemoveDevice (guest unbind)",
    "VMM remove_device (host)",
];

fn main() {
    let rounds: usize = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [] => 5,
        [flag, n] if flag == "--rounds" => n.parse().expect("--rounds N"),
        _ => panic!("usage: bench_hotplug [--rounds N]"),
    };
    assert!(rounds > 0, "--rounds must be at least 1");
    let scratch = Scratch::new("bench-hotplug");
    let disk = scratch.0.join("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(64 << 20))
        .unwrap();

    let vmm = VmmHandle::spawn(Instant::now()).unwrap();
    let console = scratch.0.join("console.log");
    let vsock = DeviceConfig::Vsock(VsockConfig {
        guest_cid: 3,
        socket: scratch.0.join("v.sock"),
    });
    vmm.configure(agent_vm_config(&console, vec![vsock], 1))
        .unwrap();
    vmm.start().unwrap();
    let agent = connect_agent(&vmm, &console);
    let ctx = || ttrpc::context::with_timeout(Duration::from_secs(120).as_nanos() as i64);
    agent.check(ctx(), &CheckRequest::new()).unwrap();

    let mut samples: Vec<[f64; 4]> = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let mut times = [0.0; 4];
        let mut lap = Instant::now();
        let mut mark = |phase: usize| {
            times[phase] = lap.elapsed().as_secs_f64() * 1000.0;
            lap = Instant::now();
        };
        let slot = vmm
            .add_device(DeviceConfig::Block(BlockConfig {
                path: disk.clone(),
                read_only: false,
                direct: false,
            }))
            .unwrap();
        mark(0);
        let mut req = DeviceRequest::new();
        req.mmio_slot = slot.index;
        let added = agent.add_device(ctx(), &req).unwrap();
        assert_eq!(added.name, "/dev/vda");
        mark(1);
        agent.remove_device(ctx(), &req).unwrap();
        mark(2);
        vmm.remove_device(slot.index).unwrap();
        mark(3);
        samples.push(times);
    }
    let _ = agent.destroy_sandbox(ctx(), &Default::default());
    vmm.wait_exit(Some(Duration::from_secs(60)));

    let hw = if host_has_hardware_virt() {
        "hardware KVM"
    } else {
        "software KVM (guest kernel emulated)"
    };
    println!("Hotplug of a 64 MiB raw disk, {rounds} rounds, {hw}; ms");
    println!("| phase | median | min | max |");
    println!("|---|---:|---:|---:|");
    for (i, phase) in PHASES.iter().enumerate() {
        let mut v: Vec<f64> = samples.iter().map(|s| s[i]).collect();
        v.sort_by(f64::total_cmp);
        println!(
            "| {phase} | {:.3} | {:.3} | {:.3} |",
            v[v.len() / 2],
            v[0],
            v[v.len() - 1]
        );
    }
}
