//! Writes the CustomResourceDefinitions of `gost.rs/v1alpha1` next to this crate (`crds/`) and
//! into the Helm chart (`charts/gost-operator/crds/`), or only to the directory given as the
//! only argument.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dirs = match std::env::args_os().nth(1) {
        Some(dir) => vec![PathBuf::from(dir)],
        // The chart ships the same files (crds/tests/crds.rs fails when they differ).
        None => vec![
            crate_dir.clone(),
            crate_dir.join("../charts/gost-operator/crds"),
        ],
    };
    for dir in dirs {
        for (file, yaml) in gost_api::v1alpha1::crd_files() {
            let path = dir.join(file);
            if let Err(err) = std::fs::write(&path, yaml) {
                eprintln!("crdgen: cannot write {}: {err}", path.display());
                return ExitCode::FAILURE;
            }
            println!("{}", path.display());
        }
    }
    ExitCode::SUCCESS
}
