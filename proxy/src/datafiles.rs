//! The files a configuration reads its data from, besides itself: an auther's users `file`, a
//! node's `auth.file` and a hop's nodes `file` (GOST's file data sources).
//!
//! They are read when the configuration is assembled to run (not for `-O`), so that a reload
//! reads them again and a change shows as a changed configuration: the services that use them
//! get the new users or nodes, the others are left alone. They are watched with the `-C`
//! files ([`data_files`]), where GOST reads an auther's or a hop's file at start and again
//! every `reload` period only if one is set, and a node's `auth.file` at start only. A file
//! that cannot
//! be read is an error naming the section and the file: nothing starts (or a reload is
//! refused, the last good configuration serving on) with users or nodes missing, where GOST
//! goes on without them (an auther then refuses everyone, a node sends no credentials, a hop
//! has no node).

use std::path::PathBuf;

use gost_api::{AuthConfig, Config, HopConfig};

/// Reads every data file `config` names into it.
pub fn read_data_files(config: &mut Config) -> Result<(), String> {
    for (i, auther) in config.authers.iter_mut().enumerate() {
        let Some(path) = auther.file.as_ref().map(|f| f.path.as_str()) else {
            continue;
        };
        if path.is_empty() {
            continue;
        }
        auther.file_auths = read_users(path, &format!("authers[{i}].file.path"))?;
    }
    let chains = config.chains.iter_mut().enumerate().flat_map(|(i, c)| {
        c.hops
            .iter_mut()
            .enumerate()
            .map(move |(j, h)| (format!("chains[{i}].hops[{j}]"), h))
    });
    let hops = config
        .hops
        .iter_mut()
        .enumerate()
        .map(|(i, h)| (format!("hops[{i}]"), h));
    for (path, hop) in chains.chain(hops) {
        read_hop_files(hop, &path)?;
    }
    Ok(())
}

/// A hop's nodes file, then its nodes' `auth.file`s.
fn read_hop_files(hop: &mut HopConfig, path: &str) -> Result<(), String> {
    if let Some(file) = hop.file.as_ref().filter(|f| !f.path.is_empty()) {
        let text = std::fs::read_to_string(&file.path)
            .map_err(|e| format!("{path}.file.path: cannot read {}: {e}", file.path))?;
        hop.file_nodes = gost_api::nodes_from_json(&text, path)
            .map_err(|e| format!("{e} (in {})", file.path))?;
    }
    let inline = hop
        .nodes
        .iter_mut()
        .enumerate()
        .map(|(k, node)| (format!("{path}.nodes[{k}]"), node));
    let from_file = hop
        .file_nodes
        .iter_mut()
        .enumerate()
        .map(|(k, node)| (format!("{path}.file[{k}]"), node));
    for (at, node) in inline.chain(from_file) {
        for (auth, part) in [
            (&mut node.connector.auth, "connector"),
            (&mut node.dialer.auth, "dialer"),
        ] {
            let Some(auth) = auth.as_mut() else { continue };
            let Some(file) = auth.file.as_deref().filter(|f| !f.is_empty()) else {
                continue;
            };
            // As GOST: the file's first user, else `username` and `password`.
            let users = read_users(file, &format!("{at}.{part}.auth.file"))?;
            if let Some(first) = users.into_iter().next() {
                auth.username = first.username;
                auth.password = first.password;
            }
        }
    }
    Ok(())
}

fn read_users(path: &str, at: &str) -> Result<Vec<AuthConfig>, String> {
    std::fs::read_to_string(path)
        .map(|text| gost_api::parse_users(&text))
        .map_err(|e| format!("{at}: cannot read {path}: {e}"))
}

/// The data files `config` names, to watch.
pub fn data_files(config: &Config) -> Vec<PathBuf> {
    let hops = || {
        config
            .chains
            .iter()
            .flat_map(|c| &c.hops)
            .chain(&config.hops)
    };
    let hop_files = hops().filter_map(|h| h.file.as_ref().map(|f| f.path.as_str()));
    let auth_files = hops()
        .flat_map(HopConfig::all_nodes)
        .flat_map(|n| [&n.connector.auth, &n.dialer.auth])
        .filter_map(|a| a.as_ref()?.file.as_deref());
    config
        .authers
        .iter()
        .filter_map(|a| a.file.as_ref().map(|f| f.path.as_str()))
        .chain(hop_files)
        .chain(auth_files)
        .filter(|f| !f.is_empty())
        .map(PathBuf::from)
        .collect()
}
