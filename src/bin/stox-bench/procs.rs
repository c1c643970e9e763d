//! Child processes of the bench and what /proc says about them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Nanoseconds since the bench started: the clock both ends of a measurement share.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Kernel clock ticks per second (utime/stime in /proc/<pid>/stat).
pub fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The fields of /proc/<pid>/stat after the command name.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// utime + stime of `pid`, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    stat_fields(pid)
        .and_then(|f| {
            // After the name: state(3) ppid pgrp session tty tpgid flags minflt cminflt
            // majflt cmajflt utime(14) stime(15).
            let u: f64 = f.get(11)?.parse().ok()?;
            let s: f64 = f.get(12)?.parse().ok()?;
            Some((u + s) / clk_tck())
        })
        .unwrap_or(0.0)
}

/// Every process whose process group is `pgid`.
pub fn group_pids(pgid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(f) = stat_fields(pid) {
            if f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// A `kB` line of /proc/<pid>/status (VmRSS, VmHWM).
pub fn status_kb(pid: u32, key: &str) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    s.lines()
        .find_map(|l| {
            let v = l.strip_prefix(key)?.strip_prefix(':')?;
            v.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// Proportional set size (shared pages split among their users), kB.
pub fn pss_kb(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
        return 0;
    };
    s.lines()
        .find_map(|l| {
            l.strip_prefix("Pss:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// What is measured of a process (or a process group) during a run.
#[derive(Clone)]
pub enum Cpu {
    Pid(u32),
    Group(u32),
}

impl Cpu {
    pub fn secs(&self) -> f64 {
        match self {
            Cpu::Pid(p) => cpu_secs(*p),
            Cpu::Group(g) => group_pids(*g).into_iter().map(cpu_secs).sum(),
        }
    }
}

/// A child killed when dropped; `group` children get their own process group, and the
/// whole group is ended (Kamailio forks its workers).
pub struct Proc {
    pub child: Child,
    group: bool,
}

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut Command, group: bool) -> anyhow::Result<Proc> {
        if group {
            std::os::unix::process::CommandExt::process_group(cmd, 0);
        }
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {name}: {e}"))?;
        Ok(Proc { child, group })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM (to the group), SIGKILL after 5 s.
    pub fn stop(&mut self) {
        if !self.alive() {
            return;
        }
        let target = if self.group {
            format!("-{}", self.pid())
        } else {
            self.pid().to_string()
        };
        let _ = Command::new("kill").args(["-TERM", "--", &target]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !self.alive() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.group {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &target])
                .stderr(std::process::Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn need(bin: &str, package: &str) -> anyhow::Result<PathBuf> {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin", "/sbin"] {
        let p = Path::new(dir).join(bin);
        if p.exists() {
            return Ok(p);
        }
    }
    anyhow::bail!("{bin} is not installed: apt-get install {package}")
}

/// A port free for TCP and UDP on 127.0.0.1 (from a range offset by the pid).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 40000 + (std::process::id() % 200) as u16 * 100;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = base + (n % 100);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
        assert!(n < 1000, "no free port");
    }
}

pub fn wait_for_port(port: u16, timeout: Duration, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("{what} did not listen on 127.0.0.1:{port} within {timeout:?}")
}

/// Waits until `file` contains `text` at least `count` times; false on timeout.
pub fn wait_file(file: &Path, text: &str, count: usize, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::fs::read_to_string(file)
            .map(|s| s.matches(text).count() >= count)
            .unwrap_or(false)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}
