//! Runs inputs through a target without libFuzzer, to reproduce a finding
//! or see what an input does:
//! `SKIFF_FUZZ_TRACE=1 cargo run --release -p skiff-fuzz --example replay -- TARGET FILE...`

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(target) = args.next() else {
        eprintln!(
            "usage: replay TARGET FILE... (targets: {:?})",
            skiff_fuzz::TARGETS
        );
        std::process::exit(2);
    };
    for file in args {
        let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
        eprintln!("== {file} ({} bytes)", data.len());
        if !skiff_fuzz::run_target(&target, &data) {
            eprintln!("unknown target {target}: {:?}", skiff_fuzz::TARGETS);
            std::process::exit(2);
        }
    }
    skiff_fuzz::cleanup();
}
