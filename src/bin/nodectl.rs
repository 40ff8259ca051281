//! `nodectl`: runs a noded cluster. See `nodectl(8)`.

use std::process::ExitCode;

use clap::Parser;
use noded::cli::NodectlArgs;

fn main() -> ExitCode {
    // clap exits with status 2 on usage errors.
    let args = NodectlArgs::parse();
    noded::logging::init(args.global.log_format, "warn");
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
    match runtime.block_on(noded::cli::run_nodectl(args)) {
        Ok(outcome) => ExitCode::from(outcome.code()),
        Err(e) => {
            eprintln!("error: {}", noded::core::chain(&e));
            ExitCode::from(1)
        }
    }
}
