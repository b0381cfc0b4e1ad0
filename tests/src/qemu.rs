//! Booting a kernel image through `scripts/qemu-run` (the only place that knows the QEMU
//! command line), with a hard timeout, streaming the console live while capturing it.

use crate::{Error, verdict::RunEnd};
use std::{
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::process::{CommandExt, ExitStatusExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// The hard timeout when neither the caller nor `QEMU_TIMEOUT` sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// What QEMU prints (once) under `-icount sleep=off` when every CPU idles and no virtual
/// timer is armed: virtual time can never advance again, so the guest is stuck for good.
pub const DEADLOCK_WARNING: &str = "icount sleep disabled and no active timers";

/// How long to let the console drain after the deadlock warning before stopping QEMU.
const DEADLOCK_GRACE: Duration = Duration::from_secs(1);

/// Slack beyond scripts/qemu-run's own timeout (which kills QEMU 5 s after SIGTERM) before
/// the harness kills the whole process group itself.
const BACKSTOP_SLACK: Duration = Duration::from_secs(15);

/// One boot of a kernel image.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The kernel ELF.
    pub kernel: PathBuf,
    /// The boot arguments (`-append`).
    pub bootargs: String,
    /// The hard timeout.
    pub timeout: Duration,
    /// Extra environment for scripts/qemu-run (`QEMU_ICOUNT`, `QEMU_TRACE_FILE`, `QEMU`, ...).
    pub env: Vec<(String, String)>,
    /// Copy the console to stdout (and QEMU's stderr to stderr) as it arrives.
    pub echo: bool,
}

impl RunConfig {
    /// A run of `kernel` with `bootargs`, the timeout from `QEMU_TIMEOUT` (or the default),
    /// echoing the console.
    pub fn new(kernel: impl Into<PathBuf>, bootargs: impl Into<String>) -> Self {
        Self {
            kernel: kernel.into(),
            bootargs: bootargs.into(),
            timeout: timeout_from_env(),
            env: Vec::new(),
            echo: true,
        }
    }
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct RunOutput {
    /// The console (QEMU's stdout), lossily decoded.
    pub console: String,
    /// QEMU's stderr (warnings, QEMU's own errors, the timeout message).
    pub stderr: String,
    /// How QEMU ended.
    pub end: RunEnd,
    /// Wall time from spawning scripts/qemu-run to its exit.
    pub elapsed: Duration,
    /// Wall time until the console showed the first test result (boot time plus the first
    /// test), if it did.
    pub first_result: Option<Duration>,
}

/// The timeout from `QEMU_TIMEOUT` (seconds), or [`DEFAULT_TIMEOUT`].
pub fn timeout_from_env() -> Duration {
    std::env::var("QEMU_TIMEOUT")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&s| s > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT)
}

/// Boot `cfg.kernel` with `cfg.bootargs` and wait for QEMU to end.
pub fn run(root: &Path, cfg: &RunConfig) -> Result<RunOutput, Error> {
    let script = root.join("scripts/qemu-run");
    let gdb = std::env::var("GDB").is_ok_and(|v| v == "1")
        || cfg.env.iter().any(|(k, v)| k == "GDB" && v == "1");
    let mut cmd = Command::new(&script);
    cmd.arg(&cfg.kernel)
        .args(cfg.bootargs.split_whitespace())
        .env("QEMU_TIMEOUT", cfg.timeout.as_secs().max(1).to_string())
        .envs(cfg.env.iter().map(|(k, v)| (k, v)))
        // No console input: QEMU must not touch the terminal, and nothing can wake the guest
        // from outside (which makes the deadlock warning conclusive).
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so QEMU (a grandchild) can be killed with the script.
        .process_group(0);

    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("starting {}", script.display()), e))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let echo = cfg.echo;
    let console = thread::spawn(move || pump_stdout(stdout, echo));
    let deadlocked = Arc::new(AtomicBool::new(false));
    let stderr_reader = {
        let deadlocked = Arc::clone(&deadlocked);
        thread::spawn(move || pump_stderr(stderr, echo, &deadlocked))
    };

    let backstop = start + cfg.timeout + BACKSTOP_SLACK;
    let mut deadlock_seen: Option<Instant> = None;
    let end = loop {
        let polled = child
            .try_wait()
            .map_err(|e| Error::io("waiting for QEMU", e))?;
        if let Some(status) = polled {
            break end_of(status, cfg.timeout);
        }
        let now = Instant::now();
        if !gdb && deadlocked.load(Ordering::Relaxed) {
            let seen = *deadlock_seen.get_or_insert(now);
            if now - seen >= DEADLOCK_GRACE {
                kill_group(&mut child)?;
                break RunEnd::Deadlock;
            }
        }
        if !gdb && now >= backstop {
            kill_group(&mut child)?;
            break RunEnd::TimedOut(cfg.timeout);
        }
        thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    let (console, arrivals) = console.join().unwrap_or_default();
    let stderr = stderr_reader.join().unwrap_or_default();
    let console = String::from_utf8_lossy(&console).into_owned();
    // Lossy decoding keeps offsets for valid UTF-8, which the console is in practice.
    let first_result = crate::console::first_result_offset(&console).and_then(|at| {
        arrivals
            .iter()
            .find(|(end, _)| *end > at)
            .map(|&(_, when)| when - start)
    });
    Ok(RunOutput {
        console,
        stderr,
        end,
        elapsed,
        first_result,
    })
}

/// Map scripts/qemu-run's exit status.
fn end_of(status: ExitStatus, timeout: Duration) -> RunEnd {
    match (status.code(), status.signal()) {
        (Some(crate::verdict::status::TIMEOUT), _) => RunEnd::TimedOut(timeout),
        (Some(code), _) => RunEnd::Exited(code),
        (None, Some(sig)) => RunEnd::Signalled(sig),
        (None, None) => RunEnd::Signalled(0),
    }
}

/// Kill scripts/qemu-run's process group (the script, timeout(1) and QEMU) and reap it.
fn kill_group(child: &mut Child) -> Result<(), Error> {
    // std has no killpg; kill(1) with a negative PID signals the group.
    let group = format!("-{}", child.id());
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    child
        .wait()
        .map_err(|e| Error::io("reaping QEMU after killing it", e))?;
    Ok(())
}

/// Copy QEMU's stdout to ours as it arrives (partial lines included) and keep it, with the
/// arrival time of each chunk (its end offset and when it came).
fn pump_stdout(mut from: impl Read, echo: bool) -> (Vec<u8>, Vec<(usize, Instant)>) {
    let mut kept = Vec::new();
    let mut arrivals = Vec::new();
    let mut buf = [0u8; 4096];
    let mut out = io::stdout();
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                arrivals.push((kept.len(), Instant::now()));
                if echo {
                    // A closed stdout must not stop the capture.
                    let _ = out.write_all(&buf[..n]).and_then(|()| out.flush());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    (kept, arrivals)
}

/// Copy QEMU's stderr line by line, keep it, and watch for the deadlock warning.
fn pump_stderr(from: impl Read, echo: bool, deadlocked: &AtomicBool) -> String {
    let mut kept = String::new();
    let mut reader = BufReader::new(from);
    let mut line = Vec::new();
    while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
        let text = String::from_utf8_lossy(&line);
        if text.contains(DEADLOCK_WARNING) {
            deadlocked.store(true, Ordering::Relaxed);
        }
        if echo {
            let _ = io::stderr().write_all(text.as_bytes());
        }
        kept.push_str(&text);
        line.clear();
    }
    kept
}
