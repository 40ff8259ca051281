//! Lays out noded's code so that what an idle daemon runs sits together.
//!
//! The kernel maps an executable's pages 64 KiB at a time around each page
//! fault (`fault_around_bytes`), so an idle daemon whose start-up code is
//! spread over the whole text keeps most of the text resident: about 7 MiB
//! of 12 MiB. `contrib/noded.order` lists the functions a master, a master
//! candidate and a regular node run from start to idle, then those of a
//! handshake and its RPCs (recorded by `scripts/symbol-order`); the linker
//! places them first, in that order. A lone idle master's VmRSS falls from
//! about 12.5 to 8.0 MiB (BENCHMARKS.md, "Link order of the daemon's code").
//!
//! Only where the link is sure to accept the option: a release build for
//! x86_64-unknown-linux-gnu with Rust 1.90 or later, whose default linker is
//! LLD (`--symbol-ordering-file` is LLD's), and no linker chosen by the
//! environment or RUSTFLAGS. Symbols the file names but the binary lacks
//! (renamed or removed code) are skipped without a warning: a stale file
//! costs memory, never a build.

use std::env;
use std::path::Path;
use std::process::Command;

const ORDER_FILE: &str = "contrib/noded.order";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={ORDER_FILE}");
    println!("cargo:rerun-if-env-changed=NODED_NO_SYMBOL_ORDER");
    if linker_is_default_lld() && env::var_os("NODED_NO_SYMBOL_ORDER").is_none() {
        let Ok(dir) = env::var("CARGO_MANIFEST_DIR") else {
            return;
        };
        let order = Path::new(&dir).join(ORDER_FILE);
        if order.is_file() {
            // -Xlinker passes each argument verbatim (no splitting at
            // commas, as -Wl would do to a path holding one).
            for arg in [
                "-Xlinker".to_owned(),
                format!("--symbol-ordering-file={}", order.display()),
                "-Xlinker".to_owned(),
                "--no-warn-symbol-ordering".to_owned(),
            ] {
                println!("cargo:rustc-link-arg-bin=noded={arg}");
            }
        }
    }
}

/// Whether this is a release build linked by the LLD that rustc uses by
/// default on x86_64 Linux since 1.90.
fn linker_is_default_lld() -> bool {
    let var = |name: &str| env::var(name).unwrap_or_default();
    if var("PROFILE") != "release" || var("TARGET") != "x86_64-unknown-linux-gnu" {
        return false;
    }
    // A linker named by Cargo's configuration, or any linker option in the
    // flags (-C linker, -C linker-flavor, -C link-self-contained=-linker ...).
    if env::var_os("RUSTC_LINKER").is_some() || var("CARGO_ENCODED_RUSTFLAGS").contains("link") {
        return false;
    }
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("-vV").output() else {
        return false;
    };
    let version = String::from_utf8_lossy(&out.stdout);
    let minor = version
        .lines()
        .find_map(|line| line.strip_prefix("release: "))
        .and_then(|release| {
            let mut parts = release.split(['.', '-']);
            let major = parts.next()?.parse::<u32>().ok()?;
            let minor = parts.next()?.parse::<u32>().ok()?;
            Some((major, minor))
        });
    matches!(minor, Some((major, minor)) if major > 1 || minor >= 90)
}
