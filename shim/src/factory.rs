//! `containerd-shim-skiff-v2 factory init|status|destroy`: builds, shows
//! and drops the sandbox templates of `[factory]` ahead of time, as
//! `kata-ctl factory` does, so the first pod of a node does not pay for
//! the build and a node can be cleaned without waiting for a pod. The
//! configuration is the one the shim would use (`--config`, else
//! `SKIFF_CONFIG`, else /etc/skiff/configuration.toml, else defaults).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use skiff_runtime::config::RuntimeConfig;
use skiff_runtime::sandbox::TemplateStore;

/// The word that selects this command line instead of containerd's.
pub const COMMAND: &str = "factory";

#[derive(Parser)]
#[command(
    name = "containerd-shim-skiff-v2 factory",
    about = "Build, show and drop Skiff's sandbox templates"
)]
struct Args {
    /// The runtime configuration to use.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Builds the template of the configured VM unless it is there.
    Init,
    /// Lists the templates, each with what it was booted with.
    Status,
    /// Removes every template (running sandboxes keep theirs mapped).
    Destroy,
}

/// Whether the command line (without the program) is a factory command.
pub fn requested(args: &[String]) -> bool {
    args.first().is_some_and(|a| a == COMMAND)
}

/// Runs the factory command line `args` (without the program, starting
/// with [`COMMAND`], which clap takes for the program's name); returns
/// the exit status.
pub fn run(args: &[String]) -> i32 {
    let args = match Args::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match act(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{COMMAND}: {e}");
            1
        }
    }
}

fn act(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let config = RuntimeConfig::load(args.config.as_deref())?;
    let store = TemplateStore::new(&config.factory);
    match args.action {
        Action::Init => {
            eprintln!(
                "{COMMAND}: building the template in {} unless it is there (a guest boot)",
                store.root().display()
            );
            let template = store.get_or_build(&config)?;
            println!("{}", template.dir.display());
        }
        Action::Status => {
            let templates = store.list()?;
            if templates.is_empty() {
                println!("no templates in {}", store.root().display());
            }
            for t in templates {
                let summary = t.summary.unwrap_or_else(|why| format!("unusable: {why}"));
                println!(
                    "{}  {:.1} MiB of memory on disk  {summary}",
                    t.key,
                    t.memory_bytes as f64 / (1 << 20) as f64
                );
            }
        }
        Action::Destroy => {
            let removed = store.destroy()?;
            println!(
                "removed {removed} template(s) from {}",
                store.root().display()
            );
        }
    }
    Ok(())
}
