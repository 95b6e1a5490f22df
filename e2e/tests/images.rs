//! The container images' root filesystem (images/rootfs.sh, what both Dockerfiles copy onto
//! `scratch`), checked without a container engine: the filesystem is assembled here from the
//! binaries under test and each binary runs inside it with chroot, as uid 65532, the image's
//! user. This is what `docker run` of the image does, short of the namespaces.

use std::path::{Path, PathBuf};
use std::process::Command;

use gost_e2e::{
    Gost, Target, TempDir, curl, curl_status, gost_bin, operator_bin, tempdir, workspace_root,
};

/// The image's user (the Dockerfiles' `USER`, the operator's sidecar uid).
const IMAGE_USER: &str = "65532:65532";

/// An assembled root filesystem, removed with its temporary directory when dropped (a debug
/// build of the operator is a quarter of a gigabyte).
struct RootFs {
    path: PathBuf,
    _dir: TempDir,
}

impl std::ops::Deref for RootFs {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

fn rootfs(binary: &Path) -> RootFs {
    let dir = tempdir();
    let out = RootFs {
        path: dir.join("rootfs"),
        _dir: dir,
    };
    let status = Command::new("sh")
        .arg(workspace_root().join("images/rootfs.sh"))
        .arg(binary)
        .arg(&*out)
        .status()
        .expect("sh runs");
    assert!(
        status.success(),
        "images/rootfs.sh failed on {}",
        binary.display()
    );
    out
}

fn require_root() {
    let id = Command::new("id").arg("-u").output().expect("id runs");
    assert_eq!(
        String::from_utf8_lossy(&id.stdout).trim(),
        "0",
        "chroot needs root: run the image tests as root (CI does)"
    );
}

/// Only the binary, its libraries and the user's files: no shell, no other program.
fn assert_minimal(root: &Path, binary: &str) {
    for absent in [
        "bin/sh",
        "usr/bin/sh",
        "bin/bash",
        "usr/bin/apt",
        "usr/bin/dpkg",
    ] {
        assert!(!root.join(absent).exists(), "{absent} is in the image");
    }
    let mut programs = Vec::new();
    for dir in ["bin", "usr/bin", "usr/local/bin", "sbin", "usr/sbin"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir)) {
            programs.extend(entries.map(|e| e.unwrap().file_name().into_string().unwrap()));
        }
    }
    assert_eq!(programs, [binary], "programs in the image");
}

#[test]
fn the_gost_image_serves_a_proxy_as_its_non_root_user() {
    require_root();
    let root = rootfs(&gost_bin());
    assert_minimal(&root, "gost");
    // Name resolution inside the image: Kubernetes mounts /etc/hosts and /etc/resolv.conf;
    // the `files` service lives in glibc itself, so `localhost` resolves with no NSS module.
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();

    let version = Command::new("chroot")
        .args([&format!("--userspec={IMAGE_USER}"), root.to_str().unwrap()])
        .args(["/usr/local/bin/gost", "-V"])
        .output()
        .expect("chroot runs");
    assert!(
        version.status.success() && String::from_utf8_lossy(&version.stdout).starts_with("gost "),
        "gost -V in the image: {version:?}"
    );

    // gost defines the one maths function it calls (proxy/src/main.rs), so the image carries
    // no libm and the process maps none.
    let libs = Command::new("find")
        .args([root.to_str().unwrap(), "-name", "*.so*"])
        .output()
        .expect("find runs");
    let libs = String::from_utf8_lossy(&libs.stdout);
    assert!(libs.contains("libc.so.6"), "libraries in the image: {libs}");
    assert!(!libs.contains("libm.so"), "libraries in the image: {libs}");

    let target = Target::http();
    let proxy = Gost::start_bin(
        Path::new("chroot"),
        &[
            &format!("--userspec={IMAGE_USER}"),
            root.to_str().unwrap(),
            "/usr/local/bin/gost",
            "-L",
            "http://user:pass@127.0.0.1:0",
        ],
        1,
        None,
    );
    let out = curl(&[
        "-x",
        &format!("http://user:pass@{}", proxy.addr()),
        &format!("http://localhost:{}/image", target.addr.port()),
    ]);
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, proxy.log());
    assert!(
        out.text().starts_with("hello from target"),
        "{}",
        out.text()
    );
    let out = curl_status(&[
        "-x",
        &format!("http://{}", proxy.addr()),
        &format!("http://localhost:{}/", target.addr.port()),
    ]);
    assert_eq!(out.text(), "407", "{}", out.stderr);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", proxy.pid())).unwrap();
    assert!(maps.contains("libc.so.6"), "{maps}");
    assert!(!maps.contains("libm.so"), "{maps}");
}

/// proxy/build.rs links gost with packed relative relocations when the C library of the
/// build machine loads them (glibc 2.36 and later), and without them otherwise.
#[test]
fn gost_packs_its_relocations_where_glibc_loads_them() {
    let glibc = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .expect("getconf runs");
    let glibc = String::from_utf8_lossy(&glibc.stdout);
    let version: Vec<u32> = glibc
        .trim()
        .strip_prefix("glibc ")
        .unwrap_or_else(|| panic!("getconf GNU_LIBC_VERSION printed {glibc:?}"))
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect();
    let expected = match std::env::var("GOST_PACK_RELOCS").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => version[..2] >= [2, 36][..],
    };
    let dynamic = Command::new("readelf")
        .arg("-d")
        .arg(gost_bin())
        .output()
        .expect("readelf runs");
    let dynamic = String::from_utf8_lossy(&dynamic.stdout);
    assert!(dynamic.contains("(NEEDED)"), "readelf -d: {dynamic}");
    assert_eq!(
        dynamic.contains("(RELR)"),
        expected,
        "{glibc}: readelf -d gost:\n{dynamic}"
    );
}

#[test]
fn the_operator_image_runs_its_binary() {
    require_root();
    let root = rootfs(&operator_bin());
    assert_minimal(&root, "gost-operator");
    let out = Command::new("chroot")
        .args([&format!("--userspec={IMAGE_USER}"), root.to_str().unwrap()])
        .args(["/usr/local/bin/gost-operator", "--version"])
        .output()
        .expect("chroot runs");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("gost-operator "),
        "gost-operator --version in the image: {out:?}"
    );
    // Without a cluster it starts, finds no configuration, and says so: the binary's runtime
    // (TLS provider, logging) works inside the image.
    let out = Command::new("chroot")
        .args([&format!("--userspec={IMAGE_USER}"), root.to_str().unwrap()])
        .args(["/usr/local/bin/gost-operator", "--log-format", "text"])
        .env("KUBECONFIG", "/nonexistent")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("chroot runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach the Kubernetes API"),
        "{stderr}"
    );
}

/// The Dockerfiles build what the tests above check: both run images/rootfs.sh onto `scratch`
/// as the same user, from sources with the lock file.
#[test]
fn both_dockerfiles_use_the_checked_root_filesystem() {
    for (file, package, binary) in [
        ("images/gost.Dockerfile", "gost-proxy", "gost"),
        (
            "images/operator.Dockerfile",
            "gost-operator",
            "gost-operator",
        ),
    ] {
        let text = std::fs::read_to_string(workspace_root().join(file)).unwrap();
        for needed in [
            format!("cargo build --release --locked -p {package} --bin {binary}"),
            format!("images/rootfs.sh target/release/{binary} /rootfs"),
            "FROM scratch".to_string(),
            "COPY --from=build /rootfs /".to_string(),
            format!("USER {IMAGE_USER}"),
            format!("ENTRYPOINT [\"/usr/local/bin/{binary}\"]"),
        ] {
            assert!(text.contains(&needed), "{file} lacks {needed:?}");
        }
    }
}

/// checkov's Dockerfile checks (non-root USER, no `latest`, no ADD, HEALTHCHECK stated, ...)
/// pass for both Dockerfiles. checkov comes from scripts/tools, like the chart's checks.
#[test]
fn checkov_passes_the_dockerfiles() {
    let checkov = std::env::var_os("CHECKOV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".tools/bin/checkov"));
    assert!(
        checkov.is_file(),
        "{} not found: run scripts/tools (scripts/test does)",
        checkov.display()
    );
    for file in ["images/gost.Dockerfile", "images/operator.Dockerfile"] {
        let out = Command::new(&checkov)
            .arg("--file")
            .arg(workspace_root().join(file))
            .args(["--framework", "dockerfile", "--compact", "--skip-download"])
            .output()
            .expect("checkov runs");
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success()
                && report.contains("Failed checks: 0")
                && !report.contains("Passed checks: 0,"),
            "{file}: checkov:\n{report}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
