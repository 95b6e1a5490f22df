//! Keeps glibc's `memcpy` off its slow path on AMD processors.
//!
//! For copies above a few KiB, glibc 2.33 and later use `rep movsb` on processors that
//! advertise fast string moves (ERMS/FSRM). On AMD EPYC processors that instruction copies
//! about 20 times slower for many destination alignments (1.8 GB/s against 44 GB/s for
//! 64 KiB on the benchmark machine of `BENCHMARKS.md`, with the destination 1, 8, 14 or 16
//! bytes past a 64-byte boundary; 0, 32 and 48 are fast), and every framing layer
//! of a tunnel copies to such destinations: a payload lands just behind a WebSocket, HTTP/2,
//! TLS or gRPC header, in a buffer `malloc` aligned to 16 bytes. Profiles of the WebSocket
//! client showed a third of its time in that one copy.
//!
//! glibc reads its tuning from `GLIBC_TUNABLES` when a process starts and offers no way to
//! change it later, so on such processors `gost` restarts itself once, at the very start of
//! `main` (same process ID, arguments and environment), with
//! `glibc.cpu.x86_rep_movsb_threshold` raised so that large copies use vector moves, which
//! are fast at any alignment. A threshold the user already set in `GLIBC_TUNABLES` is left
//! alone, which is also how to opt out: `GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=2048`
//! keeps glibc's usual choice. Where the restart is impossible (no `/proc`, a sandbox that
//! forbids `execve`), `gost` runs on unchanged. Under valgrind it does not restart either:
//! `/proc/self/exe` is valgrind's own tool there, which refuses to be started directly.

/// The tunable this module sets.
pub const THRESHOLD_TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold";

/// Copies at least this large would use `rep movsb`: in effect, never.
pub const THRESHOLD: u64 = 1 << 40;

/// The `GLIBC_TUNABLES` value to restart with, given the current one; `None` when the user
/// already chose a threshold.
pub fn tunables_with_threshold(current: Option<&str>) -> Option<String> {
    let ours = format!("{THRESHOLD_TUNABLE}={THRESHOLD}");
    match current.map(str::trim).filter(|c| !c.is_empty()) {
        None => Some(ours),
        Some(current)
            if current
                .split(':')
                .any(|item| item.split('=').next() == Some(THRESHOLD_TUNABLE)) =>
        {
            None
        }
        Some(current) => Some(format!("{current}:{ours}")),
    }
}

/// Whether this processor is one where glibc's `rep movsb` copies are slow: an AMD processor
/// with fast string moves (ERMS), which is when glibc chooses that instruction.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub fn slow_string_moves() -> bool {
    std::arch::is_x86_feature_detected!("ermsb")
        && std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| amd_vendor(&info))
}

/// Not Linux on x86_64: glibc's `rep movsb` choice does not arise.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
pub fn slow_string_moves() -> bool {
    false
}

/// Whether an `LD_PRELOAD` value holds valgrind's preload library, which valgrind sets for
/// the program it runs.
pub fn valgrind_preloaded(ld_preload: Option<&str>) -> bool {
    ld_preload.is_some_and(|list| {
        list.split([':', ' '])
            .filter_map(|path| path.rsplit('/').next())
            .any(|file| file.starts_with("vgpreload_"))
    })
}

/// Whether `/proc/cpuinfo` text names AMD as the vendor of its first processor.
pub fn amd_vendor(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("vendor_id"))
        .and_then(|rest| rest.split(':').nth(1))
        .is_some_and(|vendor| vendor.trim() == "AuthenticAMD")
}

/// Restarts this process with the threshold raised when glibc would otherwise copy slowly;
/// returns (and the process runs on) when there is nothing to do or the restart failed.
pub fn restart_if_needed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        // The environment first: after the restart it already holds the threshold, and the
        // processor need not be looked at again.
        let current = std::env::var("GLIBC_TUNABLES").ok();
        let Some(tunables) = tunables_with_threshold(current.as_deref()) else {
            return;
        };
        if !slow_string_moves() || valgrind_preloaded(std::env::var("LD_PRELOAD").ok().as_deref()) {
            return;
        }
        let mut args = std::env::args_os();
        let Some(arg0) = args.next() else {
            return;
        };
        // `exec` returns only when it failed: run on as we are.
        let _ = std::process::Command::new("/proc/self/exe")
            .arg0(arg0)
            .args(args)
            .env("GLIBC_TUNABLES", tunables)
            .exec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vendor_comes_from_cpuinfo() {
        assert!(amd_vendor(
            "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n"
        ));
        assert!(!amd_vendor("processor\t: 0\nvendor_id\t: GenuineIntel\n"));
        assert!(!amd_vendor(""));
    }

    #[test]
    fn valgrind_is_told_by_its_preload_library() {
        assert!(valgrind_preloaded(Some(
            "/usr/libexec/valgrind/vgpreload_core-amd64-linux.so:\
             /usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so"
        )));
        assert!(valgrind_preloaded(Some(
            "/usr/lib/x86_64-linux-gnu/libheaptrack_preload.so vgpreload_core-amd64-linux.so"
        )));
        assert!(!valgrind_preloaded(Some(
            "/usr/lib/x86_64-linux-gnu/libheaptrack_preload.so"
        )));
        assert!(!valgrind_preloaded(Some("")));
        assert!(!valgrind_preloaded(None));
    }

    #[test]
    fn the_threshold_is_added_unless_the_user_chose_one() {
        let ours = format!("{THRESHOLD_TUNABLE}={THRESHOLD}");
        assert_eq!(tunables_with_threshold(None), Some(ours.clone()));
        assert_eq!(tunables_with_threshold(Some("")), Some(ours.clone()));
        assert_eq!(
            tunables_with_threshold(Some("glibc.malloc.arena_max=2")),
            Some(format!("glibc.malloc.arena_max=2:{ours}"))
        );
        assert_eq!(
            tunables_with_threshold(Some(
                "glibc.malloc.arena_max=2:glibc.cpu.x86_rep_movsb_threshold=2048"
            )),
            None
        );
        // A name that only starts like ours is another tunable.
        assert_eq!(
            tunables_with_threshold(Some("glibc.cpu.x86_rep_movsb_threshold_x=1")),
            Some(format!("glibc.cpu.x86_rep_movsb_threshold_x=1:{ours}"))
        );
    }
}
