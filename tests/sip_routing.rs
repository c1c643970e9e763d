//! Where requests go and what happens when they cannot get there: RFC 3263 failover
//! through a real dnsmasq, a timeout that comes back to XMPP as an error, IPv6 listeners.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::*;

const SECS10: Duration = Duration::from_secs(10);

#[test]
fn a_dead_first_srv_target_fails_over_to_the_second() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    // A port nobody listens on: the connection is refused at once.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let live = free_port();
    let dns = Dnsmasq::start(
        dir.path(),
        "far.test",
        &[
            format!("--srv-host=_sip._tcp.far.test,dead.far.test,{dead},10,0"),
            format!("--srv-host=_sip._tcp.far.test,live.far.test,{live},20,0"),
            "--host-record=dead.far.test,127.0.0.1".into(),
            "--host-record=live.far.test,127.0.0.1".into(),
        ],
    );
    let stox = Stox::start(
        dir.path(),
        prosody.component_port,
        // far.test resolves to loopback here, which a JID's domain may reach only
        // inside sip.allowed_destinations (issue 11 item 5).
        &format!(
            "allowed_destinations = [\"127.0.0.0/8\"]\n[dns]\nnameservers = [\"{}\"]\n",
            dns.nameserver()
        ),
    );
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);
    let mut cmd = Sipp::command(dir.path(), "uas", &message_uas(200, "OK"), live);
    let uas = {
        let proc = Proc::spawn("sipp", cmd.args(["-t", "t1", "-m", "1"]));
        std::thread::sleep(Duration::from_millis(300));
        proc
    };
    juliet.send(
        "romeo\\40far.test@sip.localhost",
        "Through the second door",
        None,
        "fo1",
    );
    let messages = dir.path().join("uas.messages");
    eventually(
        Duration::from_secs(15),
        "the MESSAGE at the live target",
        || {
            std::fs::read_to_string(&messages)
                .map(|m| m.contains("Through the second door"))
                .unwrap_or(false)
        },
    );
    drop(uas);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !juliet
            .stanzas_seen()
            .iter()
            .any(|s| s.contains("id=\"fo1\"") && s.contains("type=\"error\"")),
        "{:?}",
        juliet.stanzas_seen()
    );
    let log = stox.log();
    assert!(
        log.contains("trying the next one"),
        "the dead target was tried first:\n{log}"
    );
}

#[test]
fn an_unanswered_message_comes_back_as_remote_server_timeout() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    // Nobody answers on this UDP port; with T1 = 50 ms timer F fires after 3.2 s.
    let silent = free_port();
    let stox = Stox::start(
        dir.path(),
        prosody.component_port,
        &format!(
            "[sip.timers]\nt1_ms = 50\nt2_ms = 400\n[sip.routes]\n\"sip.test\" = \"sip:127.0.0.1:{silent};transport=udp\"\n"
        ),
    );
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);
    juliet.send("romeo\\40sip.test@sip.localhost", "Anyone?", None, "to1");
    let err = juliet.expect_stanza(&["id=\"to1\"", "type=\"error\""], SECS10);
    assert!(err.contains("remote-server-timeout"), "{err}");
    assert!(
        err.contains("Anyone?"),
        "the bounce carries the body: {err}"
    );
}

#[test]
fn stox_serves_an_ipv6_listener() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let stox = Stox::start_listen(
        dir.path(),
        prosody.component_port,
        "\"udp:127.0.0.1:PORT\", \"udp:[::1]:PORT\"",
        "",
    );
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);
    let r = udp_exchange_at(
        "::1",
        stox.sip_port,
        &sip_request(
            "MESSAGE",
            "sip:juliet@localhost",
            "UDP",
            "Content-Type: text/plain\r\n",
            "over six",
        ),
    );
    assert!(status_line(&r).starts_with("SIP/2.0 200"), "{r}");
    assert!(r.contains("Via: SIP/2.0/UDP [::1]:"), "{r}");
    juliet.expect_stanza(&["<body>over six</body>"], SECS10);
}
