//! `herald run` as a user starts it, for the benchmarks: this build's binary, the file source on a
//! cluster written as YAML, against a gobgpd; stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::scale;

pub struct HeraldRun {
    child: Child,
    pub log: PathBuf,
    /// The plan API's port on 127.0.0.1.
    pub api_port: u16,
}

impl HeraldRun {
    /// Starts `herald run` (the binary `herald`, a bench's `env!("CARGO_BIN_EXE_herald")`) with the
    /// scale config plus `extra` (YAML), reading `cluster`, pushing into the gobgpd at
    /// `gobgp_address`; its config and log go to `dir`.
    pub fn start(
        herald: &Path,
        dir: &Path,
        cluster: &Path,
        extra: &str,
        gobgp_address: &str,
    ) -> HeraldRun {
        let api_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let config = dir.join("herald.yaml");
        std::fs::write(
            &config,
            format!(
                "{}{extra}source:\n  file: {}\ngobgp:\n  address: {gobgp_address}\napi:\n  listen: 127.0.0.1:{api_port}\n",
                scale::CONFIG,
                cluster.display()
            ),
        )
        .unwrap();
        let log = dir.join("herald.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(herald)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("herald runs");
        HeraldRun {
            child,
            log,
            api_port,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// SIGTERM (herald's own shutdown), then SIGKILL after 10 s.
impl Drop for HeraldRun {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.exited().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat` (`pid` may be
/// `self`); 0 for a process that is gone. Clock ticks are 10 ms on Linux.
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command's closing parenthesis; utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (field(11) + field(12)) / 100.0
}
