//! `gost`: GOST's command line over the gost-rs data plane.
// Unsafe only for one attribute: `no_mangle` on the `pow` below.
#![deny(unsafe_code)]

use std::ffi::OsString;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use gost_api::{Config, Format, LogFormat, LogLevel, MetricsConfig};
use gost_proxy::supervisor::Supervisor;
use tokio_util::task::TaskTracker;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// What `-V` prints after `gost `: the version, then what built it and for which system, as
/// GOST's `gost v3.x (go1.x linux/amd64)` does.
fn version_line() -> &'static str {
    static LINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LINE.get_or_init(|| {
        // Go's names for the architectures, so that scripts reading GOST's line read ours.
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "loongarch64" => "loong64",
            other => other,
        };
        format!(
            "{} (gost-rs {}/{arch})",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
        )
    })
}

/// GOST's HTTP tunnels: `gost -L http://user:pass@:8080`, `gost -L http://:8000 -F http://user:pass@host:8080`,
/// `gost -C gost.yaml`.
#[derive(Parser, Debug)]
#[command(
    name = "gost",
    version = version_line(),
    disable_help_subcommand = true,
    after_help = "Groups of arguments separated by ` -- ` run as worker processes of their own, each with its own \
                  chain, as in GOST: gost -L http://:8080 -- -L socks5://:1080 -F http://:8000\n\n\
                  As with GOST (Go's flag package), any flag may be written with one dash or two \
                  (-L, --L, -metrics, --metrics), its value after `=` or in the next argument."
)]
struct Args {
    /// A service to run: [handler+listener://][user:pass@][host]:port[?key=value&...]. Repeatable.
    #[arg(short = 'L', value_name = "URL", action = ArgAction::Append)]
    listen: Vec<String>,

    /// A hop of the chain every -L service dials through: [connector+dialer://][user:pass@]host:port[?...].
    /// Repeat for more hops; `host1,host2:port` puts several nodes in one hop.
    #[arg(short = 'F', value_name = "URL", action = ArgAction::Append)]
    forward: Vec<String>,

    /// A configuration file (YAML or JSON, GOST's schema), `-` for standard input, inline JSON, or
    /// an http(s):// URL (with optional user:pass@). Repeatable; later sources add services and
    /// chains and replace top-level settings. Files are watched and applied on change.
    #[arg(short = 'C', value_name = "FILE", action = ArgAction::Append)]
    config: Vec<String>,

    /// Print the effective configuration in this format and exit.
    #[arg(short = 'O', value_name = "FORMAT")]
    output: Option<OutputFormat>,

    /// Debug logging; twice (-DD) for trace logging.
    #[arg(short = 'D', action = ArgAction::Count)]
    debug: u8,

    /// Serve Prometheus metrics, /healthz and /readyz on this address:
    /// `[user:pass@][host]:port[?path=/metrics]` (with user:pass, scrapes need Basic auth).
    /// GOST spells it `-metrics`, which is accepted too. Replaces `GOST_METRICS` and `metrics:`.
    #[arg(long = "metrics", value_name = "ADDR")]
    metrics: Option<String>,

    /// Also read the configuration again this often, e.g. 30s (0: never). Files given with -C
    /// are watched and SIGHUP reloads in any case; this retries services that could not bind.
    #[arg(short = 'R', value_name = "DURATION", value_parser = parse_reload_period)]
    reload: Option<Duration>,

    /// GOST's web API (`-api`): not part of gost-rs, refused with an explanation.
    #[arg(long = "api", value_name = "ADDR", hide = true)]
    api: Option<String>,

    /// How long open tunnels may finish after SIGTERM or SIGINT, e.g. 30s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = DEFAULT_GRACE_PERIOD)]
    grace_period: Duration,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OutputFormat {
    #[value(alias = "yml")]
    Yaml,
    Json,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    match gost_api::metadata::parse_go_duration(text)? {
        Some(d) => Ok(d),
        None => Err(format!("{text:?}: a grace period cannot be negative")),
    }
}

/// `-R`: a Go duration; zero (GOST's default) turns periodic reloading off.
fn parse_reload_period(text: &str) -> Result<Duration, String> {
    match gost_api::metadata::parse_go_duration(text)? {
        Some(d) => Ok(d),
        None => Err(format!("{text:?}: a reload period cannot be negative")),
    }
}

/// Long enough for typical requests in flight to finish, and what Kubernetes gives a pod
/// (`terminationGracePeriodSeconds`) by default.
const DEFAULT_GRACE_PERIOD: &str = "30s";

/// Where GOST looks for a configuration when given nothing to do.
const DEFAULT_CONFIG_DIRS: &[&str] = &["/etc/gost", "$HOME/.gost", "."];

/// A flag as Go's flag package reads it (`-name` or `--name`, the value after `=` or in the
/// next argument) and as clap spells it.
struct GoFlag {
    name: &'static str,
    clap: &'static str,
    takes_value: bool,
}

const fn go_flag(name: &'static str, clap: &'static str, takes_value: bool) -> GoFlag {
    GoFlag {
        name,
        clap,
        takes_value,
    }
}

/// GOST's flags (`cmd/gost/main.go`), gost-rs's `--grace-period`, and the help flags Go's
/// flag package has. `-DD` is a flag of its own in GOST; clap counts it as `-D` twice.
const GO_FLAGS: &[GoFlag] = &[
    go_flag("L", "-L", true),
    go_flag("F", "-F", true),
    go_flag("C", "-C", true),
    go_flag("O", "-O", true),
    go_flag("R", "-R", true),
    go_flag("V", "-V", false),
    go_flag("D", "-D", false),
    go_flag("DD", "-DD", false),
    go_flag("api", "--api", true),
    go_flag("metrics", "--metrics", true),
    go_flag("grace-period", "--grace-period", true),
    go_flag("h", "-h", false),
    go_flag("help", "--help", false),
];

/// The arguments with each flag spelled as Go's flag package takes it (`--L`, `-metrics`,
/// `-O=yaml`, `-D=false`) rewritten in clap's spelling (`-L`, `--metrics`, `-O=yaml`, nothing).
/// The value of a flag that takes one is passed on as it is, as Go reads it.
fn go_style_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut args = args.into_iter();
    let mut out: Vec<OsString> = args.next().into_iter().collect();
    while let Some(arg) = args.next() {
        let Some((flag, value)) = arg.to_str().and_then(parse_go_flag) else {
            out.push(arg);
            continue;
        };
        match value {
            Some(value) if flag.takes_value => out.push(format!("{}={value}", flag.clap).into()),
            // Go's boolean flags take `=true`, `=false`, `=1`, ...; anything else is left for
            // clap to refuse.
            Some(value) => match gost_api::metadata::parse_go_bool(value) {
                Some(true) => out.push(flag.clap.into()),
                Some(false) => {}
                None => out.push(arg),
            },
            None if flag.takes_value => match args.next() {
                // clap would read a value that starts with '-' as a flag of its own; joined
                // with `=` it stays the value, as Go reads it. A lone `--` separates worker
                // groups, which GOST splits on before it reads flags.
                Some(value)
                    if value != "--" && value.to_str().is_some_and(|v| v.starts_with('-')) =>
                {
                    let mut joined = OsString::from(format!("{}=", flag.clap));
                    joined.push(value);
                    out.push(joined);
                }
                value => {
                    out.push(flag.clap.into());
                    out.extend(value);
                }
            },
            None => out.push(flag.clap.into()),
        }
    }
    out
}

/// The flag `arg` names in Go's spelling, with the value after its `=`.
fn parse_go_flag(arg: &str) -> Option<(&'static GoFlag, Option<&str>)> {
    let text = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'))?;
    let (name, value) = match text.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (text, None),
    };
    GO_FLAGS
        .iter()
        .find(|flag| flag.name == name)
        .map(|flag| (flag, value))
}

/// `eprintln!` that never panics: a message for a closed or broken standard error is dropped
/// (a dead `tee` or log collector must not take the proxy down with it).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

fn main() -> ExitCode {
    // First, before anything is read: the restart runs `main` again from the start.
    gost_proxy::copytune::restart_if_needed();
    keep_freed_memory();
    raise_open_files_limit();
    if let Err(code) = follow_parent() {
        return code;
    }
    let raw = go_style_args(std::env::args_os());
    if let Some(groups) = worker_groups(&raw) {
        if groups.is_empty() {
            say!("gost: nothing to run: every group of arguments between `--` is empty");
            return ExitCode::from(2);
        }
        return run_workers(groups);
    }
    let args = Args::parse_from(raw);
    if let Some(api) = &args.api {
        say!(
            "gost: -api {api}: GOST's web API is not supported by gost-rs; change the -C \
             configuration files instead (they are watched and applied on change, and on SIGHUP)"
        );
        return ExitCode::from(2);
    }
    // First, as `-C` may name a URL to fetch.
    let Some(runtime) = start_runtime(tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
    };
    // SIGHUP ends a process by default, and reading a `-C` URL may take a while: from here on
    // it is caught (tokio keeps a handler for good once one is made); the run loop reloads on
    // it, also for one that arrives before the loop starts.
    let early_hangup = {
        let _runtime = runtime.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
    };
    let config = match runtime.block_on(assemble_config(&args)) {
        Ok(config) => config,
        Err(message) => {
            say!("gost: {message}");
            return ExitCode::from(2);
        }
    };
    if let Some(format) = args.output {
        let text = match format {
            OutputFormat::Yaml => gost_api::to_yaml(&config),
            OutputFormat::Json => gost_api::to_json(&config) + "\n",
        };
        return print_config(&text);
    }
    // A configuration file without services is a sidecar waiting for its config (the operator
    // renders an empty service list while nothing selects the pod): keep running, serve the
    // admin endpoint and pick the services up on reload. Without any file there is nothing to do.
    if config.services.is_empty() && args.config.is_empty() {
        if let Some(file) = config_sources(&args).first() {
            say!(
                "gost: nothing to run: {file}, read as GOST's default configuration, has no services"
            );
            return ExitCode::from(2);
        }
        say!(
            "gost: nothing to run: give a service with -L, or a configuration with -C, or put a \
             gost.yaml (.yml, .json) in /etc/gost, ~/.gost or the working directory, as GOST \
             reads one from there (see gost --help)"
        );
        return ExitCode::from(2);
    }
    if let Err(message) = init_logging(&args, &config) {
        say!("gost: {message}");
        return ExitCode::from(2);
    }
    // Kept for the run loop: a SIGHUP that came while the configuration was read asked for
    // what may have changed meanwhile, so it reloads once the services run.
    runtime.block_on(run(&args, config, early_hangup))
}

/// Writes the effective configuration (`-O`) to standard output. A reader that stops early
/// (`gost -O yaml | head`) ends the output quietly, as a shell expects; any other failure to
/// write is an error.
fn print_config(text: &str) -> ExitCode {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            say!("gost: cannot write the configuration to standard output: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard one, as every Go program (so GOST) does
/// at start: each tunnel holds two descriptors, and a soft limit of 1,024 (many systems' and
/// systemd's default) would otherwise refuse connections from about 500 tunnels on, where
/// GOST keeps serving. A limit that cannot be raised is left as it is.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Free memory at the top of a malloc arena that glibc keeps for the next allocations instead
/// of handing it back to the kernel: one HTTP/2 connection window, the most that a connection's
/// streams may have in flight at the receiver.
///
/// Bulk data moves through buffers of up to 64 KiB (DATA frames, relay chunks) that are freed
/// once written on. With several busy tunnels those frees leave more than glibc's default
/// 128 KiB free at an arena's top, so glibc returns it (`madvise`) and the next buffers fault
/// it back in page by page, zeroed: with 8 tunnels over one `h2c` connection that was up to
/// 116 page faults per MiB moved and a sixth of the client's CPU time, and eight tunnels moved
/// less than one (BENCHMARKS.md, "Eight streams over one HTTP/2 connection"). One connection
/// window keeps that memory in the process while data flows; the limit is per arena, not per
/// tunnel, and an idle process never fills it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_TRIM_THRESHOLD: usize = gost_proxy::h2pool::CONNECTION_WINDOW as usize;

/// Allocations at least this large get pages of their own (`mmap`) that go back to the kernel
/// on `free`. Setting the trim threshold turns off glibc's own raising of this one (it starts
/// at 128 KiB and follows the largest block freed, keeping the trim threshold at twice it), so
/// it is set to where that rule puts it for [`MALLOC_TRIM_THRESHOLD`].
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_MMAP_THRESHOLD: usize = MALLOC_TRIM_THRESHOLD / 2;

/// Sets glibc's [`MALLOC_TRIM_THRESHOLD`] and [`MALLOC_MMAP_THRESHOLD`], unless the user chose
/// either in `GLIBC_TUNABLES` ([`malloc_tuned_by_user`]) or with glibc's older variables
/// `MALLOC_TRIM_THRESHOLD_` and `MALLOC_MMAP_THRESHOLD_`, which is also how to opt out.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // a C library call
fn keep_freed_memory() {
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| malloc_tuned_by_user(&t))
        || ["MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"]
            .iter()
            .any(|name| std::env::var_os(name).is_some())
    {
        return;
    }
    // SAFETY: mallopt only sets malloc's tuning parameters, under malloc's own lock; both
    // values are far below `c_int::MAX`.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD as libc::c_int);
    }
}

/// Whether `GLIBC_TUNABLES` (`name=value` items separated by `:`) sets glibc's trim or mmap
/// threshold: the user's choice then stands.
#[cfg(any(test, all(target_os = "linux", target_env = "gnu")))]
fn malloc_tuned_by_user(tunables: &str) -> bool {
    tunables.split(':').any(|item| {
        matches!(
            item.split('=').next(),
            Some("glibc.malloc.trim_threshold" | "glibc.malloc.mmap_threshold")
        )
    })
}

/// Not glibc: its allocator's defaults stay.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// The runtime `builder` makes, with its I/O and timers; `None` once the reason is printed.
fn start_runtime(mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    builder
        .enable_all()
        .build()
        .map_err(|e| say!("gost: cannot start the runtime: {e}"))
        .ok()
}

/// GOST's `--` between groups of arguments (`gost -L http://:8080 -- -L socks5://:1080 -F
/// http://:8000`): each group runs as a gost process of its own, so that each has its own
/// chain. `None` without a `--`.
fn worker_groups(args: &[std::ffi::OsString]) -> Option<Vec<Vec<std::ffi::OsString>>> {
    let rest = args.get(1..)?;
    if !rest.iter().any(|arg| arg == "--") {
        return None;
    }
    Some(
        rest.split(|arg| arg == "--")
            .filter(|group| !group.is_empty())
            .map(<[_]>::to_vec)
            .collect(),
    )
}

/// In a worker of [`run_workers`] (`_GOST_PARENT` names the parent): asks the kernel for a
/// SIGTERM when the parent dies, so that workers do not outlive a parent that was killed
/// outright; `Err` if the parent is gone already.
fn follow_parent() -> Result<(), ExitCode> {
    let Some(parent) = std::env::var("_GOST_PARENT")
        .ok()
        .and_then(|pid| pid.parse::<i32>().ok())
    else {
        return Ok(());
    };
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM) {
        say!("gost: worker: cannot follow its parent: {e}");
    }
    if nix::unistd::getppid().as_raw() != parent {
        say!("gost: worker: the parent gost exited before it started");
        return Err(ExitCode::FAILURE);
    }
    Ok(())
}

/// Runs each group of [`worker_groups`] as a child process (with `_GOST_ID` set to its index,
/// as GOST does) and waits for all of them. SIGTERM, SIGINT and SIGHUP are passed on to each
/// worker once: they run in a process group of their own, so a terminal's Ctrl-C reaches them
/// only this way, and a Kubernetes stop (SIGTERM to PID 1 alone) reaches them at all. Their
/// standard input is empty, as with GOST. When a worker fails, the others are stopped too, so
/// that a supervisor sees the failure; the exit code is the first failing worker's, or 0.
fn run_workers(groups: Vec<Vec<std::ffi::OsString>>) -> ExitCode {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use tokio::signal::unix::{SignalKind, signal};

    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            say!("gost: cannot find its own executable to start the workers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(runtime) = start_runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        let signals = (|| {
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
                signal(SignalKind::hangup())?,
            ))
        })();
        let (mut term, mut int, mut hup) = match signals {
            Ok(signals) => signals,
            Err(e) => {
                say!("gost: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let (exited, mut exits) = tokio::sync::mpsc::unbounded_channel();
        let mut workers = Vec::new();
        for (id, group) in groups.into_iter().enumerate() {
            let spawned = tokio::process::Command::new(&exe)
                .args(&group)
                .env("_GOST_ID", id.to_string())
                .env("_GOST_PARENT", std::process::id().to_string())
                .stdin(std::process::Stdio::null())
                .process_group(0)
                .spawn();
            let mut child = match spawned {
                Ok(child) => child,
                Err(e) => {
                    say!("gost: cannot start worker {id}: {e}");
                    workers.push(None);
                    let _ = exited.send((id, 1));
                    continue;
                }
            };
            workers.push(child.id().map(|pid| Pid::from_raw(pid as i32)));
            let exited = exited.clone();
            tokio::spawn(async move {
                let code = match child.wait().await {
                    Ok(status) => status.code().unwrap_or(1),
                    Err(_) => 1,
                };
                let _ = exited.send((id, code));
            });
        }
        drop(exited);
        let mut failed = None;
        loop {
            let forward = tokio::select! {
                exit = exits.recv() => match exit {
                    Some((id, code)) => {
                        // Reaped: its PID may be another process's from now on.
                        workers[id] = None;
                        if code != 0 && failed.is_none() {
                            failed = Some(code);
                            say!("gost: worker {id} exited with {code}; stopping the others");
                            for pid in workers.iter().flatten() {
                                let _ = kill(*pid, Signal::SIGTERM);
                            }
                        }
                        continue;
                    }
                    None => break,
                },
                _ = term.recv() => Signal::SIGTERM,
                _ = int.recv() => Signal::SIGINT,
                _ = hup.recv() => Signal::SIGHUP,
            };
            for pid in workers.iter().flatten() {
                let _ = kill(*pid, forward);
            }
        }
        match failed {
            Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            None => ExitCode::SUCCESS,
        }
    })
}

/// Reads `-C` sources in order, then adds the `-L`/`-F` services, as GOST does.
async fn assemble_config(args: &Args) -> Result<Config, String> {
    assemble_config_naming(args).await.0
}

/// [`assemble_config`], with the data files the configuration names: also when one of them
/// cannot be read, so that a configuration refused for a missing file is applied once the
/// file appears.
async fn assemble_config_naming(args: &Args) -> (Result<Config, String>, Vec<PathBuf>) {
    let mut config = match assemble_written(args).await {
        Ok(config) => config,
        Err(e) => return (Err(e), Vec::new()),
    };
    // `-O` prints the configuration as written; the data files matter to a running proxy.
    if args.output.is_some() {
        return (Ok(config), Vec::new());
    }
    let read = gost_proxy::datafiles::read_data_files(&mut config);
    // After reading: the nodes of a hop's file may name users files of their own.
    let named = gost_proxy::datafiles::data_files(&config);
    (read.map(|()| config), named)
}

/// The configuration of the `-C` sources, `-L`/`-F` and the metrics overrides, checked, before
/// the data files it names are read.
async fn assemble_written(args: &Args) -> Result<Config, String> {
    let mut config = Config::default();
    for source in &config_sources(args) {
        let (name, text) = read_source(source).await?;
        let format = Format::detect(name.as_deref(), &text);
        let loaded = gost_api::from_str(&text, format)
            .map_err(|e| format!("{}: {e}", name.as_deref().unwrap_or("configuration")))?;
        merge(&mut config, loaded);
    }
    if !args.listen.is_empty() || !args.forward.is_empty() {
        let from_cli = gost_proxy::cli::url::config_from_args(&args.listen, &args.forward)
            .map_err(|e| e.to_string())?;
        merge(&mut config, from_cli);
    }
    let env_metrics = std::env::var("GOST_METRICS").ok();
    apply_metrics_overrides(&mut config, env_metrics.as_deref(), args.metrics.as_deref())?;
    gost_api::validate(&config)
        .map_err(|e| format!("the combined configuration is invalid: {e}"))?;
    Ok(config)
}

/// GOST's overrides of the metrics section, applied after the files and `-L`/`-F`: a non-empty
/// `GOST_METRICS` replaces the address only (a file's `path` and `auth` stay), then `-metrics`
/// replaces the whole section.
fn apply_metrics_overrides(
    config: &mut Config,
    env: Option<&str>,
    flag: Option<&str>,
) -> Result<(), String> {
    if let Some(addr) = env.filter(|addr| !addr.is_empty()) {
        // GOST takes the variable as it is, not as a URL; and the value is not echoed when it
        // may hold a password.
        if addr.contains('@') {
            return Err(
                "GOST_METRICS: an address ([host]:port) only, as in GOST; give \
                        credentials with -metrics user:pass@[host]:port or in the metrics \
                        section"
                    .into(),
            );
        }
        // Only the address is new: checked alone, for an error that names the variable.
        let alone = Config {
            metrics: Some(MetricsConfig {
                addr: addr.to_string(),
                ..MetricsConfig::default()
            }),
            ..Config::default()
        };
        gost_api::validate(&alone).map_err(|e| format!("GOST_METRICS: {e}"))?;
        config.metrics.get_or_insert_with(Default::default).addr = addr.to_string();
    }
    if let Some(flag) = flag {
        config.metrics =
            Some(gost_proxy::cli::url::metrics_from_arg(flag).map_err(|e| e.to_string())?);
    }
    Ok(())
}

/// The `-C` sources, or GOST's default configuration file when given nothing to do.
fn config_sources(args: &Args) -> Vec<String> {
    let mut sources = args.config.clone();
    if sources.is_empty() && args.listen.is_empty() && args.forward.is_empty() {
        sources.extend(default_config_file());
    }
    sources
}

fn default_config_file() -> Option<String> {
    let home = std::env::var("HOME").unwrap_or_default();
    DEFAULT_CONFIG_DIRS.iter().find_map(|dir| {
        let dir = PathBuf::from(dir.replace("$HOME", &home));
        ["gost.yaml", "gost.yml", "gost.json"]
            .iter()
            .map(|file| dir.join(file))
            .find(|path| path.is_file())
            .map(|path| path.to_string_lossy().into_owned())
    })
}

async fn read_source(source: &str) -> Result<(Option<String>, String), String> {
    if source == "-" {
        // Read once: a reload (SIGHUP, -R) finds standard input at its end, and an empty
        // configuration would stop every service.
        static STDIN: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
        let text = STDIN.get_or_init(|| {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map(|_| text)
                .map_err(|e| format!("cannot read the configuration from standard input: {e}"))
        });
        return Ok((Some("<stdin>".into()), text.clone()?));
    }
    if source.trim_start().starts_with('{') {
        return Ok((Some("<inline JSON>.json".into()), source.to_string()));
    }
    if is_url(source) {
        let (shown, text) = gost_proxy::web::config_from_url(source).await?;
        return Ok((Some(shown), text));
    }
    let read = || {
        std::fs::read_to_string(Path::new(source))
            .map_err(|e| format!("cannot read configuration file {source}: {e}"))
    };
    if is_regular_file(source) {
        return Ok((Some(source.to_string()), read()?));
    }
    // A pipe (`-C <(...)`) or device, like standard input, gives its text once: keep it for
    // the reloads.
    static READ_ONCE: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());
    let mut kept = READ_ONCE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, text)) = kept.iter().find(|(path, _)| path == source) {
        return Ok((Some(source.to_string()), text.clone()));
    }
    let text = read()?;
    kept.push((source.to_string(), text.clone()));
    Ok((Some(source.to_string()), text))
}

/// Whether `path` is a regular file (through symbolic links), which can be read again and
/// watched.
fn is_regular_file(path: &str) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// Whether a `-C` source is fetched from the web rather than read from a file.
fn is_url(source: &str) -> bool {
    let lower = source.get(..8).unwrap_or(source).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// GOST's merge rule: lists are concatenated, top-level settings replaced by later sources.
fn merge(into: &mut Config, from: Config) {
    into.services.extend(from.services);
    into.chains.extend(from.chains);
    into.hops.extend(from.hops);
    into.authers.extend(from.authers);
    if from.tls.is_some() {
        into.tls = from.tls;
    }
    if from.log.is_some() {
        into.log = from.log;
    }
    if from.metrics.is_some() {
        into.metrics = from.metrics;
    }
}

/// Where `log.output` sends log lines, as GOST reads it.
enum LogOutput {
    Stderr,
    Stdout,
    Discard,
    File(std::fs::File),
}

/// `none`/`null` discard, `stdout`, `stderr` or nothing are those streams, and anything else
/// is a file appended to, created with its directory if missing. Unlike GOST, which logs a
/// warning to standard error and goes on, a file that cannot be opened stops the start: the
/// logs would otherwise go where nobody looks for them.
fn log_output(output: Option<&str>) -> Result<LogOutput, String> {
    let path = match output.unwrap_or("") {
        "none" | "null" => return Ok(LogOutput::Discard),
        "stdout" => return Ok(LogOutput::Stdout),
        "stderr" | "" => return Ok(LogOutput::Stderr),
        path => Path::new(path),
    };
    let cannot = |e: std::io::Error| format!("log.output: cannot open {path:?} for appending: {e}");
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(cannot)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(LogOutput::File)
        .map_err(cannot)
}

/// Whether log lines of level error reach standard error (set by [`init_logging`]).
static ERRORS_LOGGED_ON_STDERR: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Reports why gost cannot start: as a log line, and on standard error too unless that line
/// is already there (the log goes to a file, to standard output, or nowhere).
fn cannot_start(error: &dyn std::fmt::Display) {
    tracing::error!(error = %error, "cannot start");
    if !ERRORS_LOGGED_ON_STDERR.load(std::sync::atomic::Ordering::Relaxed) {
        say!("gost: {error}");
    }
}

fn init_logging(args: &Args, config: &Config) -> Result<(), String> {
    let log = config.log.clone().unwrap_or_default();
    let level = match args.debug {
        0 => match std::env::var("GOST_LOGGER_LEVEL").ok().as_deref() {
            Some("trace") => LogLevel::Trace,
            Some("debug") => LogLevel::Debug,
            Some("warn") => LogLevel::Warn,
            // gost-rs has no fatal events; see `LogLevel::Error`.
            Some("error" | "fatal") => LogLevel::Error,
            Some("info") => LogLevel::Info,
            _ => log.level.unwrap_or(LogLevel::Info),
        },
        1 => LogLevel::Debug,
        _ => LogLevel::Trace,
    };
    let filter = match level {
        LogLevel::Trace => tracing::Level::TRACE,
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Error => tracing::Level::ERROR,
    };
    let output = log_output(log.output.as_deref())?;
    let terminal = match output {
        LogOutput::Stderr => std::io::stderr().is_terminal(),
        LogOutput::Stdout => std::io::stdout().is_terminal(),
        LogOutput::Discard | LogOutput::File(_) => false,
    };
    let json = match log.format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => !terminal,
    };
    // The level applies to gost's own events. Libraries (h2, rustls, tungstenite) log every
    // frame at debug: they stay at info unless -DD/trace asks for everything, so that `-D`
    // stays readable and does not slow the data path.
    let ours = filter.to_string().to_lowercase();
    let libraries = match level {
        LogLevel::Trace => "debug",
        LogLevel::Debug | LogLevel::Info => "info",
        LogLevel::Warn | LogLevel::Error => ours.as_str(),
    };
    let directives = format!("{libraries},gost={ours},gost_proxy={ours},gost_api={ours}");
    // A line that cannot be written to standard error or output is dropped. The library
    // would report it with `eprintln!`, which panics when standard error is broken (a dead
    // `tee` or collector), and that panic would end whichever task was logging: a request
    // answered after its log line would get no answer at all. A log file's failures (a full
    // disk) are still reported, on standard error.
    let to_file = matches!(output, LogOutput::File(_));
    ERRORS_LOGGED_ON_STDERR.store(
        matches!(output, LogOutput::Stderr),
        std::sync::atomic::Ordering::Relaxed,
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(directives))
        .with_target(false)
        .log_internal_errors(to_file);
    let writer = match output {
        LogOutput::Stderr => BoxMakeWriter::new(std::io::stderr),
        LogOutput::Stdout => BoxMakeWriter::new(std::io::stdout),
        LogOutput::Discard => BoxMakeWriter::new(std::io::sink),
        // Each event is formatted first and written with one call, so with `O_APPEND` its line
        // stays whole even when another process appends to the same file.
        LogOutput::File(file) => BoxMakeWriter::new(std::sync::Arc::new(file)),
    };
    if json {
        // GOST's keys (`time`, `level`, `msg`, the fields flat), not tracing's own JSON.
        builder
            .event_format(gost_proxy::logjson::GostJson)
            .with_writer(writer)
            .init();
    } else {
        // Colours only on a terminal: not in files, pipes, journald or `kubectl logs`.
        builder.with_ansi(terminal).with_writer(writer).init();
    }
    Ok(())
}

async fn run(
    args: &Args,
    mut config: Config,
    hangup: Option<tokio::signal::unix::Signal>,
) -> ExitCode {
    let grace = args.grace_period;
    let tunnels = TaskTracker::new();
    let ready = gost_proxy::admin::Readiness::default();
    // Bound first, so that probes get an answer ("not ready") while services start, and kept
    // while draining, so that they see "not ready" rather than a refused connection. Its
    // credentials follow reloads; its address and path take effect at the next start.
    let mut metrics_auth = None;
    let _admin = match &config.metrics {
        Some(metrics) => match gost_proxy::admin::bind(metrics, &config, ready.clone()) {
            Ok((addr, auth, serve)) => {
                tracing::info!(addr = %addr, "metrics, /healthz and /readyz listening");
                metrics_auth = Some(auth);
                Some(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
                    serve,
                )))
            }
            Err(e) => {
                cannot_start(&e);
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    // Before the services start: a signal from then on is handled, not fatal. SIGHUP reloads,
    // as with GOST.
    let signals = Signals::new().and_then(|signals| {
        use tokio::signal::unix::{SignalKind, signal};
        let hangup = match hangup {
            Some(hangup) => hangup,
            None => signal(SignalKind::hangup())?,
        };
        Ok((signals, hangup))
    });
    let (mut signals, mut hangup) = match signals {
        Ok(signals) => signals,
        Err(e) => {
            say!("gost: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut supervisor = Supervisor::new(tunnels.clone(), grace);
    if let Err(e) = supervisor.apply(&config).await {
        cannot_start(&e);
        return ExitCode::from(2);
    }
    gost_proxy::metrics::config_applied(supervisor.generation());
    if config.services.is_empty() {
        tracing::warn!("the configuration has no services yet; waiting for it to change");
    }

    let mut files = watched_files(args, &config);
    let mut watcher = watch(&files);
    // A change between the first read and the watcher's baseline would go unseen.
    if watcher.is_some() {
        let assembled = assemble_config(args).await;
        if assembled.as_ref().ok() != Some(&config) {
            reload(
                assembled,
                &mut supervisor,
                (&ready, metrics_auth.as_ref()),
                "file change",
                &mut config,
            )
            .await;
        }
    }
    ready.set(supervisor.all_bound());
    let mut period = args.reload.filter(|p| !p.is_zero()).map(|p| {
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    // Set when the watcher was rebuilt for other files: the configuration is read once more
    // at once, since a change between the last read and the new watcher's baseline would go
    // unseen (as at the start). Bounded, in case the files named keep changing.
    let mut recheck = 0u8;
    // What the last read found, so that a read again that finds the same is not applied (or
    // refused) twice.
    let mut last_read: Option<Result<Config, String>> = None;
    let signal = loop {
        let cause = tokio::select! {
            signal = signals.next() => break signal,
            _ = std::future::ready(()), if recheck > 0 => "file change",
            _ = hangup.recv() => "SIGHUP",
            _ = changed(&mut watcher) => "file change",
            _ = tick(&mut period) => "period",
        };
        let rechecking = std::mem::take(&mut recheck);
        // Reading may take a while (a URL, up to 30 s); a stop signal does not wait for it.
        let (assembled, named) = tokio::select! {
            assembled = assemble_config_naming(args) => assembled,
            signal = signals.next() => break signal,
        };
        if rechecking == 0 || last_read.as_ref() != Some(&assembled) {
            last_read = Some(assembled.clone());
            reload(
                assembled,
                &mut supervisor,
                (&ready, metrics_auth.as_ref()),
                cause,
                &mut config,
            )
            .await;
        }
        // A reload may name other data files; those of a refused one are watched too, so
        // that creating or fixing one applies it.
        let mut now = watched_files(args, &config);
        for file in named {
            if !now.contains(&file) {
                now.push(file);
            }
        }
        if now != files {
            files = now;
            watcher = watch(&files);
            if rechecking < 3 {
                recheck = rechecking + 1;
            }
        }
    };
    ready.set(false);
    tracing::info!(
        signal,
        open = tunnels.len(),
        grace_period_s = grace.as_secs_f64(),
        "stopping: no new connections, draining open ones"
    );
    supervisor.stop_accepting().await;
    tunnels.close();
    let code = tokio::select! {
        _ = tunnels.wait() => {
            tracing::info!("all connections finished; exiting");
            ExitCode::SUCCESS
        }
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(open = tunnels.len(), "grace period over; exiting with connections open");
            ExitCode::SUCCESS
        }
        signal = signals.next() => {
            tracing::warn!(signal, open = tunnels.len(), "second signal; exiting now");
            // As a shell reports a process killed by the signal: 128 + its number.
            ExitCode::from(if signal == "SIGTERM" { 143 } else { 130 })
        }
    };
    // The tunnels still open are cut; each logs and counts what it moved on its way out,
    // which takes a moment, not more.
    supervisor.close_tunnels();
    let _ = tokio::time::timeout(CUT_TUNNELS_LOGGED_WITHIN, tunnels.wait()).await;
    // Whichever way the drain ended: QUIC peers learn that their connections are gone, which
    // exiting alone would not tell them.
    supervisor.close_lingering().await;
    code
}

/// How long cut tunnels get to log their line before the process exits.
const CUT_TUNNELS_LOGGED_WITHIN: std::time::Duration = std::time::Duration::from_millis(500);

async fn tick(period: &mut Option<tokio::time::Interval>) {
    match period {
        Some(period) => {
            period.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn changed(watcher: &mut Option<gost_proxy::watch::FileWatcher>) {
    match watcher {
        Some(watcher) => watcher.changed().await,
        None => std::future::pending().await,
    }
}

/// The files to watch: the `-C` sources that are files, and the data files they name.
fn watched_files(args: &Args, config: &Config) -> Vec<PathBuf> {
    config_sources(args)
        .into_iter()
        .filter(|s| s != "-" && !s.trim_start().starts_with('{') && !is_url(s))
        .filter(|s| is_regular_file(s))
        .map(PathBuf::from)
        .chain(gost_proxy::datafiles::data_files(config))
        .collect()
}

fn watch(files: &[PathBuf]) -> Option<gost_proxy::watch::FileWatcher> {
    (!files.is_empty()).then(|| {
        tracing::info!(files = ?files, "watching the configuration for changes");
        gost_proxy::watch::FileWatcher::new(files.to_vec())
    })
}

/// Applies a configuration read again (`assembled`); a refused one leaves everything running.
/// `admin` is what the metrics endpoint shows and checks: readiness, and its credentials when
/// it has an endpoint.
async fn reload(
    assembled: Result<Config, String>,
    supervisor: &mut Supervisor,
    admin: (
        &gost_proxy::admin::Readiness,
        Option<&gost_proxy::admin::MetricsAuth>,
    ),
    cause: &'static str,
    running: &mut Config,
) {
    let (ready, metrics_auth) = admin;
    let started = std::time::Instant::now();
    let result = match assembled {
        // A read that finds what runs (a periodic one, a SIGHUP, a file change in comments or
        // layout only) changes nothing and keeps the generation; a refusal shown before is
        // over. With a service not bound it is applied: that binds it if it can.
        Ok(config) if config == *running && supervisor.all_bound() => {
            tracing::debug!(cause, "configuration unchanged");
            ready.set_error(None);
            return;
        }
        Ok(config) => {
            let applied = supervisor.apply(&config).await.map_err(|e| e.to_string());
            if applied.is_ok() {
                // The endpoint's credentials follow, as the services' do: an old password
                // must stop working everywhere at once.
                if let Some(metrics_auth) = metrics_auth {
                    metrics_auth.update(&config);
                }
                // Said, not left to be found out: a metrics endpoint moved (or added) by a
                // reload is not there until the next start.
                let endpoint = |config: &Config| {
                    config
                        .metrics
                        .as_ref()
                        .map(|m| (m.addr.clone(), m.path.clone()))
                };
                if endpoint(&config) != endpoint(running) {
                    tracing::warn!(
                        section = "metrics",
                        "the `metrics` section changed; its address and path take effect at \
                         the next start (its credentials apply at once)"
                    );
                }
                if config.log != running.log {
                    tracing::warn!(
                        section = "log",
                        "the `log` section changed; it takes effect at the next start"
                    );
                }
                *running = config;
            }
            applied
        }
        Err(message) => Err(message),
    };
    match result {
        Ok(applied) => {
            gost_proxy::metrics::config_applied(supervisor.generation());
            ready.set_error(None);
            ready.set(supervisor.all_bound());
            tracing::info!(
                cause,
                generation = supervisor.generation(),
                added = ?applied.added,
                updated = ?applied.updated,
                replaced = ?applied.replaced,
                removed = ?applied.removed,
                unchanged = applied.unchanged,
                unbound = ?applied.unbound,
                // Whole microseconds, so the log shows `0.272`, not `0.27249799999999996`.
                took_ms = started.elapsed().as_micros() as f64 / 1e3,
                "configuration applied"
            );
        }
        Err(message) => {
            gost_proxy::metrics::config_refused();
            tracing::error!(cause, error = %message, "configuration refused; the previous one keeps running");
            ready.set_error(Some(message));
        }
    }
}

/// SIGTERM and SIGINT, whichever comes.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// glibc's `pow`, replaced so that `gost` does not load glibc's maths library at all.
///
/// The one floating-point function the binary calls is tokio's: its multi-thread scheduler
/// raises a constant to the number of tasks a worker polled (`f64::powf`) to weigh its
/// poll-time average. For that one call the dynamic loader mapped `libm.so.6` and ran its
/// IFUNC resolvers: libm's mappings were 0.5 MiB of an idle process's RSS, and the process is
/// 0.2-0.4 MiB smaller without them (BENCHMARKS.md, "Idle memory without libm"). Defined
/// here, the symbol is found in the executable, and the linker, which keeps only the shared
/// libraries a binary uses, leaves libm out. The `libm` crate is the Rust project's port of
/// musl's (FreeBSD's) maths library; its `pow` is correct to within one unit in the last
/// place, like glibc's, and never sets `errno`, which Rust never reads.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // `no_mangle` on a C library symbol
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

#[cfg(test)]
mod tests {
    use std::hint::black_box;

    use gost_api::{AuthConfig, Config, MetricsConfig};

    use clap::Parser;
    use clap::error::ErrorKind;

    use super::{
        Args, LogOutput, OsString, apply_metrics_overrides, go_style_args, log_output,
        malloc_tuned_by_user,
    };

    /// A user's own trim or mmap threshold stands (and is how to opt out); other tunables,
    /// such as the one gost's AMD restart sets, do not count.
    #[test]
    fn a_users_malloc_thresholds_stand() {
        for tunables in [
            "glibc.malloc.trim_threshold=131072",
            "glibc.cpu.x86_rep_movsb_threshold=2097152:glibc.malloc.mmap_threshold=65536",
        ] {
            assert!(malloc_tuned_by_user(tunables), "{tunables}");
        }
        for tunables in [
            "",
            "glibc.cpu.x86_rep_movsb_threshold=2097152",
            "glibc.malloc.arena_max=2",
            "glibc.malloc.trim_threshold_x=1",
        ] {
            assert!(!malloc_tuned_by_user(tunables), "{tunables}");
        }
    }

    fn go_style(args: &[&str]) -> Vec<String> {
        let args = std::iter::once("gost").chain(args.iter().copied());
        go_style_args(args.map(OsString::from))
            .into_iter()
            .skip(1)
            .map(|arg| arg.into_string().unwrap())
            .collect()
    }

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        let args = std::iter::once("gost").chain(args.iter().copied());
        Args::try_parse_from(go_style_args(args.map(OsString::from)))
    }

    /// Go's flag package reads `-name` and `--name` alike, for every flag.
    #[test]
    fn every_flag_takes_one_dash_or_two() {
        let args = parse(&[
            "--L",
            "http://127.0.0.1:38080",
            "-L=socks5://:1080",
            "--L=relay://:8421",
            "--F",
            "http://h:1",
            "--C",
            "a.yaml",
            "--C=b.yaml",
            "--O",
            "yaml",
            "--R=30s",
            "--D",
            "--metrics",
            ":9000",
            "--grace-period=5s",
        ])
        .unwrap();
        assert_eq!(
            args.listen,
            ["http://127.0.0.1:38080", "socks5://:1080", "relay://:8421"]
        );
        assert_eq!(args.forward, ["http://h:1"]);
        assert_eq!(args.config, ["a.yaml", "b.yaml"]);
        assert!(matches!(args.output, Some(super::OutputFormat::Yaml)));
        assert_eq!(args.reload, Some(std::time::Duration::from_secs(30)));
        assert_eq!(args.debug, 1);
        assert_eq!(args.metrics.as_deref(), Some(":9000"));
        assert_eq!(args.grace_period, std::time::Duration::from_secs(5));

        let args = parse(&["-metrics=:9000", "-api", ":18080", "--DD", "-O=json"]).unwrap();
        assert_eq!(args.metrics.as_deref(), Some(":9000"));
        assert_eq!(args.api.as_deref(), Some(":18080"));
        assert_eq!(args.debug, 2);
        assert!(matches!(args.output, Some(super::OutputFormat::Json)));
        // Go's boolean flags take a value after `=`.
        assert_eq!(parse(&["-D=false"]).unwrap().debug, 0);
        assert_eq!(parse(&["--D=true", "-DD=1"]).unwrap().debug, 3);
        assert!(parse(&["-D=maybe"]).is_err());

        for version in ["-V", "--V", "--version"] {
            assert_eq!(
                parse(&[version]).unwrap_err().kind(),
                ErrorKind::DisplayVersion,
                "{version}"
            );
        }
        for help in ["-h", "--h", "-help", "--help"] {
            assert_eq!(
                parse(&[help]).unwrap_err().kind(),
                ErrorKind::DisplayHelp,
                "{help}"
            );
        }
        // A value is the value, whatever it looks like (joined with `=` when it starts with
        // '-', so that clap does not read it as a flag); `--` and unknown flags pass as they are.
        assert_eq!(
            go_style(&["-L", "--F", "--", "--X", "-metricsx", "-"]),
            ["-L=--F", "--", "--X", "-metricsx", "-"]
        );
        assert_eq!(go_style(&["--metrics", "-api"]), ["--metrics=-api"]);
        assert_eq!(go_style(&["-L", "--"]), ["-L", "--"]);
        assert_eq!(parse(&["-L", "--F"]).unwrap().listen, ["--F"]);
        assert_eq!(parse(&["--F", "-x", "-L", ":1"]).unwrap().forward, ["-x"]);
        assert!(parse(&["--X"]).is_err());
    }

    #[test]
    fn log_output_is_read_as_gost_reads_it() {
        for (output, expected) in [
            (None, "stderr"),
            (Some(""), "stderr"),
            (Some("stderr"), "stderr"),
            (Some("stdout"), "stdout"),
            (Some("none"), "discard"),
            (Some("null"), "discard"),
        ] {
            let got = match log_output(output).unwrap() {
                LogOutput::Stderr => "stderr",
                LogOutput::Stdout => "stdout",
                LogOutput::Discard => "discard",
                LogOutput::File(_) => "file",
            };
            assert_eq!(got, expected, "{output:?}");
        }
        // Anything else is a file, created with its directory, and appended to.
        let dir = std::env::temp_dir().join(format!("gost-log-{}", std::process::id()));
        let path = dir.join("sub").join("gost.log");
        let path_text = path.to_str().unwrap();
        for line in ["one\n", "two\n"] {
            let LogOutput::File(mut file) = log_output(Some(path_text)).unwrap() else {
                panic!("{path_text} is not a file output");
            };
            std::io::Write::write_all(&mut file, line.as_bytes()).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\n");
        let err = log_output(Some(dir.to_str().unwrap())).err().unwrap();
        assert!(
            err.starts_with("log.output: cannot open") && err.contains(dir.to_str().unwrap()),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn with_file_metrics() -> Config {
        Config {
            metrics: Some(MetricsConfig {
                addr: ":9000".into(),
                path: Some("/m".into()),
                auth: Some(AuthConfig {
                    username: "prom".into(),
                    password: "pw".into(),
                    file: None,
                }),
                auther: None,
            }),
            ..Config::default()
        }
    }

    /// As GOST: `GOST_METRICS` moves the file's endpoint, `-metrics` replaces it.
    #[test]
    fn metrics_overrides_apply_in_gosts_order() {
        let mut config = with_file_metrics();
        apply_metrics_overrides(&mut config, Some("127.0.0.1:9100"), None).unwrap();
        let metrics = config.metrics.as_ref().unwrap();
        assert_eq!(metrics.addr, "127.0.0.1:9100");
        assert_eq!(metrics.path.as_deref(), Some("/m"));
        assert!(metrics.auth.is_some());

        let mut config = Config::default();
        apply_metrics_overrides(&mut config, Some(":9100"), None).unwrap();
        assert_eq!(config.metrics.unwrap().addr, ":9100");

        let mut config = with_file_metrics();
        apply_metrics_overrides(&mut config, Some(":9100"), Some("u:p@:9200")).unwrap();
        let metrics = config.metrics.unwrap();
        assert_eq!(
            (metrics.addr.as_str(), metrics.path),
            (":9200", None),
            "the flag replaces the whole section"
        );
        assert_eq!(metrics.auth.unwrap().password, "p");

        // Empty is unset, as in GOST.
        let mut config = Config::default();
        apply_metrics_overrides(&mut config, Some(""), None).unwrap();
        assert!(config.metrics.is_none());

        let err =
            apply_metrics_overrides(&mut Config::default(), Some("localhost"), None).unwrap_err();
        assert!(err.starts_with("GOST_METRICS: metrics.addr"), "{err}");
        let err = apply_metrics_overrides(&mut Config::default(), Some("u:s3cret@:9000"), None)
            .unwrap_err();
        assert!(
            err.contains("GOST_METRICS") && !err.contains("s3cret"),
            "{err}"
        );
    }

    /// `f64::powf` in this test binary calls the `pow` above, as tokio's does in `gost`
    /// (`black_box` keeps the compiler from working the powers out itself).
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn powf_runs_on_the_replacement_pow_and_is_right() {
        let powf = |base: f64, exp: f64| black_box(base).powf(black_box(exp));
        assert_eq!(powf(2.0, 10.0), 1024.0);
        assert_eq!(powf(10.0, -2.0), 0.01);
        assert_eq!(powf(0.0, 0.0), 1.0);
        assert_eq!(powf(f64::INFINITY, -1.0), 0.0);
        assert!(powf(-8.0, 1.0 / 3.0).is_nan());
        assert_eq!(powf(123.456, 1000.0), f64::INFINITY);
        // tokio's use: a weight (1 - alpha)^n for a batch of n polled tasks.
        for n in [1.0, 2.0, 7.0, 61.0, 1000.0] {
            for base in [0.9, 0.99, 1.01, 1.5] {
                let got = powf(base, n);
                let want = (n * black_box(base).ln()).exp();
                assert!(
                    ((got - want) / want).abs() < 1e-12,
                    "{base}^{n}: {got} against {want}"
                );
            }
        }
    }
}
