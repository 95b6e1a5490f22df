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
//!
//! A release build also lays out the functions of `hot-functions.txt` side by side at the
//! front of the code (a linker script that adds an output section `.text.hot` before
//! `.text`). Those are the functions that start-up and then serving run, found by
//! `scripts/hot-functions`. Spread over 9 MiB of code, they kept about 4 MiB of it resident
//! in an idle gost, because the kernel maps 64 KiB around every page touched; side by side,
//! about 1.5 MiB (BENCHMARKS.md, "The start-up functions side by side"). The names carry no
//! symbol hash, so the list survives changes to the code and to dependencies; a function
//! missing from it only sits where it would have been. `GOST_HOT_FUNCTIONS=0` turns the layout
//! off. It applies with the default linkers (GNU ld and Rust's lld take the script); with a
//! linker configured otherwise (`RUSTC_LINKER`, `-C linker`, `-fuse-ld`, `--ld-path` in the
//! flags) it is left out unless `GOST_HOT_FUNCTIONS=1`: gold refuses the script's `INSERT`.

use std::path::PathBuf;
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
    hot_functions();
}

/// Passes the linker a script that puts the functions of `hot-functions.txt` first, for
/// release builds for Linux.
fn hot_functions() {
    // Watched only when present: a missing file would rerun this script, and relink, every
    // build.
    if std::path::Path::new("hot-functions.txt").exists() {
        println!("cargo::rerun-if-changed=hot-functions.txt");
    }
    println!("cargo::rerun-if-env-changed=GOST_HOT_FUNCTIONS");
    println!("cargo::rerun-if-env-changed=RUSTC_LINKER");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    // (wanted, forced even with a linker of its own choosing)
    let (wanted, forced) = match var("GOST_HOT_FUNCTIONS").as_str() {
        "0" => (false, false),
        "1" => (true, true),
        "" => (true, false),
        other => {
            println!(
                "cargo::warning=GOST_HOT_FUNCTIONS={other:?} is neither 0 nor 1; treated as unset"
            );
            (true, false)
        }
    };
    // The script is known to link with the default linkers (GNU ld, and the lld that Rust
    // uses by default); a linker chosen otherwise may refuse it (gold does), so it then
    // takes GOST_HOT_FUNCTIONS=1.
    let rustflags = var("CARGO_ENCODED_RUSTFLAGS");
    let own_linker = std::env::var_os("RUSTC_LINKER").is_some()
        || rustflags.split('\x1f').any(|flag| {
            // `-C linker=…` (or `-Clinker=…`), and `-fuse-ld=…` / `--ld-path=…` passed on in
            // a `link-arg`; not `-C linker-plugin-lto` or `-C linker-flavor`.
            let flag = flag.trim_start_matches("-C");
            flag.starts_with("linker=") || flag.contains("fuse-ld=") || flag.contains("ld-path=")
        });
    if !wanted
        || var("PROFILE") != "release"
        || var("CARGO_CFG_TARGET_OS") != "linux"
        || (own_linker && !forced)
    {
        return;
    }
    let list = PathBuf::from(var("CARGO_MANIFEST_DIR")).join("hot-functions.txt");
    let Ok(text) = std::fs::read_to_string(&list) else {
        println!(
            "cargo::warning=no {}: the release build keeps the default layout",
            list.display()
        );
        return;
    };
    let script = linker_script(&text);
    let path = PathBuf::from(var("OUT_DIR")).join("hot-functions.ld");
    std::fs::write(&path, script).expect("write the hot-functions linker script");
    println!("cargo::rustc-link-arg-bin=gost=-Wl,-T,{}", path.display());
}

/// One input-section rule per name of the list, in its order, for both the plain and the
/// `.text.unlikely.` section LLVM gives a function (cold ones, e.g. a map's growth path).
/// Lines that are comments, blank or not a symbol name (not starting with a letter or `_`, or
/// holding a glob character other than `*`, a space, a parenthesis) are skipped, so no line
/// can break the script.
fn linker_script(list: &str) -> String {
    let mut script = String::from("SECTIONS {\n  .text.hot : {\n");
    for name in list.lines().map(str::trim) {
        // A symbol name starts with a letter or `_` (never a bare `*`, which would match
        // every function).
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.' | '*'));
        if valid {
            script.push_str(&format!("    *(.text.{name} .text.unlikely.{name})\n"));
        }
    }
    script.push_str("  }\n} INSERT BEFORE .text;\n");
    script
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
