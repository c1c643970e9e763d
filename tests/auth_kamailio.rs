//! Digest authentication and registration against a real Kamailio (Debian `kamailio`) on
//! loopback, with a config written by each test: Kamailio as a registrar that challenges
//! REGISTER (SHA-256, qop=auth, nc checked), and as an outbound proxy that challenges
//! MESSAGE with 407 (MD5, `qop="auth,auth-int"`) before relaying it to SIPp.

mod common;

use std::time::{Duration, Instant};

use common::*;

const REGISTRAR_MODULES: &[&str] = &[
    "tm",
    "sl",
    "pv",
    "xlog",
    "maxfwd",
    "textops",
    "auth",
    "usrloc",
    "registrar",
];

/// A registrar for realm stox.test (the To domain) and the one user `stox`, that grants
/// at most 10 s whatever is asked, so refreshes come within a short test.
const REGISTRAR: &str = r#"
modparam("usrloc", "db_mode", 0)
modparam("registrar", "min_expires", 1)
modparam("registrar", "max_expires", 10)
modparam("auth", "qop", "auth")
modparam("auth", "nonce_count", 1)
modparam("auth", "algorithm", "SHA-256")

request_route {
    if (!mf_process_maxfwd_header("10")) { sl_send_reply("483", "Too Many Hops"); exit; }
    if (!is_method("REGISTER")) { sl_send_reply("405", "Method Not Allowed"); exit; }
    if (!t_newtran()) { exit; }
    if (!pv_www_authenticate("$td", "reg-secret", "0")) {
        xlog("L_INFO", "STOXTEST challenge REGISTER cseq=$cs rc=$rc\n");
        # RFC 8760: one challenge per algorithm. MD5 comes first (same nonce); only the
        # SHA-256 answer verifies.
        auth_get_www_authenticate("$td", "1", "$var(wa)");
        $var(re) = "/algorithm=SHA-256/algorithm=MD5/";
        $var(md5) = $(var(wa){re.subst,$var(re)});
        append_to_reply("$var(md5)$var(wa)");
        t_reply("401", "Unauthorized");
        exit;
    }
    if ($au != "stox") { t_reply("403", "Wrong user"); exit; }
    xlog("L_INFO", "STOXTEST registered cseq=$cs expires=$hdr(Expires) contact=$ct auth=[$hdr(Authorization)]\n");
    if (!save("location")) { sl_reply_error(); }
    exit;
}
"#;

fn register_config(registrar_port: u16, password: &str) -> String {
    format!(
        r#"
[[sip.credentials]]
realm = "stox.test"
username = "stox"
password = "{password}"

[sip.register]
registrar = "sip:127.0.0.1:{registrar_port};transport=udp"
aor = "sip:stox@stox.test"
"#
    )
}

/// The time of a log line (`2026-01-01T12:34:56.789012Z ...`) in seconds of its day.
fn seconds_of_day(line: &str) -> Option<f64> {
    let t = line.get(11..26)?;
    let h: f64 = t.get(0..2)?.parse().ok()?;
    let m: f64 = t.get(3..5)?.parse().ok()?;
    let s: f64 = t.get(6..)?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// The value of `name=` in a logged Authorization header.
fn auth_param<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let i = line.find(&format!(" {name}="))? + name.len() + 2;
    let rest = line[i..].trim_start_matches('"');
    Some(&rest[..rest.find(['"', ',', ']'])?])
}

#[test]
fn stox_registers_with_sha256_digest_refreshes_in_time_and_unregisters() {
    let dir = temp_dir();
    let kamailio = Kamailio::start(dir.path(), "registrar", REGISTRAR_MODULES, REGISTRAR);
    // No XMPP server: registration does not depend on the component link.
    let mut stox = Stox::start(
        dir.path(),
        free_port(),
        &register_config(kamailio.port, "reg-secret"),
    );
    let started = Instant::now();
    // Asked for 3600 s, granted 10 s: refreshes every 2.5 s (a quarter, the floor).
    stox.wait_log("Registered.", 4, Duration::from_secs(20));
    let elapsed = started.elapsed();
    assert!(stox.log().contains("granted=10"), "{}", stox.log());
    // 4 registrations = 3 refresh intervals of 2.5 s, plus startup.
    assert!(
        elapsed >= Duration::from_millis(7000) && elapsed < Duration::from_secs(15),
        "4 registrations took {elapsed:?}"
    );

    // Measured from stox's own log: the refresh intervals are the floor, 2.5 s.
    let at: Vec<f64> = stox
        .log()
        .lines()
        .filter(|l| l.contains("Registered."))
        .filter_map(seconds_of_day)
        .collect();
    let intervals: Vec<f64> = at
        .windows(2)
        .map(|w| (w[1] - w[0]).rem_euclid(86_400.0))
        .collect();
    eprintln!("refresh intervals (s): {intervals:?}");
    assert!(
        intervals.iter().all(|i| (2.4..3.2).contains(i)),
        "{intervals:?}"
    );

    let registered = kamailio.lines("STOXTEST registered");
    assert!(registered.len() >= 4, "{registered:#?}");
    // One challenge: every refresh was pre-authenticated with the cached nonce, its nc
    // counting up (Kamailio checks nc with nonce_count=1).
    assert_eq!(
        kamailio.lines("STOXTEST challenge").len(),
        1,
        "{}",
        kamailio.log()
    );
    let ncs: Vec<_> = registered.iter().map(|l| auth_param(l, "nc")).collect();
    assert_eq!(
        &ncs[..4],
        [
            Some("00000001"),
            Some("00000002"),
            Some("00000003"),
            Some("00000004")
        ],
        "{registered:#?}"
    );
    for l in &registered {
        assert_eq!(auth_param(l, "algorithm"), Some("SHA-256"), "{l}");
        // The Request-URI as rsipstack writes it on the request line (transport=UDP).
        let uri = auth_param(l, "uri").unwrap_or_default();
        assert!(
            uri.eq_ignore_ascii_case(&format!("sip:127.0.0.1:{};transport=udp", kamailio.port)),
            "{l}"
        );
        assert!(
            l.contains(&format!("contact=<sip:stox@127.0.0.1:{}>", stox.sip_port)),
            "{l}"
        );
    }
    // CSeq counts up within the one Call-ID: 1 was challenged, 2 answered it.
    assert!(registered[0].contains("cseq=2 "), "{}", registered[0]);
    assert!(registered[3].contains("cseq=5 "), "{}", registered[3]);

    // A clean shutdown unregisters.
    stox.stop();
    kamailio.wait_log("expires=0 ", 1, Duration::from_secs(5));
    assert!(stox.log().contains("Unregistered."), "{}", stox.log());
}

#[test]
fn a_wrong_registration_password_is_retried_with_backoff_not_in_a_loop() {
    let dir = temp_dir();
    let kamailio = Kamailio::start(dir.path(), "registrar", REGISTRAR_MODULES, REGISTRAR);
    let stox = Stox::start(
        dir.path(),
        free_port(),
        &register_config(kamailio.port, "wrong"),
    );
    stox.wait_log(
        "Registration refused; retrying.",
        2,
        Duration::from_secs(15),
    );
    let log = stox.log();
    assert!(log.contains("status=401"), "{log}");
    assert!(log.contains("retry_in_s=2"), "{log}");
    assert!(log.contains("retry_in_s=4"), "{log}");
    assert!(!log.contains("Registered."), "{log}");
    // Each attempt is one challenge and one refused answer: 2 attempts, 4 REGISTERs.
    assert_eq!(
        kamailio.lines("STOXTEST challenge").len(),
        4,
        "{}",
        kamailio.log()
    );
}

const PROXY_MODULES: &[&str] = &[
    "tm", "sl", "pv", "xlog", "maxfwd", "rr", "textops", "siputils", "auth",
];

/// An outbound proxy for realm proxy.test and the one user `gw`: challenges MESSAGEs
/// without valid credentials with 407 (MD5, `qop="auth,auth-int"`, nc checked), and relays
/// the authenticated ones to SIPp with the credentials consumed and a header saying who
/// was authenticated.
fn proxy(sipp_port: u16) -> String {
    r#"
modparam("auth", "qop", "auth")
modparam("auth", "nonce_count", 1)

request_route {
    if (!mf_process_maxfwd_header("10")) { sl_send_reply("483", "Too Many Hops"); exit; }
    if (has_totag()) { sl_send_reply("481", "No Such Dialog"); exit; }
    if (!is_method("MESSAGE")) { sl_send_reply("405", "Method Not Allowed"); exit; }
    if (!t_newtran()) { exit; }
    if (!pv_proxy_authenticate("proxy.test", "proxy-secret", "0")) {
        xlog("L_INFO", "STOXTEST challenge MESSAGE cseq=$cs rc=$rc\n");
        # proxy_challenge() offers qop="auth" or qop="auth-int", never both (and this
        # Kamailio cannot verify auth-int): offer both the way RFC 3261 22.4 shows it.
        auth_get_www_authenticate("proxy.test", "1", "$var(wa)");
        $var(re) = "/WWW-Authenticate/Proxy-Authenticate/";
        $var(pa) = $(var(wa){re.subst,$var(re)});
        $var(re) = "/qop=\"auth\"/qop=\"auth,auth-int\"/";
        $var(pa) = $(var(pa){re.subst,$var(re)});
        xlog("L_INFO", "STOXTEST offered [$var(pa)]\n");
        append_to_reply("$var(pa)");
        t_reply("407", "Proxy Authentication Required");
        exit;
    }
    if ($au != "gw") { t_reply("403", "Wrong user"); exit; }
    xlog("L_INFO", "STOXTEST authenticated MESSAGE cseq=$cs auth=[$hdr(Proxy-Authorization)]\n");
    consume_credentials();
    append_hf("X-Stox-Authenticated: $au\r\n");
    loose_route();
    $du = "sip:127.0.0.1:SIPP;transport=udp";
    if (!t_relay()) { sl_reply_error(); }
    exit;
}
"#
    .replace("SIPP", &sipp_port.to_string())
}

fn proxy_config(proxy_port: u16, password: &str) -> String {
    format!(
        r#"outbound_proxy = "sip:127.0.0.1:{proxy_port};transport=udp"

[[sip.credentials]]
realm = "proxy.test"
username = "gw"
password = "{password}"
"#
    )
}

#[test]
fn juliets_messages_pass_kamailios_proxy_authentication_and_reach_sipp() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let sipp_port = free_port();
    let kamailio = Kamailio::start(dir.path(), "proxy", PROXY_MODULES, &proxy(sipp_port));
    let stox = Stox::start(
        dir.path(),
        prosody.component_port,
        &proxy_config(kamailio.port, "proxy-secret"),
    );
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);
    let uas = Sipp::spawn_uas(dir.path(), "uas", &message_uas(200, "OK"), sipp_port, 2);

    juliet.send(
        "romeo\\40sip.test@sip.localhost",
        "Wherefore art thou Romeo?",
        None,
        "m1",
    );
    kamailio.wait_log("STOXTEST authenticated", 1, Duration::from_secs(10));
    juliet.send(
        "romeo\\40sip.test@sip.localhost",
        "Deny thy father.",
        None,
        "m2",
    );
    let r = uas.finish(Duration::from_secs(20));
    r.assert_ok();
    assert_eq!(
        r.messages.matches("X-Stox-Authenticated: gw").count(),
        2,
        "{}",
        r.messages
    );
    assert!(
        !r.messages.contains("Proxy-Authorization"),
        "consumed by the proxy: {}",
        r.messages
    );
    assert!(
        r.messages.contains("Wherefore art thou Romeo?"),
        "{}",
        r.messages
    );
    assert!(r.messages.contains("Deny thy father."), "{}", r.messages);

    // The first MESSAGE was challenged once; the second went with the cached nonce, nc 2.
    let challenges = kamailio.lines("STOXTEST challenge");
    assert_eq!(challenges.len(), 1, "{}", kamailio.log());
    let offered = kamailio.lines("STOXTEST offered");
    assert!(offered[0].contains("qop=\"auth,auth-int\""), "{offered:?}");
    let authed = kamailio.lines("STOXTEST authenticated");
    assert_eq!(authed.len(), 2, "{authed:#?}");
    assert_eq!(auth_param(&authed[0], "nc"), Some("00000001"));
    assert_eq!(auth_param(&authed[1], "nc"), Some("00000002"));
    assert_eq!(auth_param(&authed[0], "qop"), Some("auth"), "{}", authed[0]);
    assert_eq!(auth_param(&authed[0], "uri"), Some("sip:romeo@sip.test"));
    assert!(
        stox.log().contains("Answering a digest challenge."),
        "{}",
        stox.log()
    );
    // Delivered: no error came back to juliet.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !juliet
            .stanzas_seen()
            .iter()
            .any(|s| s.contains("type=\"error\"")),
        "{:?}",
        juliet.stanzas_seen()
    );
}

#[test]
fn a_wrong_proxy_password_comes_back_to_juliet_as_not_authorized() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let sipp_port = free_port();
    let kamailio = Kamailio::start(dir.path(), "proxy", PROXY_MODULES, &proxy(sipp_port));
    let stox = Stox::start(
        dir.path(),
        prosody.component_port,
        &proxy_config(kamailio.port, "wrong"),
    );
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);
    juliet.send(
        "romeo\\40sip.test@sip.localhost",
        "Is this thing on?",
        None,
        "bad1",
    );
    let error = juliet.expect_stanza(&["id=\"bad1\"", "type=\"error\""], Duration::from_secs(10));
    assert!(error.contains("not-authorized"), "{error}");
    // Challenged, answered once, challenged again: final.
    assert_eq!(
        kamailio.lines("STOXTEST challenge").len(),
        2,
        "{}",
        kamailio.log()
    );
    assert!(kamailio.lines("STOXTEST authenticated").is_empty());
}
