//! Links the `gost` binary with packed relative relocations (`DT_RELR`) where the C library it
//! will run on can load them.
//!
//! A position-independent executable's loader writes every pointer stored in its read-only
//! data at start-up. As a `RELA` table, those relocations take 24 bytes each, about 320 KiB
//! for `gost`, all of it read into memory at every start; packed (`-z pack-relative-relocs`,
//! binutils 2.38 and later), they take about 3 KiB, and an idle `gost` is about 0.3 MiB
//! smaller (BENCHMARKS.md, "Idle memory without libm"). glibc loads packed relocations from
//! version 2.36 on, and refuses, with a message naming `GLIBC_ABI_DT_RELR`, a binary that has
//! them on an older glibc.
//!
//! The build machine's glibc decides, for native builds only: a binary is normally run where
//! it was built, or, like the images of `images/`, beside the C library of the machine that
//! built it. `GOST_PACK_RELOCS=0` turns packing off (for a binary meant to be copied to an
//! older system), `GOST_PACK_RELOCS=1` turns it on (for a cross build to a new enough glibc).
//! A linker without the option (GNU ld before 2.38) warns and links as before.

use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=GOST_PACK_RELOCS");
    let wanted = match std::env::var("GOST_PACK_RELOCS").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        Ok(other) => {
            println!(
                "cargo::warning=GOST_PACK_RELOCS={other:?} is neither 0 nor 1; deciding from the C library"
            );
            native_glibc_loads_relr()
        }
        Err(_) => native_glibc_loads_relr(),
    };
    if wanted {
        println!("cargo::rustc-link-arg-bin=gost=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether this is a native build for Linux with glibc, and this machine's glibc is 2.36 or
/// later.
fn native_glibc_loads_relr() -> bool {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") != "linux"
        || var("CARGO_CFG_TARGET_ENV") != "gnu"
        || var("HOST") != var("TARGET")
    {
        return false;
    }
    // `getconf` is part of glibc and prints e.g. "glibc 2.36".
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text.trim().strip_prefix("glibc ") else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (2, 36),
        _ => false,
    }
}
