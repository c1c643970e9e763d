//! `[log]`: JSON lines with the usual fields, and no secret in the log at any level: the
//! component secret and handshake through a real Prosody, and a SIP digest exchange
//! (REGISTER challenged by a registrar on loopback), all at trace level.

mod common;

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Proc, Prosody, Stox, SECRET};

const PASSWORD: &str = "sip-digest-pw-7f3a";

fn header(msg: &str, name: &str) -> Option<String> {
    msg.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(|v| v.trim().to_string())
}

/// A registrar that challenges the first REGISTER with 401 and takes the second; sends
/// the Authorization header it got.
fn registrar(sock: UdpSocket, got: mpsc::Sender<String>) {
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let mut challenged = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let Ok((len, from)) = sock.recv_from(&mut buf) else {
            return;
        };
        let req = String::from_utf8_lossy(&buf[..len]).into_owned();
        if !req.starts_with("REGISTER ") {
            continue;
        }
        let auth = header(&req, "Authorization");
        let status = match (&auth, challenged) {
            (Some(a), _) => {
                let _ = got.send(a.clone());
                "200 OK\r\nContact: <sip:gw@127.0.0.1>;expires=3600".to_string()
            }
            (None, false) => {
                challenged = true;
                "401 Unauthorized\r\nWWW-Authenticate: Digest realm=\"logs.test\", nonce=\"n0nce1\", qop=\"auth\", algorithm=MD5".to_string()
            }
            (None, true) => "401 Unauthorized\r\nWWW-Authenticate: Digest realm=\"logs.test\", nonce=\"n0nce2\", qop=\"auth\", algorithm=MD5".to_string(),
        };
        let mut resp = format!("SIP/2.0 {status}\r\n");
        for name in ["Via", "From", "Call-ID", "CSeq"] {
            resp.push_str(&format!(
                "{name}: {}\r\n",
                header(&req, name).unwrap_or_default()
            ));
        }
        resp.push_str(&format!(
            "To: {};tag=reg\r\nContent-Length: 0\r\n\r\n",
            header(&req, "To").unwrap_or_default()
        ));
        let _ = sock.send_to(resp.as_bytes(), from);
    }
}

fn digest_param(value: &str, name: &str) -> Option<String> {
    value.split(',').find_map(|p| {
        let (k, v) = p.trim().trim_start_matches("Digest ").split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"').to_string())
    })
}

#[test]
fn json_logs_at_trace_level_carry_no_secret() {
    let dir = common::temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let reg = UdpSocket::bind("127.0.0.1:0").unwrap();
    let reg_port = reg.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || registrar(reg, tx));

    let stox_dir = dir.path().join("stox");
    std::fs::create_dir_all(&stox_dir).unwrap();
    let sip_port = common::free_port();
    let extra = format!(
        "[sip.register]\nregistrar = \"sip:127.0.0.1:{reg_port}\"\naor = \"sip:gw@logs.test\"\n\
         [[sip.credentials]]\nrealm = \"logs.test\"\nusername = \"gw\"\npassword = \"{PASSWORD}\"\n\
         [log]\nformat = \"json\"\nlevel = \"trace\"\n"
    );
    let config = stox_dir.join("component.toml");
    std::fs::write(
        &config,
        Stox::config_text(&stox_dir, prosody.component_port, sip_port, &extra),
    )
    .unwrap();
    let log_path = stox_dir.join("stox.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut stox = Proc::spawn(
        "stox",
        Command::new(env!("CARGO_BIN_EXE_stox"))
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    );
    let read = || std::fs::read_to_string(&log_path).unwrap_or_default();
    common::eventually(
        Duration::from_secs(30),
        "stox online and registered",
        || {
            let l = read();
            l.contains("Component online.") && l.contains("Registered.")
        },
    );
    let auth = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the registrar got no Authorization");
    let response = digest_param(&auth, "response").expect("a response= in Authorization");
    assert!(response.len() >= 32, "{auth}");
    stox.terminate();

    let text = read();
    // Trace level was on: the SIP traffic itself is in the log.
    assert!(text.contains("\"level\":\"TRACE\""), "{text}");
    for (what, needle) in [
        ("the component secret", SECRET),
        ("the SIP password", PASSWORD),
        ("the digest response", response.as_str()),
        ("the Authorization header", auth.as_str()),
    ] {
        assert!(
            !text.contains(needle),
            "{what} ({needle}) is in the log:\n{text}"
        );
    }
    // The handshake digest (SHA-1 hex of stream id + secret) goes only in <handshake/>.
    for (i, _) in text.match_indices("<handshake>") {
        let after = &text[i + "<handshake>".len()..];
        assert!(
            after.starts_with('<'),
            "the handshake digest is in the log:\n{text}"
        );
    }

    // JSON: every line one object with level, target and a message or fields.
    let mut lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["target"].is_string(), "{line}");
        assert!(v["fields"].is_object(), "{line}");
        assert!(v["timestamp"].is_string(), "{line}");
        lines += 1;
    }
    assert!(lines > 0);
    let online = text
        .lines()
        .find(|l| l.contains("Component online."))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(online).unwrap();
    assert_eq!(v["fields"]["message"], "Component online.");
    assert_eq!(v["level"], "INFO");
}
