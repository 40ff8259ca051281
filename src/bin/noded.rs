//! `noded`: the node daemon. See `noded(8)`.

use std::process::ExitCode;

use clap::Parser;
use noded::cli::NodedArgs;

/// jemalloc rather than glibc's allocator: glibc kept in its per-thread
/// arenas what bursts of large, short-lived buffers (configs, ssconf sets,
/// Raft entries) left, and the master of 1,000 nodes held 150–200 MiB for
/// a peak heap of 45 MiB. jemalloc returns freed pages to the system after
/// a few seconds (BENCHMARKS.md, "Cluster operations at 1,000 nodes").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args = NodedArgs::parse();
    // openraft narrates every vote and append at info: its warnings only.
    noded::logging::init(args.global.log_format, "info,openraft=warn");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(noded::daemon::serve(args.daemon_options())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", noded::core::chain(&e));
            ExitCode::from(1)
        }
    }
}
