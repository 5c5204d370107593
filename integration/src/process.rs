//! herald and heraldctl as the user runs them: the workspace's own binaries, started as processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A binary of this workspace, next to the test executable's profile directory
/// (`target/<profile>/<name>`). The test command builds every binary before it runs the tests.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`)",
        path.display()
    );
    path
}

/// The repository root, for example files.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// A free TCP port on 127.0.0.1 (bound then released; good enough for tests that start at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `program` run through `wrap` (e.g. `ip netns exec NS`), or directly when `wrap` is empty.
fn wrapped(program: &Path, wrap: &[&str]) -> Command {
    match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Writes a config for a plan-only herald (no gobgpd) with the seed lab's ranges, reading `state`
/// and serving its API on `port`; returns its path.
pub fn plan_only_config(dir: &Path, state: &Path, port: u16) -> PathBuf {
    let config = dir.join("herald.yaml");
    std::fs::write(
        &config,
        format!(
            "serviceClusterIPs: [{{cidr: 198.19.32.0/20}}]\nserviceExternalIPs: [{{cidr: 198.19.48.0/20}}]\n\
             source: {{file: {}}}\napi: {{listen: '127.0.0.1:{port}'}}\n",
            state.display()
        ),
    )
    .expect("write herald's config");
    config
}

/// A running `herald run`, killed on drop. Its log goes to a file, printed when a test fails.
pub struct Herald {
    child: Option<Child>,
    pub api: String,
    pub log: PathBuf,
}

impl Herald {
    /// Starts `herald run --config <config>`; `wrap` prefixes the command (e.g. `ip netns exec NS`).
    pub fn start(config: &Path, api_port: u16, log: PathBuf, wrap: &[&str]) -> Result<Herald> {
        Self::start_with_env(config, api_port, log, wrap, &[])
    }

    /// [`start`](Self::start) with environment variables (e.g. a pod's `POD_NAME`).
    pub fn start_with_env(
        config: &Path,
        api_port: u16,
        log: PathBuf,
        wrap: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Herald> {
        let herald = workspace_bin("herald");
        let mut command = wrapped(&herald, wrap);
        let log_file = std::fs::File::create(&log).context("herald log file")?;
        command
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info,herald=debug")
            // Plain lines: tests look for fields (`deferral_s=15`) in the log.
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", herald.display()))?;
        Ok(Herald {
            child: Some(child),
            api: format!("http://127.0.0.1:{api_port}"),
            log,
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Sends a signal (SIGTERM, SIGKILL) and waits for the process to end.
    pub fn stop(&mut self, signal: i32) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, signal) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    bail!("herald did not stop within 10 s of signal {signal}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs heraldctl against `server` (with `wrap`, e.g. inside a namespace) and returns its output.
pub fn heraldctl(server: &str, args: &[&str], wrap: &[&str]) -> Output {
    wrapped(&workspace_bin("heraldctl"), wrap)
        .arg("--server")
        .arg(server)
        .args(args)
        .output()
        .expect("run heraldctl")
}

/// Polls `probe` every 50 ms until it returns `Some`, for at most `timeout`.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
