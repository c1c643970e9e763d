//! `stox --check-config`: a bad config is one line naming the key, never a panic.

use std::process::Command;

fn check(config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("component.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stox"))
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"
[xmpp]
jid = "sip.localhost"
server = "127.0.0.1:5347"
secret = "s3cret-value"
domains = ["localhost"]
[sip]
listen = ["udp:127.0.0.1:5060"]
"#;

fn assert_one_line_error(config: &str, key: &str) {
    let (code, _, err) = check(config);
    assert_eq!(code, 78, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("stox: ") && err.contains(key),
        "{err} does not name {key}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("s3cret-value"),
        "{err}"
    );
}

#[test]
fn a_good_config_passes() {
    let (code, out, err) = check(GOOD);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": ok"), "{out}");
}

#[test]
fn the_shipped_example_passes() {
    let out = Command::new(env!("CARGO_BIN_EXE_stox"))
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/component.toml"),
            "--check-config",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_configs_name_the_key_in_one_line() {
    assert_one_line_error(
        &GOOD.replace("secret = \"s3cret-value\"\n", ""),
        "xmpp.secret",
    );
    assert_one_line_error(&GOOD.replace("[sip]", "[sip]\nlisten_on = 1"), "listen_on");
    assert_one_line_error(
        &GOOD.replace("udp:127.0.0.1:5060", "udp:1.2.3:5060"),
        "sip.listen[0]",
    );
    assert_one_line_error(&GOOD.replace("\"127.0.0.1:5347\"", "5347"), "xmpp.server");
    assert_one_line_error("[xmpp\njid=", "line");
}

#[test]
fn an_unreadable_file_is_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_stox"))
        .args(["--config", "/nonexistent/stox.toml", "--check-config"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/stox.toml"), "{err}");
}

#[test]
fn tls_config_errors_name_the_key_and_the_file_in_one_line() {
    assert_one_line_error(
        &GOOD.replace("udp:127.0.0.1:5060", "tls:127.0.0.1:5061"),
        "sip.tls.certificate",
    );
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    let with_tls = |cert: &std::path::Path| {
        format!(
            "{}[sip.tls]\ncertificate = {:?}\nprivate_key = {:?}\n",
            GOOD.replace("udp:127.0.0.1:5060", "tls:127.0.0.1:5061"),
            cert,
            dir.path().join("key.pem")
        )
    };
    assert_one_line_error(&with_tls(&garbage), "garbage.pem");
    assert_one_line_error(&with_tls(&dir.path().join("missing.pem")), "missing.pem");
}
