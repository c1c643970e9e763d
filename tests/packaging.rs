//! Packaging: the systemd unit's hardening (`systemd-analyze security`), and the Debian
//! package built with cargo-deb, installed with dpkg and checked with `--check-config`.

mod common;

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
