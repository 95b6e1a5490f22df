//! Test harness for whole-system tests: real `gost` processes on loopback, plain targets to
//! tunnel to, and helpers to drive them with real clients (curl, Python).
//!
//! Every wait here is bounded: a process that does not come up, a target that does not answer
//! or a client that hangs fails the test with a message instead of stalling the suite.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long a `gost` process may take to report its listeners.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// How much of a process's log the harness keeps.
const MAX_KEPT_LOG: usize = 8 * 1024 * 1024;

/// Upper bound for any single client operation in the tests.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e lives in the workspace")
        .to_path_buf()
}

/// The `gost` binary under test: `$GOST_BIN` if set, else the workspace's debug build, built
/// on first use if missing.
pub fn gost_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("GOST_BIN") {
            return PathBuf::from(bin);
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        let bin = target.join("debug").join("gost");
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--quiet", "-p", "gost-proxy", "--bin", "gost"])
            .current_dir(workspace_root())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building gost failed");
        bin
    })
    .clone()
}

/// The `gost-operator` binary: `$GOST_OPERATOR_BIN` if set (scripts/test sets it), else the
/// workspace's debug build, built on first use.
pub fn operator_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("GOST_OPERATOR_BIN") {
            return PathBuf::from(bin);
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "--quiet",
                "-p",
                "gost-operator",
                "--bin",
                "gost-operator",
            ])
            .current_dir(workspace_root())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building gost-operator failed");
        target.join("debug").join("gost-operator")
    })
    .clone()
}

/// How long a log line may take to appear after the event it reports.
pub const LOG_DEADLINE: Duration = Duration::from_secs(5);

/// A running `gost` process, killed when dropped.
pub struct Gost {
    child: Child,
    log: Arc<Mutex<String>>,
    /// The addresses its services listen on, in configuration order.
    pub addrs: Vec<SocketAddr>,
    /// The directory of the configuration file it was started with, removed after it.
    config_dir: Option<TempDir>,
}

impl Gost {
    /// Starts `gost` with `args` and waits until each of its `services` services reports its
    /// listening address.
    pub fn start(args: &[&str], services: usize) -> Gost {
        Self::start_in(args, services, None)
    }

    /// Starts `gost -C FILE` with `yaml` written to a file of its own, and waits for its
    /// `services` services.
    pub fn start_config(yaml: &str, services: usize) -> Gost {
        let dir = tempdir();
        let file = dir.join("gost.yaml");
        std::fs::write(&file, yaml).expect("write the configuration");
        let mut gost = Self::start(&["-C", file.to_str().expect("UTF-8 temp path")], services);
        gost.config_dir = Some(dir);
        gost
    }

    /// As [`Gost::start`], with a working directory that is also its `HOME`.
    pub fn start_in(args: &[&str], services: usize, dir: Option<&Path>) -> Gost {
        Self::start_bin(&gost_bin(), args, services, dir)
    }

    /// As [`Gost::start`], with `env` added to its environment.
    pub fn start_with_env(args: &[&str], services: usize, env: &[(&str, &str)]) -> Gost {
        Self::spawn(&gost_bin(), args, services, None, env, None)
    }

    /// As [`Gost::start_in`] with `dir` as the working directory only: `HOME` is removed from
    /// its environment.
    pub fn start_in_without_home(args: &[&str], services: usize, dir: &Path) -> Gost {
        Self::spawn_with(&gost_bin(), args, services, Some(dir), &[], None, false)
    }

    /// As [`Gost::start_in`], running the binary `bin`.
    pub fn start_bin(bin: &Path, args: &[&str], services: usize, dir: Option<&Path>) -> Gost {
        Self::spawn(bin, args, services, dir, &[], None)
    }

    /// As [`Gost::start`], with `input` on its standard input (closed after it).
    pub fn start_with_stdin(args: &[&str], services: usize, input: &str) -> Gost {
        Self::spawn(&gost_bin(), args, services, None, &[], Some(input))
    }

    fn spawn(
        bin: &Path,
        args: &[&str],
        services: usize,
        dir: Option<&Path>,
        env: &[(&str, &str)],
        input: Option<&str>,
    ) -> Gost {
        Self::spawn_with(bin, args, services, dir, env, input, true)
    }

    /// [`Gost::spawn`]; `dir_is_home` makes `dir` its `HOME` as well, else `HOME` is unset.
    fn spawn_with(
        bin: &Path,
        args: &[&str],
        services: usize,
        dir: Option<&Path>,
        env: &[(&str, &str)],
        input: Option<&str>,
        dir_is_home: bool,
    ) -> Gost {
        let mut command = Command::new(bin);
        command
            .envs(env.iter().copied())
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("GOST_LOGGER_LEVEL", "debug");
        if let Some(dir) = dir {
            command.current_dir(dir);
            // Also its HOME, so that a certificate it generates is kept there (~/.gost) and not
            // in the home of whoever runs the tests.
            if dir_is_home {
                command.env("HOME", dir);
            } else {
                command.env_remove("HOME");
            }
        }
        let mut child = command.spawn().expect("gost starts");
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(input.as_bytes())
                .expect("write gost's standard input");
        }
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    {
                        let mut log = log.lock().unwrap();
                        // Long benchmark runs log a line per tunnel; keep the start, which is
                        // what tests look at, and a bounded amount after it.
                        if log.len() < MAX_KEPT_LOG {
                            log.push_str(&line);
                            log.push('\n');
                        }
                    }
                    // After the line is in the log, so that a started process's log holds
                    // every listening line it was waited for.
                    if let Some(addr) = listening_addr(&line) {
                        let _ = tx.send(addr);
                    }
                }
            });
        }
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut addrs = Vec::new();
        while addrs.len() < services {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(addr) => addrs.push(addr),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    thread::sleep(Duration::from_millis(100));
                    panic!(
                        "gost {args:?} did not report {services} listener(s) in time; log:\n{}",
                        log.lock().unwrap()
                    );
                }
            }
        }
        Gost {
            child,
            log,
            addrs,
            config_dir: None,
        }
    }

    /// The first service's address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every reported listening address, in the order logged (the metrics address, when
    /// there is one, comes before the services').
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The address service `name` reported in its last `listening` line: services start
    /// concurrently, so the order of [`Gost::addrs`] need not be the configuration's.
    pub fn service_addr(&self, name: &str) -> Option<SocketAddr> {
        let log = self.log();
        let service = format!("\"service\":\"{name}\"");
        log.lines()
            .rev()
            .filter(|l| l.contains("\"listening\"") && l.contains(&service))
            .find_map(listening_addr)
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The lines logged so far at `level` (`warn`, `error`, ...), each checked to be a JSON
    /// object with GOST's keys (`time`, `level`, `msg`): a change of the log's shape fails here
    /// instead of making a check for no warnings pass on any log.
    pub fn logged_at(&self, level: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter(|l| {
                let line: serde_json::Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {l}"));
                assert!(
                    line["time"].is_string() && line["msg"].is_string(),
                    "a log line without GOST's keys: {l}"
                );
                line["level"].as_str() == Some(level)
            })
            .map(str::to_string)
            .collect()
    }

    /// Waits up to [`LOG_DEADLINE`] until the log contains `needle`; panics naming it, with
    /// the log. For lines that trail what a client sees, such as a tunnel's, which is written
    /// as the tunnel is torn down.
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + LOG_DEADLINE;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log within {LOG_DEADLINE:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits up to `timeout` for the process to exit; its exit code, or `None` if it is still
    /// running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Gost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in a `listening` log line (JSON or text format).
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("listening") {
        return None;
    }
    let start = line
        .find("\"addr\":\"")
        .map(|i| i + 8)
        .or_else(|| line.find("addr=").map(|i| i + 5))?;
    let rest = &line[start..];
    let end = rest.find(['"', ' ', ',']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// A loopback address with `port`, as a `host:port` string for command lines.
pub fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// A loopback port that was free a moment ago, for a process that must be given its port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP server on 127.0.0.1 serving each connection with `serve` in its own thread, until
/// dropped.
pub struct Target {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Target {
    /// Starts a server running `serve` per connection.
    pub fn start(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind target");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let serve = Arc::new(serve);
        {
            let stop = stop.clone();
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
                    let serve = serve.clone();
                    thread::spawn(move || serve(stream));
                }
            });
        }
        Target { addr, stop }
    }

    /// Echoes every byte back and half-closes after the client does.
    pub fn echo() -> Target {
        Target::start(|mut stream| {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = stream.shutdown(Shutdown::Write);
        })
    }

    /// An HTTP proxy that answers the first request head it reads with `200` only after
    /// `delay`, then echoes: a node slow to answer CONNECT.
    pub fn slow_http_proxy(delay: Duration) -> Target {
        Target::start(move |mut stream| {
            let mut head = [0u8; 1024];
            let _ = stream.read(&mut head);
            thread::sleep(delay);
            let _ = stream.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut buf = [0u8; 1024];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 || stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        })
    }

    /// A minimal HTTP/1.1 server: `GET /bytes/N` answers N bytes of [`pattern`], anything else
    /// answers `hello from target` with the request line echoed in an `X-Request-Line` header
    /// and the received headers in the body after the greeting.
    pub fn http() -> Target {
        Target::start(|stream| {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut stream = stream;
            loop {
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                    return;
                }
                let mut headers = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                    headers.push_str(&line);
                }
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .to_string();
                let close = headers.to_ascii_lowercase().contains("connection: close");
                let result = if let Some(n) = path.strip_prefix("/bytes/") {
                    let n: usize = n.parse().unwrap_or(0);
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nContent-Type: application/octet-stream\r\n\r\n"
                    );
                    stream
                        .write_all(head.as_bytes())
                        .and_then(|_| write_pattern(&mut stream, n))
                } else {
                    let body = format!("hello from target\n{headers}");
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Request-Line: {}\r\nContent-Type: text/plain\r\n\r\n",
                        body.len(),
                        request_line.trim()
                    );
                    stream
                        .write_all(head.as_bytes())
                        .and_then(|_| stream.write_all(body.as_bytes()))
                };
                if result.is_err() || close {
                    return;
                }
            }
        })
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Byte `i` of the deterministic test pattern.
pub fn pattern_byte(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 13)) as u8
}

/// Writes the first `n` bytes of the test pattern.
pub fn write_pattern(w: &mut impl Write, n: usize) -> std::io::Result<()> {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut written = 0;
    while written < n {
        let len = chunk.len().min(n - written);
        for (j, b) in chunk[..len].iter_mut().enumerate() {
            *b = pattern_byte(written + j);
        }
        w.write_all(&chunk[..len])?;
        written += len;
    }
    Ok(())
}

/// Output of a client command.
#[derive(Debug)]
pub struct Output {
    /// Exit code (`-1` when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error, as text.
    pub stderr: String,
}

impl Output {
    /// Standard output as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs a client command with a time limit; the command is killed when it runs over.
pub fn run(program: &str, args: &[&str]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (is it installed? see README)"));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_thread = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_thread = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + IO_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        thread::sleep(Duration::from_millis(10));
    };
    Output {
        code: status.code().unwrap_or(-1),
        stdout: out_thread.join().unwrap(),
        stderr: err_thread.join().unwrap(),
    }
}

/// `curl` with a time limit and no configuration file, plus `args`.
pub fn curl(args: &[&str]) -> Output {
    let mut all = vec!["-q", "-sS", "--max-time", "20", "--noproxy", ""];
    all.extend_from_slice(args);
    run("curl", &all)
}

/// `curl` with `args`, the body thrown away and the response's status code as the output
/// (`000` when no response came): `curl_status(&["-x", proxy, url]).text() == "200"`.
pub fn curl_status(args: &[&str]) -> Output {
    let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    all.extend_from_slice(args);
    curl(&all)
}

/// Runs a Python script from `e2e/py/` with `args`.
pub fn python(script: &str, args: &[&str]) -> Output {
    let path = workspace_root().join("e2e/py").join(script);
    let mut all = vec![path.to_str().unwrap()];
    all.extend_from_slice(args);
    run("python3", &all)
}

/// Runs a Python script from `e2e/py/` and asserts that it succeeded and printed every one of
/// `checks`.
pub fn python_checks(script: &str, args: &[String], checks: &[&str]) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = python(script, &args);
    assert_eq!(
        out.code,
        0,
        "{script} failed:\n{}\n{}",
        out.text(),
        out.stderr
    );
    for check in checks {
        assert!(
            out.text().contains(check),
            "{script}: missing {check:?} in\n{}",
            out.text()
        );
    }
}

/// A directory for one test's files, removed with them when it goes out of scope (a failing
/// test's too, as its panic unwinds), so that test runs do not pile up directories in the
/// system's temporary directory. `GOST_E2E_KEEP_TMP=1` keeps them, to look at after a failure.
pub struct TempDir(tempfile::TempDir);

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

/// A new, empty directory for one test's files; see [`TempDir`].
pub fn tempdir() -> TempDir {
    let keep = std::env::var_os("GOST_E2E_KEEP_TMP").is_some_and(|v| v == "1");
    TempDir(
        tempfile::Builder::new()
            .prefix("gost-e2e-")
            .disable_cleanup(keep)
            .tempdir()
            .expect("temp dir"),
    )
}

/// Opens a tunnel through an HTTP proxy with a raw CONNECT; returns the stream after the
/// proxy's `200`, or the proxy's status line.
pub fn http_connect(
    proxy: SocketAddr,
    target: &str,
    credentials: Option<&str>,
) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect_timeout(&proxy, IO_TIMEOUT).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let auth = credentials
        .map(|c| format!("Proxy-Authorization: Basic {}\r\n", base64(c.as_bytes())))
        .unwrap_or_default();
    write!(
        stream,
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n"
    )
    .map_err(|e| e.to_string())?;
    let head = read_head(&mut stream).map_err(|e| e.to_string())?;
    if head.starts_with("HTTP/1.1 200") {
        Ok(stream)
    } else {
        Err(head)
    }
}

/// Reads an HTTP head byte by byte (so no tunnel byte is consumed), up to 64 KiB.
pub fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Standard base64, for Basic credentials.
pub fn base64(input: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(input)
}

/// Sends `len` pattern bytes through `stream` to an echo target and checks that exactly the
/// same bytes come back.
pub fn echo_round_trip(stream: TcpStream, len: usize) {
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        write_pattern(&mut writer, len).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut reader = stream;
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0usize;
    loop {
        let n = reader.read(&mut buf).expect("read from tunnel");
        if n == 0 {
            break;
        }
        for (j, b) in buf[..n].iter().enumerate() {
            assert_eq!(
                *b,
                pattern_byte(received + j),
                "byte {} differs",
                received + j
            );
        }
        received += n;
    }
    sender.join().unwrap();
    assert_eq!(received, len, "echo returned {received} of {len} bytes");
}

/// The samples of a Prometheus scrape of `url` (optionally with `user:pass`), parsed by the
/// official Python client's text-format parser and printed one per line by
/// `e2e/py/scrape_metrics.py`.
pub fn scrape_metrics(url: &str, credentials: Option<&str>) -> String {
    let mut args = vec![url];
    args.extend(credentials);
    let out = python("scrape_metrics.py", &args);
    assert_eq!(
        out.code,
        0,
        "scrape failed:\n{}\n{}",
        out.text(),
        out.stderr
    );
    out.text()
}

/// The value of the first sample of a [`scrape_metrics`] output whose line starts with `prefix`.
pub fn metric_sample(scrape: &str, prefix: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// What a GOST v2 client writes in `Gost-Target` to hide `name`: unpadded URL-safe base64 of
/// the name's CRC-32 (big-endian) and the name in the same base64 (spec §4.1), computed here
/// with Python's `zlib` and `base64`.
pub fn gost_v2_hidden_target(name: &str) -> String {
    let out = run(
        "python3",
        &[
            "-c",
            "import base64, sys, zlib\n\
         n = sys.argv[1].encode()\n\
         inner = base64.urlsafe_b64encode(n).rstrip(b'=')\n\
         print(base64.urlsafe_b64encode(zlib.crc32(n).to_bytes(4, 'big') + inner).rstrip(b'=').decode())",
            name,
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.text().trim().to_string()
}

/// A raw SOCKS5 CONNECT through `proxy` to `target` (an IPv4 address) offering `methods`:
/// the stream, the method the proxy chose and the reply code (0 for success).
pub fn socks5_connect_raw(
    proxy: SocketAddr,
    methods: &[u8],
    target: SocketAddr,
) -> (TcpStream, u8, u8) {
    let std::net::IpAddr::V4(ip) = target.ip() else {
        panic!("an IPv4 target, not {target}");
    };
    let mut stream = TcpStream::connect(proxy).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut greeting = vec![5, methods.len() as u8];
    greeting.extend_from_slice(methods);
    stream.write_all(&greeting).unwrap();
    let mut method = [0u8; 2];
    stream.read_exact(&mut method).unwrap();
    let mut request = vec![5, 1, 0, 1];
    request.extend_from_slice(&ip.octets());
    request.extend_from_slice(&target.port().to_be_bytes());
    stream.write_all(&request).unwrap();
    let mut reply = [0u8; 10];
    stream.read_exact(&mut reply).unwrap();
    (stream, method[1], reply[1])
}
