//! The benchmark harness: `cargo run -p gost-e2e --release --bin bench [-- --quick]`.
//!
//! Everything runs on loopback in one run, so ratios compare like with like: direct
//! connections to the same targets are the reference row; gost's HTTP CONNECT and SOCKS5
//! proxies (one hop and a two-process chain) and the peers that are installed (tinyproxy,
//! squid, dante) are measured beside them. Prints a Markdown report.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gost_e2e::{Gost, free_port, workspace_root};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How a benchmark client reaches a target.
#[derive(Clone, Debug)]
enum Route {
    Direct,
    HttpConnect {
        proxy: SocketAddr,
        auth: Option<String>,
    },
    Socks5 {
        proxy: SocketAddr,
        auth: Option<(String, String)>,
    },
}

struct Settings {
    throughput_time: Duration,
    rate_time: Duration,
    rate_tunnels: u64,
    idle_tunnels: usize,
    /// Only the time-to-first-byte columns (`--ttfb`): a quick look at latency alone.
    ttfb_only: bool,
    /// Only the transport rows (`--transports`): direct, the transports, their memory.
    transports_only: bool,
    /// Only the throughput columns (`--throughput`): a quick A/B of two builds' bulk speed.
    throughput_only: bool,
    /// Only the memory table (`--memory`).
    memory_only: bool,
}

#[derive(Default)]
struct Row {
    name: String,
    mib_s_1: f64,
    ratio_1: f64,
    mib_s_8: f64,
    ratio_8: f64,
    tunnels_per_s: f64,
    /// CPU time the proxy processes spent per tunnel while tunnels/s was measured.
    cpu_us_per_tunnel: f64,
    ttfb: Ttfb,
}

fn main() {
    if std::env::args().any(|a| a == "--reload") {
        reload_latency(&release_gost());
        return;
    }
    if let Some(minutes) = std::env::args()
        .skip_while(|a| a != "--soak")
        .nth(1)
        .and_then(|m| m.parse::<u64>().ok())
    {
        let bin = release_gost();
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(soak(&bin, Duration::from_secs(minutes * 60)));
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let ttfb_only = std::env::args().any(|a| a == "--ttfb");
    let transports_only = std::env::args().any(|a| a == "--transports");
    let throughput_only = std::env::args().any(|a| a == "--throughput");
    let memory_only = std::env::args().any(|a| a == "--memory");
    let settings = if quick {
        Settings {
            throughput_time: Duration::from_secs(1),
            rate_time: Duration::from_secs(3),
            rate_tunnels: 2_000,
            idle_tunnels: 1000,
            ttfb_only,
            transports_only,
            throughput_only,
            memory_only,
        }
    } else {
        Settings {
            throughput_time: Duration::from_secs(2),
            rate_time: Duration::from_secs(10),
            rate_tunnels: 4_000,
            idle_tunnels: 1000,
            ttfb_only,
            transports_only,
            throughput_only,
            memory_only,
        }
    };
    let bin = release_gost();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench(settings, bin));
}

fn release_gost() -> PathBuf {
    if let Some(bin) = std::env::var_os("GOST_BIN") {
        return PathBuf::from(bin);
    }
    let status = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "gost-proxy",
            "--bin",
            "gost",
        ])
        .current_dir(workspace_root())
        .status()
        .expect("cargo runs");
    assert!(status.success());
    workspace_root().join("target/release/gost")
}

async fn bench(settings: Settings, bin: PathBuf) {
    let source = start_source().await;
    let echo = start_echo().await;
    let banner = start_banner();
    let memory_targets = MemoryTargets {
        hold: start_hold().await,
        burst: start_burst().await,
    };
    let targets = Targets {
        source,
        echo,
        banner,
    };

    if settings.memory_only {
        let memory = measure_memory(&settings, &memory_targets, &bin).await;
        report_memory(&memory, &settings);
        return;
    }
    let gost_env = |args: &[&str]| Gost::start_bin(&bin, args, 1, None);
    let mut rows = Vec::new();
    rows.push(
        measure(
            "direct (reference)",
            &Route::Direct,
            &[],
            &targets,
            &settings,
        )
        .await,
    );

    if !settings.transports_only {
        let http = gost_env(&["-L", "http://user:pass@127.0.0.1:0"]);
        rows.push(
            measure(
                "gost http CONNECT, 1 hop",
                &Route::HttpConnect {
                    proxy: http.addr(),
                    auth: Some("user:pass".into()),
                },
                &[http.pid()],
                &targets,
                &settings,
            )
            .await,
        );
        let socks = gost_env(&["-L", "socks5://user:pass@127.0.0.1:0"]);
        rows.push(
            measure(
                "gost socks5, 1 hop",
                &Route::Socks5 {
                    proxy: socks.addr(),
                    auth: Some(("user".into(), "pass".into())),
                },
                &[socks.pid()],
                &targets,
                &settings,
            )
            .await,
        );
        // GOST's default handler (`gost -L :8080`), which serves HTTP and SOCKS on one port.
        let auto = gost_env(&["-L", "auto://user:pass@127.0.0.1:0"]);
        rows.push(
            measure(
                "gost auto handler (http CONNECT), 1 hop",
                &Route::HttpConnect {
                    proxy: auto.addr(),
                    auth: Some("user:pass".into()),
                },
                &[auto.pid()],
                &targets,
                &settings,
            )
            .await,
        );
        let front = gost_env(&[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!("http://user:pass@{}", http.addr()),
        ]);
        rows.push(
            measure(
                "gost http -> gost http, 2 hops",
                &Route::HttpConnect {
                    proxy: front.addr(),
                    auth: None,
                },
                &[front.pid(), http.pid()],
                &targets,
                &settings,
            )
            .await,
        );
    }
    // `BENCH_ONLY=SCHEME` measures only the transports whose scheme contains it.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    for (name, scheme) in TRANSPORTS.iter().filter(|(_, s)| s.contains(only.as_str())) {
        let server = gost_env(&["-L", &format!("{scheme}://user:pass@127.0.0.1:0")]);
        let client = gost_env(&[
            "-L",
            "http://127.0.0.1:0",
            "-F",
            &format!(
                "{scheme}://user:pass@{}{}",
                server.addr(),
                client_query(scheme)
            ),
        ]);
        rows.push(
            measure(
                &format!("gost {name} (http -> {scheme}, 2 processes)"),
                &Route::HttpConnect {
                    proxy: client.addr(),
                    auth: None,
                },
                &[client.pid(), server.pid()],
                &targets,
                &settings,
            )
            .await,
        );
    }
    if !settings.transports_only {
        for peer in peers() {
            match peer.start() {
                Some(mut running) => {
                    rows.push(measure(&peer.name, &running.route, &[], &targets, &settings).await);
                    running.stop();
                }
                None => eprintln!("{} not installed; skipped", peer.name),
            }
        }
    }
    let memory = if settings.ttfb_only || settings.throughput_only {
        Memory {
            rows: Vec::new(),
            hot_text: None,
        }
    } else {
        measure_memory(&settings, &memory_targets, &bin).await
    };
    report(&rows, &memory, &settings);
}

struct Targets {
    source: SocketAddr,
    echo: SocketAddr,
    banner: SocketAddr,
}

/// Tunnels over each transport: a gost server `-L SCHEME://…` and a gost client with an HTTP
/// proxy in front, `-L http://… -F SCHEME://SERVER`; the route is HTTP CONNECT to the client.
/// The proxy protocol is relay unless the seed's example for that transport says otherwise.
/// Relay over plain TCP comes first as the ceiling of every row: the same two processes and
/// three loopback connections, with no transport framing, and bytes spliced in the kernel.
const TRANSPORTS: [(&str, &str); 10] = [
    ("relay over tcp (the two-process ceiling)", "relay+tcp"),
    ("relay over tls", "relay+tls"),
    ("relay over ws", "relay+ws"),
    ("relay over wss", "relay+wss"),
    ("relay over h2c", "relay+h2c"),
    ("relay over h2", "relay+h2"),
    ("http2 CONNECT proxy", "http2"),
    ("relay over grpc", "relay+grpc"),
    ("relay over pht", "relay+pht"),
    ("PHT over HTTP/3 (auto server, http client)", "h3"),
];

/// The client's query for `scheme`: relay connectors exchange request and response at once
/// (`nodelay`), because the benchmark's targets speak first, which GOST's default lazy relay
/// client cannot serve (gost-wire.md §6.5).
fn client_query(scheme: &str) -> &'static str {
    if scheme.starts_with("relay") {
        "?nodelay=true"
    } else {
        ""
    }
}

/// Measures one route; `proxies` are the processes that carry it, whose CPU time per tunnel
/// is reported (empty for peers that fork helpers whose time their parent cannot see).
async fn measure(
    name: &str,
    route: &Route,
    proxies: &[u32],
    targets: &Targets,
    settings: &Settings,
) -> Row {
    eprintln!("measuring {name}");
    let ttfb = if settings.throughput_only {
        Ttfb::default()
    } else {
        // The client runs on a single-threaded runtime of its own: a spawned task is never
        // moved to a worker that first has to be woken, which would be the harness's latency,
        // not the route's.
        let (route, banner, time) = (route.clone(), targets.banner, settings.rate_time);
        tokio::task::spawn_blocking(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let mut windows = Vec::with_capacity(TTFB_WINDOWS);
                    for _ in 0..TTFB_WINDOWS {
                        windows.push(paired_ttfb(&route, banner, TTFB_RATE, time).await);
                    }
                    Ttfb::median(windows)
                })
        })
        .await
        .unwrap()
    };
    if settings.ttfb_only {
        return Row {
            name: name.to_string(),
            ttfb,
            ..Row::default()
        };
    }
    let (mib_s_1, ratio_1) = paired_throughput(route, targets.source, 1, settings).await;
    let (mib_s_8, ratio_8) = paired_throughput(route, targets.source, 8, settings).await;
    if settings.throughput_only {
        return Row {
            name: name.to_string(),
            mib_s_1,
            ratio_1,
            mib_s_8,
            ratio_8,
            tunnels_per_s: f64::NAN,
            cpu_us_per_tunnel: f64::NAN,
            ttfb,
        };
    }
    let cpu_before = cpu_ns(proxies);
    let tunnels_per_s = tunnel_rate(route, targets.echo, settings.rate_tunnels).await;
    let cpu_us_per_tunnel = if proxies.is_empty() {
        f64::NAN
    } else {
        (cpu_ns(proxies) - cpu_before) as f64 / 1e3 / settings.rate_tunnels as f64
    };
    Row {
        cpu_us_per_tunnel,
        name: name.to_string(),
        mib_s_1,
        ratio_1,
        mib_s_8,
        ratio_8,
        tunnels_per_s,
        ttfb,
    }
}

/// Opens a TCP tunnel to `target` over `route`.
async fn open(route: &Route, target: SocketAddr) -> std::io::Result<TcpStream> {
    match route {
        Route::Direct => {
            let s = TcpStream::connect(target).await?;
            s.set_nodelay(true)?;
            Ok(s)
        }
        Route::HttpConnect { proxy, auth } => {
            let mut s = TcpStream::connect(proxy).await?;
            s.set_nodelay(true)?;
            let auth = auth
                .as_ref()
                .map(|a| {
                    format!(
                        "Proxy-Authorization: Basic {}\r\n",
                        gost_e2e::base64(a.as_bytes())
                    )
                })
                .unwrap_or_default();
            s.write_all(
                format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n").as_bytes(),
            )
            .await?;
            let mut head = Vec::with_capacity(128);
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut byte).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                head.push(byte[0]);
            }
            if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
                return Err(std::io::Error::other(
                    String::from_utf8_lossy(&head).into_owned(),
                ));
            }
            Ok(s)
        }
        Route::Socks5 { proxy, auth } => {
            let mut s = TcpStream::connect(proxy).await?;
            s.set_nodelay(true)?;
            let method = if auth.is_some() { 2 } else { 0 };
            s.write_all(&[5, 1, method]).await?;
            let mut reply = [0u8; 2];
            s.read_exact(&mut reply).await?;
            if reply[1] != method {
                return Err(std::io::Error::other("socks5 method refused"));
            }
            if let Some((user, pass)) = auth {
                let mut msg = vec![1, user.len() as u8];
                msg.extend_from_slice(user.as_bytes());
                msg.push(pass.len() as u8);
                msg.extend_from_slice(pass.as_bytes());
                s.write_all(&msg).await?;
                s.read_exact(&mut reply).await?;
                if reply[1] != 0 {
                    return Err(std::io::Error::other("socks5 auth failed"));
                }
            }
            let SocketAddr::V4(v4) = target else {
                unreachable!("targets are IPv4")
            };
            let mut req = vec![5, 1, 0, 1];
            req.extend_from_slice(&v4.ip().octets());
            req.extend_from_slice(&v4.port().to_be_bytes());
            s.write_all(&req).await?;
            let mut rep = [0u8; 10];
            s.read_exact(&mut rep).await?;
            if rep[1] != 0 {
                return Err(std::io::Error::other(format!("socks5 reply {}", rep[1])));
            }
            Ok(s)
        }
    }
}

/// Throughput over `route` and its ratio to a direct run made right before it, each the median
/// of [`THROUGHPUT_RUNS`] pairs. Pairing matters on shared virtual machines, where loopback
/// speed itself shifts during a run: a ratio of adjacent runs is far steadier than a ratio to
/// a reference measured minutes earlier.
async fn paired_throughput(
    route: &Route,
    source: SocketAddr,
    streams: usize,
    settings: &Settings,
) -> (f64, f64) {
    let mut speeds = Vec::with_capacity(THROUGHPUT_RUNS);
    let mut ratios = Vec::with_capacity(THROUGHPUT_RUNS);
    for _ in 0..THROUGHPUT_RUNS {
        let direct = throughput(&Route::Direct, source, streams, settings.throughput_time).await;
        let speed = throughput(route, source, streams, settings.throughput_time).await;
        if std::env::var_os("BENCH_PAIRS").is_some() {
            eprintln!(
                "  {streams} stream(s): direct {direct:.0} MiB/s, route {speed:.0} MiB/s, ratio {:.2}",
                speed / direct
            );
        }
        speeds.push(speed);
        ratios.push(speed / direct);
    }
    (median(speeds), median(ratios))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

const THROUGHPUT_RUNS: usize = 5;

/// Read and write size of the benchmark's own client and source: 64 KiB, what common tools
/// use (e.g. `iperf3 -l 64K`), and the size the peers' ratios in the issue were measured with.
const IO_BLOCK: usize = 64 * 1024;

/// MiB/s received from a source that writes as fast as it can, over `streams` tunnels.
async fn throughput(route: &Route, source: SocketAddr, streams: usize, time: Duration) -> f64 {
    let total = Arc::new(AtomicU64::new(0));
    let warmup = Duration::from_millis(500);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let route = route.clone();
        let total = total.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = open(&route, source).await.expect("open tunnel");
            let mut buf = vec![0u8; IO_BLOCK];
            loop {
                let n = s.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                if start.elapsed() >= warmup {
                    total.fetch_add(n as u64, Ordering::Relaxed);
                }
                if start.elapsed() >= warmup + time {
                    break;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    total.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0) / time.as_secs_f64()
}

/// Tunnels opened, used for one echoed byte and closed per second, 16 at a time, over a fixed
/// number of tunnels. A fixed count rather than a fixed time: at over 10,000 connections a
/// second, a timed run leaves the loopback's ephemeral ports in TIME_WAIT and slows the rows
/// after it.
async fn tunnel_rate(route: &Route, echo: SocketAddr, tunnels: u64) -> f64 {
    const WORKERS: usize = 16;
    let remaining = Arc::new(AtomicU64::new(tunnels));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let route = route.clone();
        let remaining = remaining.clone();
        tasks.push(tokio::spawn(async move {
            let mut failures = 0u32;
            while remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let echoed = async {
                    let mut s = open(&route, echo).await?;
                    let mut b = [0u8; 1];
                    s.write_all(b"x").await?;
                    s.read_exact(&mut b).await?;
                    std::io::Result::Ok(())
                };
                if echoed.await.is_err() {
                    failures += 1;
                    assert!(failures < 100, "tunnels keep failing over {route:?}");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("rate worker");
    }
    tunnels as f64 / started.elapsed().as_secs_f64()
}

/// CPU time consumed so far by every thread of `pids`, in nanoseconds (from
/// `/proc/PID/task/TID/schedstat`, whose first field is time on a CPU).
fn cpu_ns(pids: &[u32]) -> u64 {
    let mut total = 0;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            total += stat
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// New tunnels per second over the measured route in the time-to-first-byte columns.
const TTFB_RATE: f64 = 200.0;

/// Windows of `rate_time` each; every figure is the median of the windows' figures, so one
/// noisy stretch of the virtual machine does not decide the row.
const TTFB_WINDOWS: usize = 3;

/// Time to first byte over a route, next to direct connections measured in the same window.
#[derive(Default, Clone, Copy)]
struct Ttfb {
    p50_us: f64,
    p99_us: f64,
    direct_p50_us: f64,
    direct_p99_us: f64,
    /// Median over the windows of each window's difference to direct.
    added_p50_us: f64,
    added_p99_us: f64,
    /// Tunnels that failed to open or to deliver the byte.
    failed: usize,
}

/// Time from starting a connection to the target's first byte, for new tunnels opened over
/// `route` at `rate` per second, with a direct connection opened half-way between each two of
/// them. Interleaving makes the direct figures a reference taken under the same conditions:
/// on a shared virtual machine the tail of a latency distribution moves from one minute to
/// the next, for every process alike.
async fn paired_ttfb(route: &Route, banner: SocketAddr, rate: f64, time: Duration) -> Ttfb {
    let count = (time.as_secs_f64() * rate) as usize;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(0.5 / rate));
    // A late tick must not be made up with a burst: the point is a steady rate.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = Vec::with_capacity(2 * count);
    for i in 0..2 * count {
        ticker.tick().await;
        let route = if i % 2 == 0 {
            route.clone()
        } else {
            Route::Direct
        };
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut s = open(&route, banner).await.ok()?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.ok()?;
            Some(started.elapsed())
        }));
    }
    let mut routed = Vec::with_capacity(count);
    let mut direct = Vec::with_capacity(count);
    let mut failed = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await {
            Ok(Some(d)) if i % 2 == 0 => routed.push(d.as_secs_f64() * 1e6),
            Ok(Some(d)) => direct.push(d.as_secs_f64() * 1e6),
            _ => failed += 1,
        }
    }
    Ttfb {
        p50_us: quantile(&mut routed, 0.50),
        p99_us: quantile(&mut routed, 0.99),
        direct_p50_us: quantile(&mut direct, 0.50),
        direct_p99_us: quantile(&mut direct, 0.99),
        added_p50_us: 0.0,
        added_p99_us: 0.0,
        failed,
    }
}

impl Ttfb {
    fn median(windows: Vec<Ttfb>) -> Ttfb {
        let of = |f: fn(&Ttfb) -> f64| median(windows.iter().map(f).collect());
        Ttfb {
            p50_us: of(|t| t.p50_us),
            p99_us: of(|t| t.p99_us),
            direct_p50_us: of(|t| t.direct_p50_us),
            direct_p99_us: of(|t| t.direct_p99_us),
            added_p50_us: of(|t| t.p50_us - t.direct_p50_us),
            added_p99_us: of(|t| t.p99_us - t.direct_p99_us),
            failed: windows.iter().map(|t| t.failed).sum(),
        }
    }
}

fn quantile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples
        .get(((samples.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

struct Memory {
    rows: Vec<MemoryRow>,
    /// Size of the binary's `.text.hot` section (the functions of `proxy/hot-functions.txt`,
    /// laid out first by a release build), if it has one.
    hot_text: Option<u64>,
}

/// One gost process of the memory table, in KiB.
struct MemoryRow {
    name: String,
    idle: f64,
    /// The part of `idle` that is the process's own (`RssAnon`): the rest is pages of the
    /// binary and its libraries, which every gost process on the host shares.
    idle_anon: f64,
    loaded: f64,
    per_tunnel: f64,
    /// RSS added per tunnel by `BURST_TUNNELS` more tunnels, each idle after a download of
    /// `BURST_BYTES`: what buffers grown by traffic keep once it stops.
    per_burst_tunnel: f64,
}

/// The memory table's targets: one that holds connections without a byte, one that sends
/// `BURST_BYTES` and then holds.
struct MemoryTargets {
    hold: SocketAddr,
    burst: SocketAddr,
}

/// Tunnels of the memory table that download `BURST_BYTES` each before going idle.
const BURST_TUNNELS: usize = 20;

/// What each of those tunnels downloads.
const BURST_BYTES: usize = 32 << 20;

/// RSS of a fresh gost process idle, and with `settings.idle_tunnels` idle tunnels open.
async fn measure_memory(
    settings: &Settings,
    targets: &MemoryTargets,
    bin: &std::path::Path,
) -> Memory {
    let mut rows = Vec::new();
    let handlers: &[(&str, &str)] = if settings.transports_only {
        &[]
    } else {
        &[("http CONNECT", "http"), ("socks5", "socks5")]
    };
    for (name, scheme) in handlers {
        let gost = Gost::start_bin(bin, &["-L", &format!("{scheme}://127.0.0.1:0")], 1, None);
        let route = match *scheme {
            "http" => Route::HttpConnect {
                proxy: gost.addr(),
                auth: None,
            },
            _ => Route::Socks5 {
                proxy: gost.addr(),
                auth: None,
            },
        };
        let [row] = hold_tunnels(settings, targets, &route, [(name, &gost)]).await;
        rows.push(row);
    }
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    for (name, scheme) in MULTIPLEXED
        .iter()
        .filter(|(_, s)| s.contains(only.as_str()))
    {
        let server = Gost::start_bin(bin, &["-L", &format!("{scheme}://127.0.0.1:0")], 1, None);
        let client = Gost::start_bin(
            bin,
            &[
                "-L",
                "http://127.0.0.1:0",
                "-F",
                &format!("{scheme}://{}{}", server.addr(), client_query(scheme)),
            ],
            1,
            None,
        );
        let route = Route::HttpConnect {
            proxy: client.addr(),
            auth: None,
        };
        let processes = [
            (&*format!("{name} server"), &server),
            (&*format!("{name} client (http in front)"), &client),
        ];
        rows.extend(hold_tunnels(settings, targets, &route, processes).await);
    }
    Memory {
        rows,
        hot_text: section_size(bin, ".text.hot"),
    }
}

/// Size in bytes of an ELF section of `bin`, as `readelf` reads it.
fn section_size(bin: &std::path::Path, name: &str) -> Option<u64> {
    let out = Command::new("readelf").arg("-SW").arg(bin).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            // `  [17] .text.hot  PROGBITS  <address> <offset> <size> ...`
            let fields: Vec<&str> = line.split_whitespace().collect();
            let at = fields.iter().position(|f| *f == name)?;
            u64::from_str_radix(fields.get(at + 4)?, 16).ok()
        })
}

/// Transports whose idle tunnels the issues give a memory figure for (all but pht share one
/// connection per node), measured as a gost server and a gost client in front of it.
const MULTIPLEXED: [(&str, &str); 4] = [
    ("relay over h2", "relay+h2"),
    ("relay over grpc", "relay+grpc"),
    ("relay over pht", "relay+pht"),
    ("PHT over HTTP/3", "h3"),
];

/// RSS of each of `processes` idle, then with `settings.idle_tunnels` idle tunnels open over
/// `route`, then with `BURST_TUNNELS` more that each downloaded `BURST_BYTES` first.
async fn hold_tunnels<const N: usize>(
    settings: &Settings,
    targets: &MemoryTargets,
    route: &Route,
    processes: [(&str, &Gost); N],
) -> [MemoryRow; N] {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = processes.map(|(_, gost)| rss_kib(gost.pid()));
    let idle_anon = processes.map(|(_, gost)| status_kib(gost.pid(), "RssAnon:"));
    let mut open_tunnels = Vec::with_capacity(settings.idle_tunnels + BURST_TUNNELS);
    for _ in 0..settings.idle_tunnels {
        open_tunnels.push(open(route, targets.hold).await.expect("open idle tunnel"));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = processes.map(|(_, gost)| rss_kib(gost.pid()));
    let mut buf = vec![0u8; IO_BLOCK];
    for _ in 0..BURST_TUNNELS {
        let mut tunnel = open(route, targets.burst).await.expect("open burst tunnel");
        let mut got = 0;
        while got < BURST_BYTES {
            let n = tokio::time::timeout(Duration::from_secs(30), tunnel.read(&mut buf))
                .await
                .expect("burst download stalled")
                .expect("burst download");
            assert!(n > 0, "burst tunnel closed after {got} bytes");
            got += n;
        }
        open_tunnels.push(tunnel);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut i = 0;
    processes.map(|(name, gost)| {
        let after_burst = rss_kib(gost.pid());
        let row = MemoryRow {
            name: name.to_string(),
            idle: idle[i],
            idle_anon: idle_anon[i],
            loaded: loaded[i],
            per_tunnel: (loaded[i] - idle[i]) / settings.idle_tunnels as f64,
            per_burst_tunnel: (after_burst - loaded[i]) / BURST_TUNNELS as f64,
        };
        i += 1;
        row
    })
}

fn rss_kib(pid: u32) -> f64 {
    status_kib(pid, "VmRSS:")
}

/// A `kB` field of `/proc/PID/status`.
fn status_kib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

fn report(rows: &[Row], memory: &Memory, settings: &Settings) {
    if !settings.ttfb_only {
        println!(
            "| route | 1 stream MiB/s | ratio to direct | 8 streams MiB/s | ratio to direct | tunnels/s | proxy CPU µs per tunnel |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for r in rows {
            let or_dash = |v: f64| {
                if v.is_nan() {
                    "–".to_string()
                } else {
                    format!("{v:.0}")
                }
            };
            println!(
                "| {} | {:.0} | {:.2} | {:.0} | {:.2} | {} | {} |",
                r.name,
                r.mib_s_1,
                r.ratio_1,
                r.mib_s_8,
                r.ratio_8,
                or_dash(r.tunnels_per_s),
                or_dash(r.cpu_us_per_tunnel),
            );
        }
        println!();
    }
    if settings.throughput_only {
        return;
    }
    println!(
        "| route ({TTFB_RATE:.0} new tunnels/s, median of {TTFB_WINDOWS} × {:.0} s) | ttfb p50 µs | ttfb p99 µs | direct p50 µs | direct p99 µs | added p50 µs | added p99 µs | failed |",
        settings.rate_time.as_secs_f64()
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let t = &r.ttfb;
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
            r.name,
            t.p50_us,
            t.p99_us,
            t.direct_p50_us,
            t.direct_p99_us,
            t.added_p50_us,
            t.added_p99_us,
            t.failed,
        );
    }
    if settings.ttfb_only {
        return;
    }
    println!();
    report_memory(memory, settings);
}

fn report_memory(memory: &Memory, settings: &Settings) {
    println!(
        "| gost process | idle RSS KiB | of which anonymous KiB | RSS KiB with {n} idle tunnels | KiB per idle tunnel | KiB per tunnel idle after {mib} MiB down ({b} tunnels) |",
        n = settings.idle_tunnels,
        mib = BURST_BYTES >> 20,
        b = BURST_TUNNELS,
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &memory.rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} |",
            r.name, r.idle, r.idle_anon, r.loaded, r.per_tunnel, r.per_burst_tunnel
        );
    }
    match memory.hot_text {
        Some(bytes) => println!(
            "\nThe binary runs its hot functions from a `.text.hot` section of {} KiB \
             (proxy/hot-functions.txt).",
            bytes >> 10
        ),
        None => println!(
            "\nThe binary has no `.text.hot` section: its functions keep the default layout \
             (not a release build, GOST_HOT_FUNCTIONS=0, or no readelf)."
        ),
    }
}

// --- targets -------------------------------------------------------------------------------

/// Serves every connection to a new loopback port with `serve`, each in its own task.
async fn serve_each<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream));
            }
        }
    });
    addr
}

/// Writes [`IO_BLOCK`] chunks as fast as the reader takes them.
async fn start_source() -> SocketAddr {
    serve_each(|mut s| async move {
        let chunk = vec![0x5au8; IO_BLOCK];
        while s.write_all(&chunk).await.is_ok() {}
    })
    .await
}

async fn start_echo() -> SocketAddr {
    serve_each(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

/// Writes one byte as soon as a connection arrives. A thread of its own with blocking
/// sockets, so the byte leaves after a single wake-up, whatever the benchmark's runtime is
/// doing. Connections are kept for a few seconds so that the client closes first.
fn start_banner() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut open = std::collections::VecDeque::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_nodelay(true);
            let _ = std::io::Write::write_all(&mut stream, b"!");
            let now = Instant::now();
            while open
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > Duration::from_secs(3))
            {
                open.pop_front();
            }
            open.push_back((now, stream));
        }
    });
    addr
}

/// Sends `BURST_BYTES` on each connection, then holds it open: tunnels idle after a download.
async fn start_burst() -> SocketAddr {
    serve_each(|mut s| async move {
        let chunk = vec![0x5au8; IO_BLOCK];
        for _ in 0..BURST_BYTES / IO_BLOCK {
            if s.write_all(&chunk).await.is_err() {
                return;
            }
        }
        std::future::pending::<()>().await;
    })
    .await
}

/// Accepts connections and holds them open without reading: idle tunnels.
async fn start_hold() -> SocketAddr {
    serve_each(|s| async move {
        std::future::pending::<()>().await;
        drop(s);
    })
    .await
}

// --- peers ---------------------------------------------------------------------------------

struct Peer {
    name: String,
    binary: &'static str,
    kind: PeerKind,
}

enum PeerKind {
    Tinyproxy,
    Squid,
    Dante,
}

struct RunningPeer {
    child: Child,
    route: Route,
    _dir: PathBuf,
}

impl RunningPeer {
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn peers() -> Vec<Peer> {
    vec![
        Peer {
            name: "tinyproxy (http CONNECT)".into(),
            binary: "/usr/bin/tinyproxy",
            kind: PeerKind::Tinyproxy,
        },
        Peer {
            name: "squid (http CONNECT)".into(),
            binary: "/usr/sbin/squid",
            kind: PeerKind::Squid,
        },
        Peer {
            name: "dante (socks5)".into(),
            binary: "/usr/sbin/danted",
            kind: PeerKind::Dante,
        },
    ]
}

impl Peer {
    fn start(&self) -> Option<RunningPeer> {
        if !std::path::Path::new(self.binary).exists() {
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "gost-bench-{}-{}",
            std::process::id(),
            self.binary.rsplit('/').next().unwrap()
        ));
        std::fs::create_dir_all(&dir).ok()?;
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let conf = dir.join("peer.conf");
        let (args, route): (Vec<String>, Route) = match self.kind {
            PeerKind::Tinyproxy => {
                std::fs::write(&conf, format!("Port {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 2000\nLogLevel Error\nAllow 127.0.0.1\n")).ok()?;
                (
                    vec!["-d".into(), "-c".into(), conf.display().to_string()],
                    Route::HttpConnect {
                        proxy: addr,
                        auth: None,
                    },
                )
            }
            PeerKind::Squid => {
                std::fs::write(
                    &conf,
                    format!(
                        "http_port 127.0.0.1:{port}\nhttp_access allow all\ncache deny all\nshutdown_lifetime 0 seconds\npid_filename {0}/squid.pid\naccess_log none\ncache_log {0}/cache.log\ncoredump_dir {0}\nmax_filedescriptors 8192\n",
                        dir.display()
                    ),
                )
                .ok()?;
                (
                    vec!["-N".into(), "-f".into(), conf.display().to_string()],
                    Route::HttpConnect {
                        proxy: addr,
                        auth: None,
                    },
                )
            }
            PeerKind::Dante => {
                std::fs::write(
                    &conf,
                    format!(
                        "logoutput: {0}/dante.log\ninternal: 127.0.0.1 port = {port}\nexternal: 127.0.0.1\nclientmethod: none\nsocksmethod: none\nuser.privileged: root\nuser.notprivileged: nobody\nclient pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}\nsocks pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}\n",
                        dir.display()
                    ),
                )
                .ok()?;
                (
                    vec!["-f".into(), conf.display().to_string()],
                    Route::Socks5 {
                        proxy: addr,
                        auth: None,
                    },
                )
            }
        };
        let child = Command::new(self.binary)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                eprintln!("{} did not start", self.name);
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(RunningPeer {
            child,
            route,
            _dir: dir,
        })
    }
}

/// Services in the reload benchmark's configuration (issue 5: 100).
const RELOAD_SERVICES: usize = 100;
/// Reloads measured.
const RELOADS: usize = 20;

/// `--reload`: how long after a configuration file changes (the kubelet's `..data` swap) a
/// gost with 100 services has applied it, from the rename to the `configuration applied` log
/// line's timestamp; each new version changes one service's handler and adds one service.
fn reload_latency(bin: &std::path::Path) {
    let dir = gost_e2e::tempdir();
    let yaml = |version: usize| {
        let mut yaml = String::from("services:\n");
        for i in 0..RELOAD_SERVICES + version {
            let auth = if i == 0 {
                format!("    auth:\n      username: u\n      password: p{version}\n")
            } else {
                String::new()
            };
            yaml.push_str(&format!(
                "- name: s{i}\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n{auth}  listener:\n    type: tcp\n"
            ));
        }
        yaml
    };
    let write = |version: usize| {
        let data = dir.join(format!("..v{version}"));
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("gost.yaml"), yaml(version)).unwrap();
        std::os::unix::fs::symlink(format!("..v{version}"), dir.join("..tmp")).unwrap();
        let before = seconds_of_day(std::time::SystemTime::now());
        std::fs::rename(dir.join("..tmp"), dir.join("..data")).unwrap();
        before
    };
    write(0);
    std::os::unix::fs::symlink("..data/gost.yaml", dir.join("gost.yaml")).unwrap();
    let file = dir.join("gost.yaml");
    let gost = Gost::start_bin(bin, &["-C", file.to_str().unwrap()], RELOAD_SERVICES, None);
    let mut latencies = Vec::new();
    let mut applies = Vec::new();
    for version in 1..=RELOADS {
        let changed_at = write(version);
        let deadline = Instant::now() + Duration::from_secs(10);
        let line = loop {
            let log = gost.log();
            if let Some(line) = log
                .lines()
                .filter(|l| l.contains("configuration applied"))
                .nth(version - 1)
            {
                break line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "reload {version} not applied:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let stamp = line
            .split("\"time\":\"")
            .nth(1)
            .and_then(|t| t.split('T').nth(1))
            .and_then(|t| t.trim_end_matches(|c| c != 'Z').strip_suffix('Z'))
            .map(|hms| {
                hms.split(':')
                    .map(|p| p.parse::<f64>().unwrap())
                    .fold(0.0, |acc, p| acc * 60.0 + p)
            })
            .expect("timestamp");
        latencies.push((stamp - changed_at) * 1e3);
        let took = line
            .split("\"took_ms\":")
            .nth(1)
            .and_then(|t| t.split([',', '}']).next())
            .and_then(|t| t.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        applies.push(took);
        std::thread::sleep(Duration::from_millis(200));
    }
    let median = |v: &mut Vec<f64>| quantile(v, 0.5);
    let max = |v: &[f64]| v.iter().cloned().fold(f64::MIN, f64::max);
    println!("| reload of {RELOAD_SERVICES}+ services ({RELOADS} times) | median ms | max ms |");
    println!("|---|---:|---:|");
    println!(
        "| file renamed → configuration applied | {:.1} | {:.1} |",
        median(&mut latencies.clone()),
        max(&latencies)
    );
    println!(
        "| of which applying (build, bind, swap) | {:.1} | {:.1} |",
        median(&mut applies.clone()),
        max(&applies)
    );
}

/// Seconds since midnight UTC, as the log's timestamps give them.
fn seconds_of_day(t: std::time::SystemTime) -> f64 {
    let since = t
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    since % 86_400.0
}

/// Every transport of the seed page, as the soak runs them (scheme on both ends).
const SOAK_TRANSPORTS: [&str; 11] = [
    "http",
    "socks5",
    "relay+tls",
    "relay+ws",
    "relay+wss",
    "relay+h2c",
    "relay+h2",
    "http2",
    "relay+grpc",
    "relay+pht",
    "h3",
];

/// New tunnels per second per transport during the soak.
const SOAK_RATE: u64 = 10;
/// How often RSS and open descriptors are sampled.
const SOAK_SAMPLE: Duration = Duration::from_secs(60);

/// `--soak MINUTES`: tunnels churned over every transport through one gost server process and
/// one gost client process (an HTTP front per transport chained to the server's service);
/// prints RSS and open file descriptors of both every minute.
async fn soak(bin: &std::path::Path, length: Duration) {
    let echo = start_echo().await;
    let mut server_args = Vec::new();
    for scheme in SOAK_TRANSPORTS {
        server_args.push("-L".to_string());
        server_args.push(format!("{scheme}://127.0.0.1:0"));
    }
    let server_args: Vec<&str> = server_args.iter().map(String::as_str).collect();
    let server = Gost::start_bin(bin, &server_args, SOAK_TRANSPORTS.len(), None);
    // The client: one HTTP front per transport, each with its own one-hop chain.
    let mut yaml = String::from("services:\n");
    for (i, _) in SOAK_TRANSPORTS.iter().enumerate() {
        yaml.push_str(&format!(
            "- name: front-{i}\n  addr: 127.0.0.1:0\n  handler:\n    type: http\n    chain: c{i}\n  listener:\n    type: tcp\n"
        ));
    }
    yaml.push_str("chains:\n");
    for (i, scheme) in SOAK_TRANSPORTS.iter().enumerate() {
        let (connector, dialer) = match scheme.split_once('+') {
            Some((c, d)) => (c, d),
            None if *scheme == "h3" => ("http", "h3"),
            None if *scheme == "http2" => ("http2", "http2"),
            None => (*scheme, "tcp"),
        };
        let nodelay = if connector == "relay" {
            "      connector:\n        type: relay\n        metadata:\n          nodelay: true\n"
                .to_string()
        } else {
            format!("      connector:\n        type: {connector}\n")
        };
        yaml.push_str(&format!(
            "- name: c{i}\n  hops:\n  - name: h{i}\n    nodes:\n    - name: n{i}\n      addr: {}\n{nodelay}      dialer:\n        type: {dialer}\n",
            server
                .service_addr(&format!("service-{i}"))
                .expect("every server service reported its address")
        ));
    }
    let dir = gost_e2e::tempdir();
    let file = dir.join("client.yaml");
    std::fs::write(&file, yaml).unwrap();
    let client = Gost::start_bin(
        bin,
        &["-C", file.to_str().unwrap()],
        SOAK_TRANSPORTS.len(),
        None,
    );
    let fronts: Vec<SocketAddr> = (0..SOAK_TRANSPORTS.len())
        .map(|i| {
            client
                .service_addr(&format!("front-{i}"))
                .expect("front address")
        })
        .collect();
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + length;
    let mut churners = Vec::new();
    for front in fronts {
        let (failures, done) = (failures.clone(), done.clone());
        churners.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / SOAK_RATE));
            while Instant::now() < deadline {
                tick.tick().await;
                let route = Route::HttpConnect {
                    proxy: front,
                    auth: None,
                };
                let ok = async {
                    let mut s = open(&route, echo).await?;
                    let data = [7u8; 4096];
                    s.write_all(&data).await?;
                    let mut back = [0u8; 4096];
                    s.read_exact(&mut back).await?;
                    std::io::Result::Ok(back == data)
                };
                match tokio::time::timeout(Duration::from_secs(10), ok).await {
                    Ok(Ok(true)) => done.fetch_add(1, Ordering::Relaxed),
                    _ => failures.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    println!(
        "| minute | tunnels | failed | server RSS KiB | server fds | client RSS KiB | client fds |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let started = Instant::now();
    let mut minute = 0;
    loop {
        println!(
            "| {minute} | {} | {} | {:.0} | {} | {:.0} | {} |",
            done.load(Ordering::Relaxed),
            failures.load(Ordering::Relaxed),
            rss_kib(server.pid()),
            open_fds(server.pid()),
            rss_kib(client.pid()),
            open_fds(client.pid()),
        );
        if Instant::now() >= deadline {
            break;
        }
        minute += 1;
        tokio::time::sleep_until((started + SOAK_SAMPLE * minute as u32).into()).await;
    }
    for c in churners {
        let _ = c.await;
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}
