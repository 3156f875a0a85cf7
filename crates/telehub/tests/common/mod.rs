//! Shared end-to-end harness: spawns the built `telehub` binary on a free port with its own
//! temp data dir, reads the bound port from its JSON log, stops it by PID (SIGTERM), and
//! runs other programs (mosquitto, python) with bounded waits and kill-on-drop guards.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use tokio::time::Instant;

/// The binary under test, built by cargo for this test run.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_telehub");

/// Upper bound for anything a test waits for. Never a speed assertion: only a bound that
/// keeps a broken build from hanging the suite.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// The admin token every test hub accepts (`TELEHUB_ADMIN_TOKEN`).
pub(crate) const ADMIN_TOKEN: &str = "e2e-admin-token-not-secret-0123456789";

/// A `telehub` command with a predictable environment: no `TELEHUB_*` variables leaking in
/// from the developer's shell but [`ADMIN_TOKEN`] as `TELEHUB_ADMIN_TOKEN`, and `info`
/// logging (the start-up line is at `info`).
pub(crate) fn telehub_command() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TELEHUB_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("RUST_LOG", "info").env("TELEHUB_ADMIN_TOKEN", ADMIN_TOKEN);
    cmd
}

/// Lines read from one pipe of a child, shared with the thread that reads them.
#[derive(Clone, Default)]
pub(crate) struct Lines {
    state: Arc<(Mutex<LinesState>, Condvar)>,
}

#[derive(Default)]
struct LinesState {
    lines: Vec<String>,
    eof: bool,
}

impl Lines {
    /// Starts a thread that reads `pipe` line by line until EOF.
    fn read_from(pipe: impl Read + Send + 'static) -> (Self, thread::JoinHandle<()>) {
        let lines = Self::default();
        let shared = lines.clone();
        let handle = thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_owned();
                        let (lock, cvar) = &*shared.state;
                        lock.lock().unwrap().lines.push(line);
                        cvar.notify_all();
                    }
                }
            }
            let (lock, cvar) = &*shared.state;
            lock.lock().unwrap().eof = true;
            cvar.notify_all();
        });
        (lines, handle)
    }

    /// Every line read so far.
    pub(crate) fn snapshot(&self) -> Vec<String> {
        self.state.0.lock().unwrap().lines.clone()
    }

    /// Waits up to `timeout` until every line read so far satisfies `pred` taken together
    /// (e.g. "at least 300 lines start with `acked`"). False when the pipe closed or the
    /// time ran out first.
    pub(crate) fn wait_until(&self, timeout: Duration, mut pred: impl FnMut(&[String]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.state;
        let mut state = lock.lock().unwrap();
        loop {
            if pred(&state.lines) {
                return true;
            }
            let now = Instant::now();
            if state.eof || now >= deadline {
                return false;
            }
            state = cvar.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    /// The first line (from the start) matching `pred`, waiting up to `timeout` for it.
    /// `None` when the pipe closed or the time ran out without one.
    pub(crate) fn wait_for(&self, timeout: Duration, mut pred: impl FnMut(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.state;
        let mut state = lock.lock().unwrap();
        loop {
            if let Some(line) = state.lines.iter().find(|l| pred(l)) {
                return Some(line.clone());
            }
            let now = Instant::now();
            if state.eof || now >= deadline {
                return None;
            }
            state = cvar.wait_timeout(state, deadline - now).unwrap().0;
        }
    }
}

/// What a finished process left behind.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: Vec<String>,
    pub(crate) stderr: Vec<String>,
}

impl Finished {
    pub(crate) fn stdout_text(&self) -> String {
        self.stdout.join("\n")
    }

    pub(crate) fn stderr_text(&self) -> String {
        self.stderr.join("\n")
    }
}

/// A child process with its stdout and stderr collected line by line. Dropping it kills
/// (SIGKILL) and reaps the process if it is still running, so a failing test never leaves
/// it behind.
pub(crate) struct Proc {
    name: String,
    child: Child,
    exited: Option<ExitStatus>,
    stdout: Lines,
    stderr: Lines,
    readers: Vec<thread::JoinHandle<()>>,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and stdout/stderr piped. Panics when it cannot start.
    pub(crate) fn spawn(cmd: &mut Command) -> Self {
        let name = format!(
            "{} {}",
            cmd.get_program().to_string_lossy(),
            cmd.get_args().map(OsStr::to_string_lossy).collect::<Vec<_>>().join(" ")
        );
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{name}`: {e}"));
        let (stdout, out_reader) = Lines::read_from(child.stdout.take().expect("stdout is piped"));
        let (stderr, err_reader) = Lines::read_from(child.stderr.take().expect("stderr is piped"));
        Self { name, child, exited: None, stdout, stderr, readers: vec![out_reader, err_reader] }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn stdout(&self) -> &Lines {
        &self.stdout
    }

    pub(crate) fn stderr(&self) -> &Lines {
        &self.stderr
    }

    /// The first stdout line matching `pred`; panics with everything the process printed
    /// when none shows up within [`TIMEOUT`].
    pub(crate) fn expect_stdout(&self, what: &str, pred: impl FnMut(&str) -> bool) -> String {
        self.stdout.wait_for(TIMEOUT, pred).unwrap_or_else(|| panic!("{}", self.report(what)))
    }

    /// The first stderr line matching `pred`, as [`Proc::expect_stdout`].
    pub(crate) fn expect_stderr(&self, what: &str, pred: impl FnMut(&str) -> bool) -> String {
        self.stderr.wait_for(TIMEOUT, pred).unwrap_or_else(|| panic!("{}", self.report(what)))
    }

    /// A panic message: what was awaited and what the process printed.
    pub(crate) fn report(&self, what: &str) -> String {
        format!(
            "`{}`: {what} did not happen within {TIMEOUT:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.name,
            self.stdout.snapshot().join("\n"),
            self.stderr.snapshot().join("\n"),
        )
    }

    /// Whether the process has exited (reaping it if so).
    pub(crate) fn has_exited(&mut self) -> bool {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited.is_some()
    }

    /// Sends `signal` (e.g. "TERM", "INT", "KILL") to the process by its PID. Panics if the
    /// process already exited (its PID may belong to someone else by now).
    pub(crate) fn signal(&mut self, signal: &str) {
        assert!(!self.has_exited(), "`{}` exited before SIG{signal}: {:?}", self.name, self.exited);
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed: {status}", self.pid());
    }

    /// Waits up to `timeout` for the process to exit on its own; kills it and panics if it
    /// does not. Returns its status and everything it printed.
    ///
    /// Blocks the calling thread: from an async test, call it through `spawn_blocking`.
    #[expect(
        clippy::disallowed_methods,
        reason = "polls a child process from a plain thread, never from a runtime worker"
    )]
    pub(crate) fn finish_within(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        while !self.has_exited() {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                self.exited = self.child.wait().ok();
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                panic!("{}", self.report("exit"));
            }
            thread::sleep(Duration::from_millis(20));
        }
        // the pipes close when the process (and anything that inherited them) is gone
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Finished {
            status: self.exited.expect("exited"),
            stdout: self.stdout.snapshot(),
            stderr: self.stderr.snapshot(),
        }
    }

    /// [`Proc::finish_within`] with [`TIMEOUT`].
    pub(crate) fn finish(self) -> Finished {
        self.finish_within(TIMEOUT)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.has_exited() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `cmd` to completion, bounded by [`TIMEOUT`].
pub(crate) fn run(cmd: &mut Command) -> Finished {
    Proc::spawn(cmd).finish()
}

/// The port in telehub's start-up log line (`"mqtt":"127.0.0.1:PORT"`).
pub(crate) fn parse_mqtt_port(line: &str) -> Option<u16> {
    parse_port(line, "mqtt")
}

/// The HTTP port in telehub's start-up log line (`"http":"127.0.0.1:PORT"`).
pub(crate) fn parse_http_port(line: &str) -> Option<u16> {
    parse_port(line, "http")
}

fn parse_port(line: &str, field: &str) -> Option<u16> {
    let key = format!("\"{field}\":\"");
    let rest = &line[line.find(&key)? + key.len()..];
    let addr: SocketAddr = rest[..rest.find('"')?].parse().ok()?;
    Some(addr.port())
}

/// A running `telehub serve` on 127.0.0.1 and a free port, with its own temp data dir.
/// Dropping it kills the process if a test did not stop it.
pub(crate) struct Telehub {
    proc: Proc,
    port: u16,
    http_port: u16,
    data: tempfile::TempDir,
}

impl Telehub {
    /// Starts `telehub serve` with anonymous device access (`--allow-anonymous`, as the
    /// tutorials' devices have no credentials) and waits for its start-up line. The
    /// security tests start their hubs without it.
    pub(crate) fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// As [`Telehub::start`], letting `configure` add flags or environment first.
    pub(crate) fn start_with(configure: impl FnOnce(&mut Command)) -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir"), configure)
    }

    /// As [`Telehub::start_with`], on the data left in `data` by an earlier run (see
    /// [`Telehub::kill9`]), on new ports.
    pub(crate) fn start_in(data: tempfile::TempDir, configure: impl FnOnce(&mut Command)) -> Self {
        Self::launch(data, true, configure)
    }

    /// As [`Telehub::start_in`] without `--allow-anonymous`: secure by default, as a user
    /// runs it.
    pub(crate) fn start_secure_in(data: tempfile::TempDir, configure: impl FnOnce(&mut Command)) -> Self {
        Self::launch(data, false, configure)
    }

    fn launch(data: tempfile::TempDir, anonymous: bool, configure: impl FnOnce(&mut Command)) -> Self {
        let mut cmd = telehub_command();
        cmd.arg("serve").arg("--data-dir").arg(data.path().join("data")).args([
            "--mqtt-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ]);
        if anonymous {
            cmd.arg("--allow-anonymous");
        }
        configure(&mut cmd);
        let proc = Proc::spawn(&mut cmd);
        let line = proc.expect_stderr("the start-up log line with the MQTT and HTTP addresses", |l| {
            l.contains("telehub started") && parse_mqtt_port(l).is_some() && parse_http_port(l).is_some()
        });
        let port = parse_mqtt_port(&line).expect("checked above");
        let http_port = parse_http_port(&line).expect("checked above");
        Self { proc, port, http_port, data }
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub(crate) fn http_port(&self) -> u16 {
        self.http_port
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub(crate) fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// The `--data-dir` given (below the temp dir, created by telehub).
    pub(crate) fn data_dir(&self) -> std::path::PathBuf {
        self.data.path().join("data")
    }

    /// Waits for a log line matching `pred`; panics with the whole log when none comes.
    pub(crate) fn expect_log(&self, what: &str, pred: impl FnMut(&str) -> bool) -> String {
        self.proc.expect_stderr(what, pred)
    }

    /// Every line logged so far.
    pub(crate) fn log_lines(&self) -> Vec<String> {
        self.proc.stderr().snapshot()
    }

    /// Sends `signal` by PID and waits (bounded) for the process to exit.
    pub(crate) fn stop_with(mut self, signal: &str) -> Finished {
        self.proc.signal(signal);
        let Self { proc, data, .. } = self;
        let finished = proc.finish();
        drop(data);
        finished
    }

    /// `kill -9` by PID: no shutdown, no flush, no checkpoint. Waits (bounded) for the
    /// exit and hands back the temp dir holding the data, for [`Telehub::start_in`].
    pub(crate) fn kill9(mut self) -> tempfile::TempDir {
        self.proc.signal("KILL");
        let Self { proc, data, .. } = self;
        let finished = proc.finish();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&finished.status),
            Some(9),
            "telehub did not die of SIGKILL: {:?}",
            finished.status
        );
        data
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub(crate) fn stop(self) -> Finished {
        self.stop_with("TERM")
    }
}

/// A Python 3 that can `import paho.mqtt.client`: `$TELEHUB_TEST_PYTHON` if set, else the
/// Debian `/usr/bin/python3` (where `python3-paho-mqtt` installs), else `python3` on PATH
/// (which may be a pyenv/venv interpreter without paho).
pub(crate) fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("TELEHUB_TEST_PYTHON")
            .map(PathBuf::from)
            .into_iter()
            .chain([PathBuf::from("/usr/bin/python3"), PathBuf::from("python3")])
            .collect();
        for candidate in &candidates {
            let ok = Command::new(candidate)
                .args(["-c", "import paho.mqtt.client"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return candidate.clone();
            }
        }
        panic!(
            "no Python 3 with paho-mqtt among {candidates:?}: install python3-paho-mqtt \
             or point TELEHUB_TEST_PYTHON at an interpreter that has it"
        )
    })
}

/// `python -u tests/python/<name> <args...>` with [`python`].
pub(crate) fn python_script(name: &str) -> Command {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(name);
    let mut cmd = Command::new(python());
    cmd.arg("-u").arg(path);
    cmd
}

/// The PostgreSQL URL of `TELEHUB_TEST_POSTGRES_URL`, or `None` after printing a SKIPPED
/// line for `test` when it is not set. Under `CI` a missing URL fails the test instead:
/// CI always starts `scripts/postgres.sh` (the store conformance suite's convention).
pub(crate) fn postgres_url(test: &str) -> Option<String> {
    let url = std::env::var("TELEHUB_TEST_POSTGRES_URL").ok().filter(|u| !u.is_empty());
    if url.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but TELEHUB_TEST_POSTGRES_URL is not: start PostgreSQL with \
             `eval \"$(bash scripts/postgres.sh start)\"` first"
        );
        eprintln!("SKIPPED {test}: TELEHUB_TEST_POSTGRES_URL is not set (see scripts/postgres.sh)");
    }
    url
}

/// A suffix no other run uses (process id and wall-clock nanoseconds), for device ids in
/// a PostgreSQL database that outlives the test.
pub(crate) fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos();
    format!("{}-{}", std::process::id(), nanos)
}

/// What curl got: the status code, the content type and the body.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) content_type: String,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `curl -sS <args> <url>` (bounded by curl's own `--max-time` and [`TIMEOUT`]). Calls of
/// the admin API (`/api/v1/`) carry [`ADMIN_TOKEN`] unless `args` set an `Authorization`
/// header themselves (`-H "Authorization:"` sends none).
pub(crate) fn curl(url: &str, args: &[&str]) -> Reply {
    let bearer = format!("Authorization: Bearer {ADMIN_TOKEN}");
    let own_auth = args.iter().any(|a| a.to_ascii_lowercase().starts_with("authorization:"));
    let admin: &[&str] = if url.contains("/api/v1/") && !own_auth { &["-H", &bearer] } else { &[] };
    let f = run(Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code} %{content_type}"])
        .args(admin)
        .args(args)
        .arg(url));
    assert!(f.status.success(), "curl {args:?} {url} failed: {:?}\n{}", f.status, f.stderr_text());
    let text = f.stdout_text();
    let (body, trailer) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (status, content_type) = trailer.split_once(' ').unwrap_or((trailer, ""));
    Reply {
        status: status.parse().expect("curl's status code"),
        content_type: content_type.into(),
        body: body.into(),
    }
}

/// Polls `pred` every 50 ms until it holds; panics naming `what` after [`TIMEOUT`].
#[allow(
    clippy::disallowed_methods,
    reason = "a test thread outside any runtime, polling a child process it cannot await"
)]
pub(crate) fn eventually(what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !pred() {
        assert!(Instant::now() < deadline, "{what}: still not so after {TIMEOUT:?}");
        thread::sleep(Duration::from_millis(50));
    }
}
