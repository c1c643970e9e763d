//! Real peers for stox's interop tests, each started on loopback in a temp dir:
//! Prosody, ejabberd, SIPp, a slixmpp client, TLS SIP peers (rustls, certificates made by
//! the test with rcgen), and the stox binary itself.
//!
//! Nothing here is mocked. A missing peer fails the test with the package to install.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const SECRET: &str = "interop-secret";
pub const COMPONENT: &str = "sip.localhost";

/// Fails the test unless `bin` exists, naming the Debian package that brings it.
pub fn need(bin: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin", "/sbin"] {
        let p = Path::new(dir).join(bin);
        if p.exists() {
            return p;
        }
    }
    panic!("{bin} is not installed: apt-get install {package} (or run .ci/run)");
}

/// A temp dir readable by other users (ejabberd drops to its own user).
pub fn temp_dir() -> tempfile::TempDir {
    let mut d = tempfile::Builder::new()
        .prefix("stox-test-")
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    if std::env::var_os("STOX_KEEP_TEST_DIRS").is_some() {
        eprintln!("test dir kept: {}", d.path().display());
        d.disable_cleanup(true);
    }
    d
}

/// A port free for both TCP and UDP on 127.0.0.1. Ports are handed out from a per-process
/// range offset by the pid so parallel tests and test binaries do not collide.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20000 + (std::process::id() % 400) as u16 * 100;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = base + (n % 100);
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
        assert!(n < 1000, "no free port found");
    }
}

pub fn wait_for_port(port: u16, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within {timeout:?}");
}

/// Waits until `check` holds, polling.
pub fn eventually(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL after a grace period.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

// ----- Prosody -----

pub struct Prosody {
    pub dir: PathBuf,
    pub c2s_port: u16,
    pub component_port: u16,
    config: PathBuf,
    proc: Option<Proc>,
}

impl Prosody {
    /// Writes a self-contained config (the component `sip.localhost`, the host
    /// `localhost`), registers the users and starts Prosody.
    pub fn start(dir: &Path, users: &[(&str, &str)]) -> Prosody {
        let mut p = Prosody::configure(dir, users);
        p.start_again();
        p
    }

    /// Config and users only; `start_again` starts it.
    pub fn configure(dir: &Path, users: &[(&str, &str)]) -> Prosody {
        need("prosody", "prosody");
        let dir = dir.join("prosody");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let c2s_port = free_port();
        let component_port = free_port();
        let config = dir.join("prosody.cfg.lua");
        let d = dir.display();
        std::fs::write(
            &config,
            format!(
                r#"-- written by stox's tests
run_as_root = true
daemonize = false
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
plugin_paths = {{}}
log = {{ {{ levels = {{ min = "debug" }}, to = "file", filename = "{d}/prosody.log" }} }}
modules_enabled = {{ "roster", "saslauth", "disco", "ping", "presence", "private", "version" }}
modules_disabled = {{ "s2s", "tls", "posix" }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s_port} }}
component_ports = {{ {component_port} }}
component_interfaces = {{ "127.0.0.1" }}
network_settings = {{ nagle = false }}
http_ports = {{}}
https_ports = {{}}
VirtualHost "localhost"
-- A domain the gateway does not serve (xmpp.domains has only localhost).
VirtualHost "other.localhost"
Component "{COMPONENT}"
    component_secret = "{SECRET}"
"#
            ),
        )
        .unwrap();
        for (user, password) in users {
            let (user, host) = user.split_once('@').unwrap_or((user, "localhost"));
            let out = Command::new("prosodyctl")
                .arg("--config")
                .arg(&config)
                .args(["register", user, host, password])
                .output()
                .expect("prosodyctl");
            assert!(
                out.status.success(),
                "prosodyctl register {user}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Prosody {
            dir,
            c2s_port,
            component_port,
            config,
            proc: None,
        }
    }

    pub fn start_again(&mut self) {
        let log = std::fs::File::create(self.dir.join("prosody.stdout")).unwrap();
        let proc = Proc::spawn(
            "prosody",
            Command::new("prosody")
                .arg("-F")
                .arg("--config")
                .arg(&self.config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        );
        self.proc = Some(proc);
        wait_for_port(self.c2s_port, Duration::from_secs(15), "prosody");
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate();
        }
    }

    /// Sends a signal (`STOP`, `CONT`, `KILL`) to Prosody; after `KILL` it is gone.
    pub fn signal(&mut self, sig: &str) {
        if let Some(p) = &mut self.proc {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(p.child.id().to_string())
                .status();
            if sig == "KILL" {
                let _ = p.child.wait();
                self.proc = None;
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prosody.log")).unwrap_or_default()
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        self.stop();
    }
}

// ----- ejabberd -----

pub struct Ejabberd {
    pub dir: PathBuf,
    pub c2s_port: u16,
    pub component_port: u16,
    node: String,
    proc: Option<Proc>,
}

impl Ejabberd {
    pub fn start(dir: &Path, users: &[(&str, &str)]) -> Ejabberd {
        need("ejabberdctl", "ejabberd");
        let dir = dir.join("ejabberd");
        for sub in ["", "db", "log"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let c2s_port = free_port();
        let component_port = free_port();
        let dist_port = free_port();
        let node = format!("stoxtest{}@localhost", std::process::id());
        let d = dir.display();
        std::fs::write(
            dir.join("ejabberd.yml"),
            format!(
                r#"hosts:
  - localhost
loglevel: info
log_rotate_count: 0
certfiles: []
define_macro: {{}}
listen:
  -
    port: {c2s_port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls: false
  -
    port: {component_port}
    ip: "127.0.0.1"
    module: ejabberd_service
    hosts:
      "{COMPONENT}":
        password: "{SECRET}"
auth_method: internal
auth_password_format: plain
s2s_access: none
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
shaper_rules:
  c2s_shaper: none
  max_user_sessions: 10
modules:
  mod_disco: {{}}
  mod_ping: {{}}
  mod_roster: {{}}
  mod_version: {{}}
"#
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("ejabberdctl.cfg"),
            format!(
                "ERLANG_NODE={node}\nINET_DIST_INTERFACE=127.0.0.1\n\
                 ERL_DIST_PORT={dist_port}\nEJABBERD_CONFIG_PATH={d}/ejabberd.yml\n"
            ),
        )
        .unwrap();
        let mut e = Ejabberd {
            dir,
            c2s_port,
            component_port,
            node,
            proc: None,
        };
        let stdout = std::fs::File::create(e.dir.join("ejabberd.stdout")).unwrap();
        e.proc = Some(Proc::spawn(
            "ejabberd",
            e.ctl()
                .arg("foreground")
                .stdin(Stdio::null())
                .stdout(stdout.try_clone().unwrap())
                .stderr(stdout),
        ));
        wait_for_port(c2s_port, Duration::from_secs(60), "ejabberd");
        for (user, password) in users {
            let out = e
                .ctl()
                .args(["register", user, "localhost", password])
                .output()
                .expect("ejabberdctl");
            assert!(
                out.status.success(),
                "ejabberdctl register {user}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        e
    }

    fn ctl(&self) -> Command {
        let d = &self.dir;
        let mut c = Command::new("ejabberdctl");
        c.arg("--config-dir")
            .arg(d)
            .arg("--config")
            .arg(d.join("ejabberd.yml"))
            .arg("--ctl-config")
            .arg(d.join("ejabberdctl.cfg"))
            .arg("--logs")
            .arg(d.join("log"))
            .arg("--spool")
            .arg(d.join("db"))
            .arg("--node")
            .arg(&self.node)
            .env("EJABBERD_BYPASS_WARNINGS", "true");
        c
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log/ejabberd.log")).unwrap_or_default()
            + &std::fs::read_to_string(self.dir.join("ejabberd.stdout")).unwrap_or_default()
    }
}

impl Drop for Ejabberd {
    fn drop(&mut self) {
        let _ = self.ctl().arg("stop").output();
        if let Some(mut p) = self.proc.take() {
            p.terminate();
        }
    }
}

// ----- stox -----

pub struct Stox {
    pub dir: PathBuf,
    pub sip_port: u16,
    /// The `tls:` listener's port, when started with [`Stox::start_tls`].
    pub tls_port: Option<u16>,
    pub config: PathBuf,
    proc: Option<Proc>,
    log: PathBuf,
}

impl Stox {
    /// The config stox gets in the tests; `extra` is appended (e.g. `[sip.routes]`).
    pub fn config_text(dir: &Path, component_port: u16, sip_port: u16, extra: &str) -> String {
        let listen = format!("\"udp:127.0.0.1:{sip_port}\", \"tcp:127.0.0.1:{sip_port}\"");
        Stox::config_text_listen(dir, component_port, &listen, extra)
    }

    /// The same with the `sip.listen` list given (its inside: `"udp:..", "tls:.."`).
    pub fn config_text_listen(
        dir: &Path,
        component_port: u16,
        listen: &str,
        extra: &str,
    ) -> String {
        let db = dir.join("stox.db");
        let db = db.display();
        format!(
            r#"[store]
path = "{db}"

[xmpp]
jid = "{COMPONENT}"
server = "127.0.0.1:{component_port}"
secret = "{SECRET}"
domains = ["localhost"]
reconnect_max_ms = 500

[sip]
listen = [{listen}]
{extra}
"#
        )
    }

    pub fn start(dir: &Path, component_port: u16, extra: &str) -> Stox {
        let sip_port = free_port();
        Stox::launch(dir, sip_port, None, |d| {
            Stox::config_text(d, component_port, sip_port, extra)
        })
    }

    /// Listens on udp, tcp and `tls:127.0.0.1:<tls_port>` with `identity` as its
    /// certificate and `pki`'s CA as the roots it verifies peers with. `extra` goes into
    /// `[sip]` (keys first, then tables such as `[sip.routes]`).
    /// Listens on `listen` (the inside of `sip.listen`, `PORT` standing for the SIP port).
    pub fn start_listen(dir: &Path, component_port: u16, listen: &str, extra: &str) -> Stox {
        let sip_port = free_port();
        let listen = listen.replace("PORT", &sip_port.to_string());
        Stox::launch(dir, sip_port, None, |d| {
            Stox::config_text_listen(d, component_port, &listen, extra)
        })
    }

    pub fn start_tls(
        dir: &Path,
        component_port: u16,
        pki: &TestPki,
        identity: &Leaf,
        extra: &str,
    ) -> Stox {
        let sip_port = free_port();
        let tls_port = free_port();
        Stox::launch(dir, sip_port, Some(tls_port), |dir| {
            let listen = format!(
                "\"udp:127.0.0.1:{sip_port}\", \"tcp:127.0.0.1:{sip_port}\", \"tls:127.0.0.1:{tls_port}\""
            );
            let tls = format!(
                "[sip.tls]\ncertificate = {:?}\nprivate_key = {:?}\nca_file = {:?}\n",
                identity.cert,
                identity.key,
                pki.ca_file(dir)
            );
            Stox::config_text_listen(dir, component_port, &listen, &format!("{extra}\n{tls}"))
        })
    }

    /// Writes the config that `config(stox's dir)` returns and starts stox on it.
    fn launch(
        dir: &Path,
        sip_port: u16,
        tls_port: Option<u16>,
        config: impl FnOnce(&Path) -> String,
    ) -> Stox {
        let dir = dir.join("stox");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("component.toml");
        std::fs::write(&path, config(&dir)).unwrap();
        let mut s = Stox {
            log: dir.join("stox.log"),
            dir,
            sip_port,
            tls_port,
            config: path,
            proc: None,
        };
        s.start_again();
        s
    }

    pub fn start_again(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.proc = Some(Proc::spawn(
            "stox",
            Command::new(env!("CARGO_BIN_EXE_stox"))
                .arg("--config")
                .arg(&self.config)
                .env("RUST_LOG", "stox=debug")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        ));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().expect("stox is running").child.id()
    }

    /// How many descriptors the running process holds open (/proc/PID/fd).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Waits until the log has said `text` `count` times in all.
    pub fn wait_log(&self, text: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().matches(text).count() >= count {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "stox did not log {text:?} {count} time(s) within {timeout:?}; its log:\n{}",
            self.log()
        );
    }

    pub fn wait_online(&self, times: usize) {
        self.wait_log("Component online.", times, Duration::from_secs(20));
    }

    /// SIGTERM (a clean shutdown), waiting for it to end.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate();
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        // The log is kept across the restart; count from here.
        let _ = std::fs::rename(&self.log, self.dir.join("stox.before-kill.log"));
    }
}

impl Drop for Stox {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate();
        }
        if std::thread::panicking() {
            eprintln!("--- stox log ---\n{}", self.log());
        }
    }
}

// ----- Kamailio -----

/// A real Kamailio (Debian `kamailio`) on 127.0.0.1, UDP and TCP on one port, started in
/// the foreground with its pid file and runtime dir in the test's temp dir. The test
/// writes the modules, their parameters and the routing logic; the core settings here
/// keep it on loopback, small (one child per listener) and off DNS.
pub struct Kamailio {
    pub dir: PathBuf,
    pub port: u16,
    proc: Option<Proc>,
    log: PathBuf,
}

impl Kamailio {
    /// `modules` are loaded in order (e.g. "sl", "tm", "auth"); `body` holds the
    /// `modparam`s and `request_route`. `PORT` in `body` stands for the listening port.
    pub fn start(dir: &Path, name: &str, modules: &[&str], body: &str) -> Kamailio {
        let bin = need("kamailio", "kamailio");
        let dir = dir.join(name);
        std::fs::create_dir_all(dir.join("run")).unwrap();
        let port = free_port();
        // No mpath: modules come from the compiled-in path (`kamailio -h`, -L), whatever
        // the architecture.
        let mut cfg = format!(
            "#!KAMAILIO\n# written by stox's tests\n\
             debug=2\nlog_stderror=yes\nchildren=1\ntcp_children=1\n\
             auto_aliases=no\ndns=no\nrev_dns=no\nuse_dns_cache=no\n\
             listen=udp:127.0.0.1:{port}\nlisten=tcp:127.0.0.1:{port}\n"
        );
        for m in modules {
            cfg.push_str(&format!("loadmodule \"{m}.so\"\n"));
        }
        cfg.push_str(&body.replace("PORT", &port.to_string()));
        let config = dir.join("kamailio.cfg");
        std::fs::write(&config, cfg).unwrap();
        let check = Command::new(&bin)
            .arg("-c")
            .arg("-f")
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "kamailio -c refused {}:\n{}",
            config.display(),
            String::from_utf8_lossy(&check.stderr)
        );
        let log = dir.join("kamailio.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(&bin);
        cmd.arg("-f")
            .arg(&config)
            .args(["-DD", "-E", "-m", "32", "-M", "4"])
            .arg("-P")
            .arg(dir.join("kamailio.pid"))
            .arg("-Y")
            .arg(dir.join("run"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        // Its own process group: the children it forks end with it (see Drop).
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let proc = Proc::spawn("kamailio", &mut cmd);
        let k = Kamailio {
            dir,
            port,
            proc: Some(proc),
            log,
        };
        wait_for_port(port, Duration::from_secs(15), "kamailio");
        k
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has said `text` `count` times in all.
    pub fn wait_log(&self, text: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().matches(text).count() >= count {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "kamailio did not log {text:?} {count} time(s) within {timeout:?}; its log:\n{}",
            self.log()
        );
    }

    /// The lines of its log that contain `text`.
    pub fn lines(&self, text: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(text))
            .map(str::to_string)
            .collect()
    }

    /// SIGTERM to its process group (the main process and the children it forked), then
    /// SIGKILL if it has not ended within a few seconds.
    pub fn stop(&mut self) {
        let Some(mut p) = self.proc.take() else {
            return;
        };
        let group = format!("-{}", p.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = p.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        p.kill();
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- kamailio log ---\n{}", self.log());
        }
    }
}

// ----- SIPp -----

pub struct Sipp;

impl Sipp {
    /// SIPp bound to loopback only (its control socket too).
    pub fn command(dir: &Path, name: &str, scenario: &str, port: u16) -> Command {
        need("sipp", "sip-tester");
        let file = dir.join(format!("{name}.xml"));
        std::fs::write(&file, scenario).unwrap();
        let mut c = Command::new("sipp");
        c.current_dir(dir)
            .arg("-sf")
            .arg(&file)
            .args(["-i", "127.0.0.1", "-mi", "127.0.0.1", "-ci", "127.0.0.1"])
            .args(["-p", &port.to_string()])
            .args(["-cp", &free_port().to_string()])
            .args(["-trace_msg", "-message_file"])
            .arg(dir.join(format!("{name}.messages")))
            .args(["-trace_err", "-error_file"])
            .arg(dir.join(format!("{name}.errors")))
            .args(["-nostdin", "-timeout", "30s", "-timeout_error"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    /// Runs a UAC scenario to completion against `target` and returns whether every call
    /// succeeded, with the messages SIPp saw.
    pub fn run_uac(
        dir: &Path,
        name: &str,
        scenario: &str,
        target: &str,
        extra: &[&str],
    ) -> SippResult {
        let port = free_port();
        let out = Sipp::command(dir, name, scenario, port)
            .arg(target)
            .args(["-m", "1"])
            .args(extra)
            .output()
            .expect("sipp");
        SippResult::read(dir, name, out.status.success(), &out.stderr)
    }

    /// Starts a UAC scenario in the background against `target`; `finish` waits for it.
    pub fn spawn_uac(
        dir: &Path,
        name: &str,
        scenario: &str,
        target: &str,
        extra: &[&str],
    ) -> SippUas {
        let port = free_port();
        let proc = Proc::spawn(
            "sipp",
            Sipp::command(dir, name, scenario, port)
                .arg(target)
                .args(["-m", "1"])
                .args(extra),
        );
        SippUas {
            proc,
            dir: dir.to_path_buf(),
            name: name.to_string(),
        }
    }

    /// Starts a UAS scenario in the background on `port`; `finish` waits for it.
    pub fn spawn_uas(dir: &Path, name: &str, scenario: &str, port: u16, calls: usize) -> SippUas {
        let proc = Proc::spawn(
            "sipp",
            Sipp::command(dir, name, scenario, port).args(["-m", &calls.to_string()]),
        );
        // SIPp binds at once; give it a moment so the first request is not lost.
        std::thread::sleep(Duration::from_millis(300));
        SippUas {
            proc,
            dir: dir.to_path_buf(),
            name: name.to_string(),
        }
    }
}

pub struct SippResult {
    pub ok: bool,
    pub messages: String,
    pub errors: String,
}

impl SippResult {
    fn read(dir: &Path, name: &str, ok: bool, stderr: &[u8]) -> SippResult {
        SippResult {
            ok,
            messages: std::fs::read_to_string(dir.join(format!("{name}.messages")))
                .unwrap_or_default(),
            errors: std::fs::read_to_string(dir.join(format!("{name}.errors"))).unwrap_or_default()
                + &String::from_utf8_lossy(stderr),
        }
    }

    pub fn assert_ok(&self) {
        assert!(
            self.ok,
            "SIPp scenario failed:\n{}\n--- messages ---\n{}",
            self.errors, self.messages
        );
    }
}

pub struct SippUas {
    proc: Proc,
    dir: PathBuf,
    name: String,
}

impl SippUas {
    /// Waits for SIPp to end by itself (its `-m` calls done) and returns its result.
    pub fn finish(mut self, timeout: Duration) -> SippResult {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Ok(Some(s)) = self.proc.child.try_wait() {
                break Some(s);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = Vec::new();
        if let Some(mut e) = self.proc.child.stderr.take() {
            if status.is_some() {
                let _ = std::io::Read::read_to_end(&mut e, &mut stderr);
            }
        }
        let ok = status.map(|s| s.success()).unwrap_or(false);
        if status.is_none() {
            stderr.extend_from_slice(b"SIPp UAS did not finish in time");
        }
        SippResult::read(&self.dir, &self.name, ok, &stderr)
    }
}

/// A UAC scenario: one MESSAGE to `[service]@[remote_ip]` style `uri`, expecting `status`.
pub fn message_uac(uri: &str, body: &str, status: u16) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="message">
  <send retrans="500">
    <![CDATA[
MESSAGE {uri} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
From: <sip:romeo@sip.test>;tag=[pid]SIPpTag00[call_number]
To: <{uri}>
Call-ID: [call_id]
CSeq: 1 MESSAGE
Contact: <sip:romeo@[local_ip]:[local_port]>
Content-Type: text/plain;charset=UTF-8
Content-Length: [len]

{body}
]]>
  </send>
  <recv response="{status}" />
</scenario>
"#
    )
}

/// A UAS scenario: receive MESSAGE, answer `status`.
pub fn message_uas(status: u16, reason: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="message-uas">
  <recv request="MESSAGE" />
  <send>
    <![CDATA[
SIP/2.0 {status} {reason}
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]>
  </send>
</scenario>
"#
    )
}

// ----- an XMPP client (slixmpp) -----

pub struct XmppClient {
    proc: Proc,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    pub jid: String,
    seen: Vec<String>,
}

impl XmppClient {
    /// Logs in as `user@localhost` (or `user@host`) through the server's c2s port and waits
    /// for the session.
    pub fn login(user: &str, password: &str, c2s_port: u16) -> XmppClient {
        need("python3", "python3-slixmpp");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/xmpp_client.py");
        let jid = if user.contains('@') {
            format!("{user}/test")
        } else {
            format!("{user}@localhost/test")
        };
        let mut proc = Proc::spawn(
            "slixmpp client",
            Command::new("/usr/bin/python3")
                .arg(&script)
                .arg(&jid)
                .arg(password)
                .arg(c2s_port.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        );
        let stdin = proc.child.stdin.take().unwrap();
        let stdout = proc.child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut c = XmppClient {
            proc,
            stdin,
            lines,
            jid,
            seen: Vec::new(),
        };
        c.expect_line(Duration::from_secs(20), "READY", |l| l.starts_with("READY"));
        c
    }

    fn command(&mut self, json: String) {
        writeln!(self.stdin, "{json}").expect("client stdin");
        self.stdin.flush().unwrap();
        self.expect_line(Duration::from_secs(5), "SENT", |l| l == "SENT");
    }

    pub fn send(&mut self, to: &str, body: &str, thread: Option<&str>, id: &str) {
        let json = format!(
            "{{\"op\":\"send\",\"to\":{},\"body\":{},\"thread\":{},\"id\":{}}}",
            json_str(to),
            json_str(body),
            thread.map(json_str).unwrap_or_else(|| "null".into()),
            json_str(id)
        );
        self.command(json);
    }

    pub fn send_raw(&mut self, xml: &str) {
        self.command(format!("{{\"op\":\"raw\",\"xml\":{}}}", json_str(xml)));
    }

    fn expect_line(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if pred(&l) => return l,
                Ok(l) => {
                    if let Some(s) = l.strip_prefix("STANZA ") {
                        self.seen.push(s.to_string());
                    }
                }
                Err(_) => panic!(
                    "{}: no {what} within {timeout:?}; stanzas seen: {:#?}",
                    self.jid, self.seen
                ),
            }
        }
    }

    /// Waits for a stanza that contains every one of `needles` and returns it.
    pub fn expect_stanza(&mut self, needles: &[&str], timeout: Duration) -> String {
        if let Some(i) = self
            .seen
            .iter()
            .position(|s| needles.iter().all(|n| s.contains(n)))
        {
            return self.seen.remove(i);
        }
        let what = format!("a stanza with {needles:?}");
        let line = self.expect_line(timeout, &what, |l| {
            l.starts_with("STANZA ") && needles.iter().all(|n| l.contains(n))
        });
        line["STANZA ".len()..].to_string()
    }

    pub fn stanzas_seen(&self) -> &[String] {
        &self.seen
    }
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

// ----- raw SIP on loopback -----

/// Sends `request` over UDP to 127.0.0.1:`port` and returns the first response.
pub fn udp_exchange(port: u16, request: &str) -> String {
    udp_exchange_at("127.0.0.1", port, request)
}

/// The same to `ip` (e.g. "::1").
pub fn udp_exchange_at(ip: &str, port: u16, request: &str) -> String {
    let ip: std::net::IpAddr = ip.parse().unwrap();
    let sock = UdpSocket::bind((ip, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let request = request.replace("LOCAL", &sock.local_addr().unwrap().to_string());
    sock.send_to(request.as_bytes(), (ip, port)).unwrap();
    let mut buf = [0u8; 65536];
    let (n, _) = sock
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no answer to:\n{request}\n({e})"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// A SIP request with the mandatory headers; `LOCAL` stands for the sender's address.
pub fn sip_request(method: &str, uri: &str, transport: &str, extra: &str, body: &str) -> String {
    format!(
        "{method} {uri} SIP/2.0\r\n\
         Via: SIP/2.0/{transport} LOCAL;branch=z9hG4bK{branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:romeo@sip.test>;tag=r1\r\n\
         To: <{uri}>\r\n\
         Call-ID: {branch}@sip.test\r\n\
         CSeq: 1 {method}\r\n\
         {extra}Content-Length: {}\r\n\r\n{body}",
        body.len(),
        branch = random_branch(),
    )
}

fn random_branch() -> String {
    static N: AtomicU16 = AtomicU16::new(0);
    format!(
        "{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The status line of a response.
pub fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

// ----- TLS: certificates and SIP peers -----

/// A CA made by the test, and leaves it signs.
pub struct TestPki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// One leaf's PEM files: `cert` (the leaf, then the CA) and `key`.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestPki {
    pub fn new() -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "stox interop test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        TestPki { ca }
    }

    /// Writes the CA certificate to `dir/ca.pem`.
    pub fn ca_file(&self, dir: &Path) -> PathBuf {
        let p = dir.join("ca.pem");
        std::fs::write(&p, self.ca.pem()).unwrap();
        p
    }

    /// A leaf for `names` (DNS names and IP addresses), as `dir/<file>.pem` and `.key`.
    pub fn leaf(&self, dir: &Path, file: &str, names: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.ca)
            .unwrap();
        let leaf = Leaf {
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}.key")),
        };
        std::fs::write(&leaf.cert, cert.pem() + &self.ca.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }

    /// What a TLS client verifying against this CA connects with.
    pub fn client_config(&self) -> std::sync::Arc<rustls::ClientConfig> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        std::sync::Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(self.roots())
                .with_no_client_auth(),
        )
    }
}

fn server_config(leaf: &Leaf) -> std::sync::Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(&leaf.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    )
}

/// Reads one SIP message framed by Content-Length (after any CRLF keep-alives); `None` on
/// EOF or a read error.
pub fn read_sip_message(r: &mut impl std::io::Read, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        let start = buf
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        if start > 0 && start == buf.len() {
            buf.clear();
        }
        let head_end = buf[start..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + start);
        if let Some(end) = head_end {
            let head = String::from_utf8_lossy(&buf[start..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    let name = name.trim();
                    (name.eq_ignore_ascii_case("content-length") || name == "l")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let msg: Vec<u8> = buf.drain(..end + 4 + len).skip(start).collect();
                return Some(String::from_utf8_lossy(&msg).into_owned());
            }
        }
        let mut chunk = [0u8; 8192];
        match r.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A SIP client on one TLS connection to 127.0.0.1 (blocking rustls).
pub struct TlsSipClient {
    pub stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl TlsSipClient {
    /// Connects and completes the handshake, verifying the server as `name`.
    pub fn connect(port: u16, pki: &TestPki, name: &str) -> TlsSipClient {
        let tcp = TcpStream::connect(("127.0.0.1", port)).expect("TCP connect to stox");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let conn = rustls::ClientConnection::new(pki.client_config(), name).unwrap();
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .expect("TLS handshake with stox");
        }
        TlsSipClient {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn local_addr(&self) -> String {
        self.stream.sock.local_addr().unwrap().to_string()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
        self.stream.flush().unwrap();
    }

    /// The next SIP message on the connection; `None` once it is closed.
    pub fn read_message(&mut self) -> Option<String> {
        read_sip_message(&mut self.stream, &mut self.buf)
    }

    /// Raw bytes as they come (e.g. a keep-alive pong); empty once the connection is closed.
    pub fn read_raw(&mut self) -> Vec<u8> {
        if !self.buf.is_empty() {
            return std::mem::take(&mut self.buf);
        }
        let mut chunk = [0u8; 8192];
        match std::io::Read::read(&mut self.stream, &mut chunk) {
            Ok(n) => chunk[..n].to_vec(),
            Err(_) => Vec::new(),
        }
    }
}

/// What a [`TlsUas`] saw.
#[derive(Debug, Clone)]
pub enum UasEvent {
    /// A request it answered 200.
    Request(String),
    /// A connection whose handshake failed, with rustls' reason.
    HandshakeFailed(String),
}

/// A TLS SIP UAS on 127.0.0.1: answers every request 200 on the connection it came on.
pub struct TlsUas {
    pub port: u16,
    events: mpsc::Receiver<UasEvent>,
    connections: std::sync::Arc<AtomicU16>,
}

impl TlsUas {
    pub fn spawn(identity: &Leaf) -> TlsUas {
        let config = server_config(identity);
        // Port 0: a port picked by free_port() and bound later can be taken by a parallel
        // test in between (seen as "address already in use").
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, events) = mpsc::channel();
        let connections = std::sync::Arc::new(AtomicU16::new(0));
        let counter = connections.clone();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { return };
                counter.fetch_add(1, Ordering::Relaxed);
                let config = config.clone();
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut stream = rustls::StreamOwned::new(conn, tcp);
                    while stream.conn.is_handshaking() {
                        if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
                            let _ = tx.send(UasEvent::HandshakeFailed(e.to_string()));
                            return;
                        }
                    }
                    let mut buf = Vec::new();
                    while let Some(request) = read_sip_message(&mut stream, &mut buf) {
                        let response = ok_response(&request);
                        if tx.send(UasEvent::Request(request)).is_err() {
                            return;
                        }
                        if stream.write_all(response.as_bytes()).is_err() {
                            return;
                        }
                        let _ = stream.flush();
                    }
                });
            }
        });
        TlsUas {
            port,
            events,
            connections,
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u16 {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn next_event(&self, timeout: Duration) -> Option<UasEvent> {
        self.events.recv_timeout(timeout).ok()
    }
}

/// `200 OK` for `request`, with its Via, From, To (tagged), Call-ID and CSeq.
pub fn ok_response(request: &str) -> String {
    let mut r = String::from("SIP/2.0 200 OK\r\n");
    for line in request.split("\r\n").skip(1) {
        if line.is_empty() {
            break;
        }
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match name.as_str() {
            "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq" => {
                r.push_str(line);
                r.push_str("\r\n");
            }
            "to" | "t" => {
                r.push_str(line);
                if !line.contains("tag=") {
                    r.push_str(";tag=uas1");
                }
                r.push_str("\r\n");
            }
            _ => {}
        }
    }
    r.push_str("Content-Length: 0\r\n\r\n");
    r
}

// ----- dnsmasq -----

/// A dnsmasq on 127.0.0.1 at a free port serving only the given records (its
/// `--srv-host=`, `--host-record=`, `--naptr-record=` options), killed when dropped.
pub struct Dnsmasq {
    pub port: u16,
    proc: Proc,
}

impl Dnsmasq {
    pub fn start(dir: &Path, domain: &str, records: &[String]) -> Dnsmasq {
        let bin = need("dnsmasq", "dnsmasq");
        let port = free_port();
        let log = std::fs::File::create(dir.join("dnsmasq.log")).unwrap();
        let proc = Proc::spawn(
            "dnsmasq",
            Command::new(bin)
                .args([
                    "--no-resolv",
                    "--no-hosts",
                    "--no-daemon",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--conf-file=/dev/null",
                    "--user=root",
                    "--group=root",
                    "--log-queries",
                ])
                .arg(format!("--local=/{domain}/"))
                .arg(format!("--port={port}"))
                .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
                .args(records)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        );
        wait_for_port(port, Duration::from_secs(5), "dnsmasq");
        Dnsmasq { port, proc }
    }

    pub fn nameserver(&self) -> String {
        let _ = &self.proc;
        format!("127.0.0.1:{}", self.port)
    }
}
