//! Packaging: the systemd unit's hardening (`systemd-analyze security`), and the Debian
//! package built with cargo-deb, installed with dpkg and checked with `--check-config`.

mod common;

use std::path::Path;
use std::process::Command;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/stox.service");

/// The number in `→ Overall exposure level for stox.service: 1.2 OK 🙂`.
fn exposure(output: &str) -> Option<f64> {
    let line = output
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    let (_, rest) = line.split_once(": ")?;
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn the_exposure_line_is_parsed() {
    assert_eq!(
        exposure("x\n→ Overall exposure level for stox.service: 1.2 OK 🙂\n"),
        Some(1.2)
    );
    assert_eq!(
        exposure("→ Overall exposure level for a.service: 9.6 UNSAFE 😨"),
        Some(9.6)
    );
    assert_eq!(exposure("no such line"), None);
}

#[test]
fn the_unit_is_rated_ok_by_systemd_analyze_security() {
    let analyze = common::need("systemd-analyze", "systemd");
    let out = Command::new(analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(UNIT)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let score = exposure(&text)
        .unwrap_or_else(|| panic!("no exposure level in systemd-analyze's output:\n{text}"));
    assert!(
        score <= 2.0,
        "contrib/stox.service is rated {score} (must be 2.0 or lower):\n{text}"
    );
    // The unit runs what the package installs, with the CLI's real flags.
    let unit = std::fs::read_to_string(UNIT).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/stox --config /etc/stox/component.toml"),
        "{unit}"
    );
}

fn run(cmd: &mut Command) -> (bool, String) {
    let what = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// cargo-deb on PATH or in cargo's bin directory.
fn cargo_deb() -> std::path::PathBuf {
    let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(Path::new(&home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("cargo-deb"))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("cargo-deb is not installed: cargo install cargo-deb --locked --version 3.8.0 (or run .ci/run)")
        })
}

fn is_root() -> bool {
    run(Command::new("id").arg("-u")).1.trim() == "0"
}

fn stox_package_installed() -> bool {
    let (_, status) = run(Command::new("dpkg-query").args(["-W", "-f=${Status}", "stox"]));
    status.contains("install ok installed") || status.contains("config-files")
}

fn user_exists(name: &str) -> bool {
    run(Command::new("getent").args(["passwd", name])).0
}

/// Purges the package (and the system user, when the test created it) however the test ends.
struct Installed {
    user_was_there: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run(Command::new("dpkg").args(["--purge", "stox"]));
        if !self.user_was_there && user_exists("stox") {
            let _ = run(Command::new("deluser").args(["--system", "--quiet", "stox"]));
        }
    }
}

// One test: installing the package changes the real system (/usr/bin, /etc/stox, a user),
// so it is built, installed, checked and purged in one place.
#[test]
fn the_debian_package_installs_and_its_config_passes_check_config() {
    assert!(
        is_root(),
        "this test installs a .deb with dpkg and must run as root (as CI does)"
    );
    for (bin, package) in [
        ("dpkg", "dpkg"),
        ("adduser", "adduser"),
        ("deluser", "adduser"),
        ("runuser", "util-linux"),
    ] {
        common::need(bin, package);
    }
    assert!(
        !stox_package_installed(),
        "a stox package is already installed on this machine: the test will not replace it \
         (dpkg --purge stox first)"
    );
    let dir = common::temp_dir();
    let cargo_deb = cargo_deb();
    // --no-build: the debug binary cargo built for this test (CARGO_BIN_EXE_stox), stripped.
    let (ok, text) = run(Command::new(&cargo_deb)
        .arg("deb")
        .args(["--no-build", "--profile", "dev", "--fast", "--output"])
        .arg(dir.path())
        .current_dir(env!("CARGO_MANIFEST_DIR")));
    assert!(ok, "cargo deb failed:\n{text}");
    let deb = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .unwrap_or_else(|| panic!("cargo deb wrote no .deb:\n{text}"));

    let _installed = Installed {
        user_was_there: user_exists("stox"),
    };
    let (ok, text) = run(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(ok, "dpkg -i failed:\n{text}");

    for path in [
        "/usr/bin/stox",
        "/etc/stox/component.toml",
        "/usr/share/doc/stox/component.toml",
    ] {
        assert!(Path::new(path).exists(), "{path} is not installed");
    }
    let unit = [
        "/usr/lib/systemd/system/stox.service",
        "/lib/systemd/system/stox.service",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("the unit stox.service is not installed");
    assert_eq!(
        std::fs::read_to_string(unit).unwrap(),
        std::fs::read_to_string(UNIT).unwrap()
    );
    assert!(user_exists("stox"), "postinst created no stox user");
    // The config holds the component secret: root and the stox group only.
    let (_, owner) = run(Command::new("stat").args(["-c", "%U:%G %a", "/etc/stox/component.toml"]));
    assert_eq!(owner.trim(), "root:stox 640");
    let cfg = std::fs::read_to_string("/etc/stox/component.toml").unwrap();
    assert!(cfg.contains("path = \"/var/lib/stox/stox.db\""), "{cfg}");

    // The config is valid as shipped, and readable by the user the unit runs as.
    let (ok, text) = run(Command::new("/usr/bin/stox").args([
        "--config",
        "/etc/stox/component.toml",
        "--check-config",
    ]));
    assert!(ok, "the packaged config fails --check-config:\n{text}");
    let (ok, text) = run(Command::new("runuser").args([
        "-u",
        "stox",
        "--",
        "/usr/bin/stox",
        "--config",
        "/etc/stox/component.toml",
        "--check-config",
    ]));
    assert!(
        ok,
        "the stox user cannot check the packaged config:\n{text}"
    );

    let (ok, text) = run(Command::new("dpkg").args(["--purge", "stox"]));
    assert!(ok, "dpkg --purge failed:\n{text}");
    assert!(!Path::new("/usr/bin/stox").exists());
    assert!(!Path::new("/etc/stox/component.toml").exists());
    assert!(!stox_package_installed());
}
