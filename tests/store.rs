//! A store that cannot write (its filesystem full): what needs a write is refused with an
//! error answer, never a 200 with a log line; once there is room again it is accepted.
//! Real Prosody and SIPp; the store on a small tmpfs the test mounts (tests run as root).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const SECS10: Duration = Duration::from_secs(10);

/// A tmpfs of `size` mounted at `path` for the test's lifetime.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount");
        assert!(status.success(), "cannot mount a tmpfs at {path:?} (root?)");
        Tmpfs(path.to_path_buf())
    }

    /// Writes a file until the filesystem is full (ENOSPC); returns it.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("fill");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = [0u8; 4096];
        // Bounded: the tmpfs is far smaller than 64 MiB.
        for _ in 0..16384 {
            if f.write_all(&chunk).and_then(|_| f.sync_all()).is_err() {
                return path;
            }
        }
        panic!("the tmpfs at {:?} never filled up", self.0);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn subscribe(from_user: &str, expect: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="subscribe">
  <send retrans="500">
    <![CDATA[
SUBSCRIBE sip:juliet@localhost SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
From: <sip:{from_user}@sip.test>;tag=[pid]SIPpTag00[call_number]
To: <sip:juliet@localhost>
Call-ID: [call_id]
CSeq: 1 SUBSCRIBE
Contact: <sip:{from_user}@[local_ip]:[local_port]>
Event: presence
Accept: application/pidf+xml
Expires: 600
Content-Length: 0

]]>
  </send>
{expect}
</scenario>
"#
    )
}

/// The store is full: 503, its reason phrase and Retry-After.
const REFUSED: &str = r#"  <recv response="503">
    <action>
      <ereg regexp="503 Cannot store the subscription" search_in="msg" check_it="true" assign_to="reason" />
      <ereg regexp="[0-9]+" search_in="hdr" header="Retry-After:" check_it="true" assign_to="retry" />
    </action>
  </recv>
  <Reference variables="reason,retry" />"#;

/// Accepted: 200, then the first NOTIFY (pending: juliet has not approved).
const ACCEPTED: &str = r#"  <recv response="200" />
  <recv request="NOTIFY">
    <action>
      <ereg regexp="pending" search_in="hdr" header="Subscription-State:" check_it="true" assign_to="s1" />
    </action>
  </recv>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]>
  </send>
  <Reference variables="s1" />"#;

#[test]
fn a_full_store_refuses_subscriptions_with_errors_and_accepts_them_again_with_room() {
    let dir = temp_dir();
    let fs = Tmpfs::mount(&dir.path().join("storefs"), "1m");
    let db = fs.0.join("stox.db");
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let sip_port = free_port();
    let stox = Stox::launch(dir.path(), sip_port, None, |d| {
        let text = Stox::config_text(d, prosody.component_port, sip_port, "");
        let default = format!("path = \"{}\"", d.join("stox.db").display());
        assert!(text.contains(&default), "{text}");
        text.replace(&default, &format!("path = \"{}\"", db.display()))
    });
    stox.wait_online(1);
    assert!(db.exists(), "stox keeps its store at {db:?}");
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);
    let target = format!("127.0.0.1:{sip_port}");

    let fill = fs.fill();
    // SIP -> XMPP: the SUBSCRIBE that cannot be stored gets 503, not 200.
    let r = Sipp::run_uac(
        dir.path(),
        "refused",
        &subscribe("tybalt", REFUSED),
        &target,
        &[],
    );
    r.assert_ok();
    stox.wait_log(
        "Cannot save a subscription; the request is refused.",
        1,
        SECS10,
    );
    // XMPP -> SIP: the subscribe that cannot be stored gets a presence error.
    juliet.send_raw("<presence id='s1' to='mercutio\\40sip.test@sip.localhost' type='subscribe'/>");
    let e = juliet.expect_stanza(&["type=\"error\"", "mercutio"], SECS10);
    assert!(e.contains("internal-server-error"), "{e}");
    assert!(e.contains("cannot store the subscription"), "{e}");

    // Room again: accepted, stored, and juliet is asked.
    std::fs::remove_file(fill).unwrap();
    let r = Sipp::run_uac(
        dir.path(),
        "accepted",
        &subscribe("romeo", ACCEPTED),
        &target,
        &[],
    );
    r.assert_ok();
    let ask = juliet.expect_stanza(&["type=\"subscribe\"", "romeo\\40sip.test"], SECS10);
    assert!(
        ask.contains("from=\"romeo\\40sip.test@sip.localhost\""),
        "{ask}"
    );
    // The refused watcher was never put to juliet.
    assert!(
        !juliet.stanzas_seen().iter().any(|s| s.contains("tybalt")),
        "{:?}",
        juliet.stanzas_seen()
    );
    let rows = stox::store::Store::open(&db).unwrap().all().unwrap();
    let remotes: Vec<&str> = rows.iter().map(|r| r.remote.as_str()).collect();
    assert_eq!(remotes, vec!["sip:romeo@sip.test"], "{rows:?}");
}
