//! `stox-bench`: stox and Kamailio's xmpp module side by side on loopback (issue 6).
//!
//! Starts Prosody (config in a temp dir), stox (the release binary next to this one), and
//! the load generators: SIPp as the UAC for SIP -> XMPP (its `-trace_rtt` gives request ->
//! 200 times), a Rust UDP UAS sink for XMPP -> SIP (it timestamps each MESSAGE against the
//! send time the flooder wrote in the body, which SIPp cannot), and a raw c2s flooder and
//! sink on the XMPP side. Every load is bounded in count and time and goes to 127.0.0.1.
//! See README.md, "Benchmark".

mod chat;
mod procs;
mod restart;
mod sip;
mod xmpp;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

use procs::{free_port, need, now_ns, status_kb, wait_file, Cpu, Proc};

const SECRET: &str = "bench-secret";
/// Chat sessions per XMPP user in the chat-session figure (`chat.max_sessions_per_user` is
/// set to it).
const CHATS_PER_USER: u64 = 50;
/// How long the presence figure waits after the setup's last SIP request before it reads
/// the idle RSS: timer J (64*T1 = 32 s, RFC 3261 17.2.2) holds each server transaction of
/// the setup that long, stox's SIP core rounds cleanup to a 100 ms grid, and 2 s margin.
const SETUP_TRANSACTIONS_GONE: Duration = Duration::from_millis(32_000 + 100 + 2_000);

#[derive(Parser)]
#[command(about = "stox and Kamailio's xmpp module side by side, on loopback")]
struct Args {
    /// A short run: rates 1000 and 5000 for 3 s, 2000 subscriptions, a 10 s soak.
    #[arg(long)]
    quick: bool,
    /// Offered rates, messages per second, each direction.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000,20000")]
    rates: Vec<u64>,
    /// Seconds of load per rate.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Idle presence subscriptions for the memory figure (half each direction).
    #[arg(long, default_value_t = 10000)]
    subs: u64,
    /// Open, idle MSRP chat sessions (SIP -> XMPP) for the memory figure; 0 skips it.
    #[arg(long, default_value_t = 10000)]
    chats: u64,
    /// New subscriptions per second while setting up the presence figure, each direction.
    #[arg(long, default_value_t = 2000)]
    subs_rate: u64,
    /// SIP contacts each XMPP user subscribes to (Prosody rewrites a user's whole roster on
    /// every change: 10 each gave ~240 subscriptions/s, 50 each ~100/s).
    #[arg(long, default_value_t = 10)]
    subs_per_user: u64,
    /// Seconds of the RSS soak (both directions at --soak-rate); the issue asks for 600.
    #[arg(long, default_value_t = 60)]
    soak: u64,
    #[arg(long, default_value_t = 2000)]
    soak_rate: u64,
    /// A Kamailio xmpp module built with the kamailio#4154 fix; default the Debian one.
    #[arg(long)]
    kamailio_xmpp_module: Option<PathBuf>,
    /// Leave Kamailio out.
    #[arg(long)]
    no_kamailio: bool,
    /// Keep the temp dir (configs, logs, SIPp files).
    #[arg(long)]
    keep: bool,
    /// Seconds of the Prosody restart run (SIP -> XMPP at --restart-rate, Prosody killed a
    /// third of the way in and started 2 s later); 0 skips it.
    #[arg(long, default_value_t = 15)]
    restart_secs: u64,
    #[arg(long, default_value_t = 1000)]
    restart_rate: u64,
    /// Only this direction's message runs (for profiling one path).
    #[arg(long, value_enum, default_value_t = Only::Both)]
    only: Only,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Only {
    Both,
    SipToXmpp,
    XmppToSip,
    /// No message runs: only the startup, soak and memory figures.
    None,
}

struct Env {
    dir: PathBuf,
    c2s: u16,
    component: u16,
    prosody: Proc,
    sink: sip::Sink,
    xsink: std::sync::Arc<xmpp::Counter>,
    flood: std::net::TcpStream,
    flood_errors: std::sync::Arc<xmpp::Counter>,
}

/// One measured run.
#[derive(Default, Clone)]
struct Row {
    offered: f64,
    delivered: f64,
    loss_pct: f64,
    p50: f64,
    p99: f64,
    max: f64,
    cpu_per_1k: f64,
    rss_mb: f64,
    /// CPU % of one core: gateway, Prosody, load generator(s).
    cpu_gw: f64,
    cpu_prosody: f64,
    cpu_load: f64,
    note: String,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.rates = vec![1000, 5000];
        args.duration = 3;
        args.subs = args.subs.min(2000);
        args.chats = args.chats.min(1000);
        args.soak = args.soak.min(10);
    }
    now_ns();
    // Each chat session is a socket here and one in stox.
    let nofile = rlimit::increase_nofile_limit(u64::MAX)?;
    eprintln!("open file limit: {nofile}");
    need("prosody", "prosody")?;
    need("sipp", "sip-tester")?;
    let stox_bin = std::env::current_exe()?
        .parent()
        .context("no exe dir")?
        .join("stox");
    anyhow::ensure!(
        stox_bin.exists(),
        "{} is missing: run `cargo build --release` first",
        stox_bin.display()
    );
    let dir = std::env::temp_dir().join(format!("stox-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    eprintln!("bench dir: {}", dir.display());
    let result = run(&args, &dir, &stox_bin);
    if args.keep || result.is_err() {
        eprintln!("kept: {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn run(args: &Args, dir: &Path, stox_bin: &Path) -> anyhow::Result<()> {
    let users = (args.subs / 2).div_ceil(args.subs_per_user.max(1)).max(1);
    let chat_users = args.chats.div_ceil(CHATS_PER_USER);
    let mut env = start_env(dir, users, chat_users)?;
    let mut out = String::new();
    let host = format!(
        "{}, {} cores",
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| c
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string()))
            .unwrap_or_default(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    writeln!(
        out,
        "stox-bench {date}, {host}; {} s per rate\n",
        args.duration
    )?;

    // Startup to component-online, three times.
    let mut startups = Vec::new();
    let mut stox = None;
    for i in 0..3 {
        drop(stox.take());
        let (s, ms) = start_stox(&env, dir, stox_bin, &format!("stox{i}"), "")?;
        startups.push(ms);
        stox = Some(s);
    }
    let mut stox = stox.unwrap();
    startups.sort_by(|a, b| a.partial_cmp(b).unwrap());
    eprintln!("startup to component-online: {startups:?} ms");

    // Message runs through stox.
    let mut stox_rows = Vec::new();
    let sip_rates: &[u64] = if matches!(args.only, Only::XmppToSip | Only::None) {
        &[]
    } else {
        &args.rates
    };
    let xmpp_rates: &[u64] = if matches!(args.only, Only::SipToXmpp | Only::None) {
        &[]
    } else {
        &args.rates
    };
    for &rate in sip_rates {
        let r = sip_to_xmpp(
            &env,
            dir,
            "stox",
            stox.1,
            &Cpu::Pid(stox.0.pid()),
            stox.0.pid(),
            rate,
            args.duration,
        )?;
        stox_rows.push(("SIP -> XMPP", rate, r));
        cool_down(rate);
    }
    if !sip_rates.is_empty() && !xmpp_rates.is_empty() {
        // Each direction from a fresh process, so neither pays for the other's leftovers.
        drop(stox);
        stox = start_stox(&env, dir, stox_bin, "stox-x2s", "")?.0;
    }
    for &rate in xmpp_rates {
        let to = "bob\\40sip.test@sip.localhost";
        let pid = stox.0.pid();
        let r = xmpp_to_sip(&mut env, &Cpu::Pid(pid), pid, to, rate, args.duration)?;
        stox_rows.push(("XMPP -> SIP", rate, r));
        cool_down(rate);
    }

    drop(stox);
    // RSS soak, both directions at once, on a fresh stox (the runs above left the peak of
    // the top rate in its heap).
    let soak = if args.soak == 0 {
        "not run (--soak 0)".to_string()
    } else {
        let (fresh, _) = start_stox(&env, dir, stox_bin, "stox-soak", "")?;
        let soak = soak(
            &mut env,
            dir,
            fresh.1,
            fresh.0.pid(),
            args.soak_rate,
            args.soak,
        )?;
        drop(fresh);
        soak
    };

    // Kamailio.
    let mut kam_rows: Vec<Option<Row>> = vec![None; stox_rows.len()];
    let kam_status = if args.no_kamailio {
        "left out (--no-kamailio)".to_string()
    } else {
        match start_kamailio(&env, dir, args.kamailio_xmpp_module.as_deref()) {
            Ok((mut kam, port)) => {
                let mut i = 0;
                for &rate in sip_rates {
                    let cpu = Cpu::Group(kam.pid());
                    let r = sip_to_xmpp(&env, dir, "kamailio", port, &cpu, 0, rate, args.duration)?;
                    kam_rows[i] = Some(r);
                    i += 1;
                    cool_down(rate);
                }
                if !sip_rates.is_empty() && !xmpp_rates.is_empty() {
                    drop(kam);
                    (kam, _) = start_kamailio(&env, dir, args.kamailio_xmpp_module.as_deref())?;
                }
                for &rate in xmpp_rates {
                    let cpu = Cpu::Group(kam.pid());
                    let r =
                        xmpp_to_sip(&mut env, &cpu, 0, "bob@kam.localhost", rate, args.duration)?;
                    kam_rows[i] = Some(r);
                    i += 1;
                    cool_down(rate);
                }
                format!(
                    "ran: {}",
                    args.kamailio_xmpp_module
                        .as_deref()
                        .map(|p| format!("module {}", p.display()))
                        .unwrap_or_else(|| "the Debian module".into())
                )
            }
            Err(e) => format!("not run: {e}"),
        }
    };

    // Presence memory, on a fresh stox.
    let subs = if args.subs == 0 {
        "not run (--subs 0)".to_string()
    } else {
        presence_memory(&mut env, dir, stox_bin, args, users)?
    };

    // Chat-session memory, on a fresh stox.
    let chats = if args.chats == 0 {
        "not run (--chats 0)".to_string()
    } else {
        chat_memory(&mut env, dir, stox_bin, args.chats, chat_users)?
    };

    // Prosody killed and started again under load, stox then Kamailio.
    let mut restarts = Vec::new();
    if args.restart_secs > 0 {
        let (s, _) = start_stox(&env, dir, stox_bin, "stox-restart", "")?;
        restarts.push(restart_run(
            &mut env,
            dir,
            "stox",
            s.1,
            args.restart_rate,
            args.restart_secs,
        )?);
        drop(s);
        if kam_rows.iter().any(Option::is_some) {
            match start_kamailio(&env, dir, args.kamailio_xmpp_module.as_deref()) {
                Ok((k, port)) => {
                    restarts.push(restart_run(
                        &mut env,
                        dir,
                        "Kamailio",
                        port,
                        args.restart_rate,
                        args.restart_secs,
                    )?);
                    drop(k);
                }
                Err(e) => restarts.push(format!("Kamailio: not run: {e}")),
            }
        }
    }

    // The table.
    writeln!(out, "| direction | offered/s | stox delivered/s | loss % | p50 / p99 / max ms | CPU s/1k | peak RSS MB | Kamailio delivered/s | loss % | p50 / p99 / max ms | CPU s/1k | RSS MB | CPU Kamailio/stox |")?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    for ((dirn, rate, s), k) in stox_rows.iter().zip(&kam_rows) {
        let kcols = match k {
            Some(k) => format!(
                "{:.0} | {:.2} | {:.1} / {:.1} / {:.0} | {:.3} | {:.0} | {:.2}",
                k.delivered,
                k.loss_pct,
                k.p50,
                k.p99,
                k.max,
                k.cpu_per_1k,
                k.rss_mb,
                if s.cpu_per_1k > 0.0 {
                    k.cpu_per_1k / s.cpu_per_1k
                } else {
                    0.0
                }
            ),
            None => "- | - | - | - | - | -".into(),
        };
        writeln!(
            out,
            "| {dirn} | {rate} (sent {:.0}) | {:.0} | {:.2} | {:.1} / {:.1} / {:.0} | {:.3} | {:.0} | {kcols} |",
            s.offered, s.delivered, s.loss_pct, s.p50, s.p99, s.max, s.cpu_per_1k, s.rss_mb
        )?;
    }
    writeln!(
        out,
        "\nCPU of each process during each run, % of one core (2 cores = 200 %):\n"
    )?;
    writeln!(
        out,
        "| gateway | direction | rate | gateway | Prosody | load generators | notes |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|")?;
    for ((dirn, rate, s), k) in stox_rows.iter().zip(&kam_rows) {
        writeln!(
            out,
            "| stox | {dirn} | {rate} | {:.0} | {:.0} | {:.0} | {} |",
            s.cpu_gw, s.cpu_prosody, s.cpu_load, s.note
        )?;
        if let Some(k) = k {
            writeln!(
                out,
                "| Kamailio | {dirn} | {rate} | {:.0} | {:.0} | {:.0} | {} |",
                k.cpu_gw, k.cpu_prosody, k.cpu_load, k.note
            )?;
        }
    }
    writeln!(out, "\nKamailio: {kam_status}")?;
    if kam_rows.iter().all(Option::is_none) {
        writeln!(out, "Reference figures for Kamailio 5.6 xmpp (with the kamailio#4154 fix) from issue 6, same machine:")?;
        writeln!(out, "  SIP -> XMPP 15k/s without loss (200 p99 2-4 ms, end-to-end p99 28 ms), box overloaded at 20k/s; ~36 us CPU per message (0.036 s/1k)")?;
        writeln!(out, "  XMPP -> SIP 30k/s without loss, limited by Prosody")?;
    }
    writeln!(
        out,
        "\nstartup to component-online: {:.0} ms (median of 3; {:?})",
        startups[1], startups
    )?;
    writeln!(out, "RSS soak: {soak}")?;
    writeln!(out, "presence: {subs}")?;
    writeln!(out, "chat sessions: {chats}")?;
    if !restarts.is_empty() {
        writeln!(
            out,
            "\nProsody killed (SIGKILL) and restarted 2 s later during {} s of SIP -> XMPP at {}/s:",
            args.restart_secs, args.restart_rate
        )?;
        for r in &restarts {
            writeln!(out, "- {r}")?;
        }
    }
    println!("{out}");
    std::fs::write(dir.join("results.md"), &out)?;
    drop(env.prosody);
    Ok(())
}

fn account(dir: &Path, user: &str) -> anyhow::Result<()> {
    let accounts = dir.join("prosody/data/localhost/accounts");
    std::fs::create_dir_all(&accounts)?;
    std::fs::write(
        accounts.join(format!("{user}.dat")),
        "return {\n\t[\"password\"] = \"pw\";\n};\n",
    )?;
    Ok(())
}

fn start_env(dir: &Path, users: u64, chat_users: u64) -> anyhow::Result<Env> {
    let pdir = dir.join("prosody");
    std::fs::create_dir_all(pdir.join("data"))?;
    let c2s = free_port();
    let component = free_port();
    let d = pdir.display();
    std::fs::write(
        pdir.join("prosody.cfg.lua"),
        format!(
            r#"-- written by stox-bench
run_as_root = true
daemonize = false
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
plugin_paths = {{}}
log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = "{d}/prosody.log" }} }}
modules_enabled = {{ "roster", "saslauth", "disco", "ping", "presence", "offline" }}
modules_disabled = {{ "s2s", "tls", "posix" }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
component_ports = {{ {component} }}
component_interfaces = {{ "127.0.0.1" }}
network_settings = {{ nagle = false }}
http_ports = {{}}
https_ports = {{}}
VirtualHost "localhost"
Component "sip.localhost"
    component_secret = "{SECRET}"
Component "kam.localhost"
    component_secret = "{SECRET}"
"#
        ),
    )?;
    for u in ["sink", "flood", "rsink"] {
        account(dir, u)?;
    }
    for i in 0..users {
        account(dir, &format!("u{i}"))?;
        account(dir, &format!("x{i}"))?;
    }
    for i in 0..chat_users {
        account(dir, &format!("c{i}"))?;
    }
    let prosody = spawn_prosody(&pdir, c2s)?;
    let sink = sip::Sink::spawn(free_port())?;
    let xsink = xmpp::count(xmpp::login(c2s, "sink", "pw")?);
    let flood = xmpp::login(c2s, "flood", "pw")?;
    let flood_errors = xmpp::count(flood.try_clone()?);
    Ok(Env {
        dir: dir.to_path_buf(),
        c2s,
        component,
        prosody,
        sink,
        xsink,
        flood,
        flood_errors,
    })
}

fn spawn_prosody(pdir: &Path, c2s: u16) -> anyhow::Result<Proc> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(pdir.join("prosody.stdout"))?;
    let prosody = Proc::spawn(
        "prosody",
        Command::new("prosody")
            .arg("-F")
            .arg("--config")
            .arg(pdir.join("prosody.cfg.lua"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log),
        false,
    )?;
    procs::wait_for_port(c2s, Duration::from_secs(15), "prosody")?;
    Ok(prosody)
}

/// Starts stox on a fresh config (`extra`: more TOML after it); returns it, its SIP port and
/// the ms from spawn to "Component online." in its log.
fn start_stox(
    env: &Env,
    dir: &Path,
    bin: &Path,
    name: &str,
    extra: &str,
) -> anyhow::Result<((Proc, u16), f64)> {
    let sdir = dir.join(name);
    std::fs::create_dir_all(&sdir)?;
    let port = free_port();
    let config = sdir.join("component.toml");
    std::fs::write(
        &config,
        format!(
            r#"[store]
path = "{db}"

[xmpp]
jid = "sip.localhost"
server = "127.0.0.1:{component}"
secret = "{SECRET}"
domains = ["localhost"]
reconnect_max_ms = 500
queue_limit = 65536

[presence]
max_per_user = 100000
max_total = 1000000

[sip]
listen = ["udp:127.0.0.1:{port}"]
# The load comes from 127.0.0.1; trusted, so the per-source limits do not apply.
trusted_peers = ["127.0.0.1"]

[sip.routes]
"sip.test" = "sip:127.0.0.1:{sink};transport=udp"
{extra}"#,
            db = sdir.join("stox.db").display(),
            component = env.component,
            sink = env.sink.port,
        ),
    )?;
    let log = sdir.join("stox.log");
    let file = std::fs::File::create(&log)?;
    let t0 = Instant::now();
    let p = Proc::spawn(
        "stox",
        Command::new(bin)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file),
        false,
    )?;
    anyhow::ensure!(
        wait_file(&log, "Component online.", 1, Duration::from_secs(20)),
        "stox did not come online; see {}",
        log.display()
    );
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    Ok(((p, port), ms))
}

fn start_kamailio(env: &Env, dir: &Path, module: Option<&Path>) -> anyhow::Result<(Proc, u16)> {
    let bin = need("kamailio", "kamailio")?;
    // The Debian module from Kamailio's compiled-in path, unless one is given.
    let module = module
        .map(|m| m.display().to_string())
        .unwrap_or_else(|| "xmpp.so".into());
    let before = std::fs::read_to_string(env.dir.join("prosody/prosody.log"))
        .unwrap_or_default()
        .matches("kam.localhost:component\tinfo\tExternal component successfully authenticated")
        .count();
    let kdir = dir.join("kamailio");
    std::fs::create_dir_all(kdir.join("run"))?;
    let port = free_port();
    let cfg = format!(
        r#"#!KAMAILIO
# written by stox-bench: a SIP <-> XMPP gateway like stox's config, on loopback
debug=1
log_stderror=yes
children=2
auto_aliases=no
dns=no
rev_dns=no
use_dns_cache=no
listen=udp:127.0.0.1:{port}
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "{module}"
modparam("xmpp", "backend", "component")
modparam("xmpp", "xmpp_domain", "kam.localhost")
modparam("xmpp", "xmpp_host", "127.0.0.1")
modparam("xmpp", "xmpp_port", {component})
modparam("xmpp", "xmpp_password", "{SECRET}")
modparam("xmpp", "gateway_domain", "localhost")
modparam("xmpp", "gwmap", "sip.test=kam.localhost")
modparam("xmpp", "outbound_proxy", "sip:127.0.0.1:{sink}")
request_route {{
    if (method == "MESSAGE") {{
        if (!t_newtran()) {{ sl_reply_error(); exit; }}
        if (xmpp_send_message()) {{ t_reply("200", "Accepted"); }} else {{ t_reply("404", "Not found"); }}
        exit;
    }}
    sl_send_reply("404", "Not here");
}}
"#,
        component = env.component,
        sink = env.sink.port,
    );
    let config = kdir.join("kamailio.cfg");
    std::fs::write(&config, cfg)?;
    let log = kdir.join("kamailio.log");
    let out = std::fs::File::create(&log)?;
    let mut k = Proc::spawn(
        "kamailio",
        Command::new(&bin)
            .arg("-f")
            .arg(&config)
            .args(["-DD", "-E", "-m", "2048", "-M", "16"])
            .arg("-P")
            .arg(kdir.join("kamailio.pid"))
            .arg("-Y")
            .arg(kdir.join("run"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out),
        true,
    )?;
    let plog = env.dir.join("prosody/prosody.log");
    const AUTHENTICATED: &str =
        "kam.localhost:component\tinfo\tExternal component successfully authenticated";
    let ok = wait_file(&plog, AUTHENTICATED, before + 1, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    let klog = std::fs::read_to_string(&log).unwrap_or_default();
    if !ok || !k.alive() || klog.contains("exited by a signal") {
        let crashed = klog.contains("signal 11");
        k.stop();
        if crashed {
            anyhow::bail!(
                "Kamailio's xmpp module crashed (SIGSEGV) on the first bytes Prosody sent \
                 (kamailio#4154); pass --kamailio-xmpp-module with a module built with the fix"
            );
        }
        anyhow::bail!(
            "Kamailio did not come online as a component; see {}",
            log.display()
        );
    }
    Ok((k, port))
}

fn percentiles(v: &mut [f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    (at(0.5), at(0.99), v[v.len() - 1])
}

/// Waits until `count()` reaches `want` or stops moving for 2 s (bounded by 30 s).
fn drain(want: u64, count: impl Fn() -> u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = count();
    let mut still = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let c = count();
        if c >= want {
            return c;
        }
        if c != last {
            last = c;
            still = Instant::now();
        } else if still.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    count()
}

fn sipp_scenario(dir: &Path, user: &str) -> anyhow::Result<PathBuf> {
    let file = dir.join("message.xml");
    std::fs::write(
        &file,
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="bench-message">
  <send retrans="500" start_rtd="1">
    <![CDATA[
MESSAGE sip:USER@localhost SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
From: <sip:romeo@sip.test>;tag=[pid]SIPpTag00[call_number]
To: <sip:USER@localhost>
Call-ID: [call_id]
CSeq: 1 MESSAGE
Content-Type: text/plain;charset=UTF-8
Content-Length: [len]

bench n=[call_number]
]]>
  </send>
  <recv response="200" rtd="1" />
</scenario>
"#
        .replace("USER", user),
    )?;
    Ok(file)
}

/// Runs SIPp as UAC: `rate`/s MESSAGEs for `secs`, to 127.0.0.1:`port`. Returns the SIPp
/// process's CPU seconds and the rtt CSV of the run directory.
fn run_sipp(
    dir: &Path,
    port: u16,
    rate: u64,
    count: u64,
    secs: u64,
) -> anyhow::Result<(f64, PathBuf)> {
    run_sipp_to(dir, port, rate, count, secs, "sink", &[])
}

fn run_sipp_to(
    dir: &Path,
    port: u16,
    rate: u64,
    count: u64,
    secs: u64,
    user: &str,
    extra: &[&str],
) -> anyhow::Result<(f64, PathBuf)> {
    let scenario = sipp_scenario(dir, user)?;
    let mut p = Proc::spawn(
        "sipp",
        Command::new("sipp")
            .current_dir(dir)
            .arg("-sf")
            .arg(&scenario)
            .args(["-i", "127.0.0.1", "-mi", "127.0.0.1", "-ci", "127.0.0.1"])
            .args([
                "-p",
                &free_port().to_string(),
                "-cp",
                &free_port().to_string(),
            ])
            .args([
                "-r",
                &rate.to_string(),
                "-rp",
                "1000",
                "-m",
                &count.to_string(),
            ])
            .args(["-l", "100000", "-recv_timeout", "10000"])
            .args(["-trace_rtt", "-rtt_freq", "1000", "-trace_err", "-nostdin"])
            .args(extra)
            .args(["-timeout", &format!("{}s", secs + 30)])
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        false,
    )?;
    let cpu = Cpu::Pid(p.pid());
    let mut used = 0.0;
    let deadline = Instant::now() + Duration::from_secs(secs + 45);
    while p.alive() && Instant::now() < deadline {
        used = cpu.secs().max(used);
        std::thread::sleep(Duration::from_millis(50));
    }
    p.stop();
    let rtt = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("_rtt.csv"))
        .context("SIPp wrote no rtt file")?;
    Ok((used, rtt))
}

/// (request sent ms, response time ms) per answered call, from SIPp's rtt CSV
/// (`date_ms;response_time_ms;rtd_no`, the date being the response's).
fn read_rtt(file: &Path) -> Vec<(f64, f64)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split(';');
            let date: f64 = f.next()?.trim().parse().ok()?;
            let rt: f64 = f.next()?.trim().parse().ok()?;
            Some((date - rt, rt))
        })
        .collect()
}

/// After a run at 10k/s or more (which can overload the box): 34 s, so the next run does
/// not pay for its leftovers (stox holds finished UDP server transactions for timer J,
/// 32 s; Kamailio's retransmission and wait timers are shorter).
fn cool_down(rate: u64) {
    if rate >= 10_000 {
        std::thread::sleep(Duration::from_secs(34));
    }
}

/// Before a run: waits (up to 30 s) until the gateway has used under 3 % of a core for
/// half a second, so the backlog of an overloaded run is not billed to the next one.
fn settle(gw: &Cpu) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let c0 = gw.secs();
        std::thread::sleep(Duration::from_millis(500));
        if gw.secs() - c0 < 0.015 {
            return;
        }
    }
}

struct Meter {
    gw: Cpu,
    gw_pid: u32,
    prosody: Cpu,
    t0: Instant,
    gw0: f64,
    pr0: f64,
    self0: f64,
}

impl Meter {
    fn start(gw: &Cpu, gw_pid: u32, prosody: u32) -> Meter {
        settle(gw);
        let prosody = Cpu::Pid(prosody);
        Meter {
            gw0: gw.secs(),
            pr0: prosody.secs(),
            self0: procs::cpu_secs(std::process::id()),
            gw: gw.clone(),
            gw_pid,
            prosody,
            t0: Instant::now(),
        }
    }

    /// Fills the CPU and RSS fields of `row` (`load_cpu`: the load generators' other CPU).
    fn finish(&self, row: &mut Row, messages: u64, load_cpu: f64) {
        let wall = self.t0.elapsed().as_secs_f64();
        let gw = self.gw.secs() - self.gw0;
        row.cpu_gw = gw / wall * 100.0;
        row.cpu_prosody = (self.prosody.secs() - self.pr0) / wall * 100.0;
        let me = procs::cpu_secs(std::process::id()) - self.self0;
        row.cpu_load = (me + load_cpu) / wall * 100.0;
        row.cpu_per_1k = if messages > 0 {
            gw / messages as f64 * 1000.0
        } else {
            0.0
        };
        row.rss_mb = match &self.gw {
            Cpu::Pid(_) => status_kb(self.gw_pid, "VmHWM") as f64 / 1024.0,
            // Kamailio: PSS of all its processes (they share one shm segment).
            Cpu::Group(g) => {
                procs::group_pids(*g)
                    .into_iter()
                    .map(procs::pss_kb)
                    .sum::<u64>() as f64
                    / 1024.0
            }
        };
    }
}

#[allow(clippy::too_many_arguments)]
fn sip_to_xmpp(
    env: &Env,
    dir: &Path,
    gw: &str,
    port: u16,
    cpu: &Cpu,
    gw_pid: u32,
    rate: u64,
    secs: u64,
) -> anyhow::Result<Row> {
    let rdir = dir.join(format!("{gw}-sip2xmpp-{rate}"));
    std::fs::create_dir_all(&rdir)?;
    let count = rate * secs;
    env.xsink.reset();
    let m = Meter::start(cpu, gw_pid, env.prosody.pid());
    let (sipp_cpu, rtt) = run_sipp(&rdir, port, rate, count, secs)?;
    let got = drain(count, || env.xsink.messages.load(Ordering::SeqCst));
    let mut row = Row::default();
    m.finish(&mut row, count, sipp_cpu);
    let calls = read_rtt(&rtt);
    let mut lat: Vec<f64> = calls.iter().map(|c| c.1).collect();
    (row.p50, row.p99, row.max) = percentiles(&mut lat);
    let (first, last) = calls
        .iter()
        .fold((f64::MAX, 0f64), |(a, b), c| (a.min(c.0), b.max(c.0)));
    row.offered = if last > first {
        calls.len() as f64 / ((last - first) / 1000.0)
    } else {
        0.0
    };
    let (f, l) = (
        env.xsink.first_ns.load(Ordering::SeqCst),
        env.xsink.last_ns.load(Ordering::SeqCst),
    );
    row.delivered = if l > f {
        got as f64 / ((l - f) as f64 / 1e9)
    } else {
        0.0
    };
    row.loss_pct = 100.0 * count.saturating_sub(got) as f64 / count as f64;
    row.note = format!("{} of {count} answered 200 (SIPp)", calls.len());
    eprintln!(
        "{gw} SIP->XMPP {rate}/s: {got}/{count} delivered, p99 {:.1} ms, {:.3} s/1k",
        row.p99, row.cpu_per_1k
    );
    Ok(row)
}

fn xmpp_to_sip(
    env: &mut Env,
    cpu: &Cpu,
    gw_pid: u32,
    to: &str,
    rate: u64,
    secs: u64,
) -> anyhow::Result<Row> {
    let count = rate * secs;
    env.sink.take();
    env.flood_errors.reset();
    let m = Meter::start(cpu, gw_pid, env.prosody.pid());
    let f = xmpp::flood(
        &mut env.flood,
        to,
        rate,
        count,
        Duration::from_secs(secs + 10),
    )?;
    let got = drain(f.sent, || env.sink.count());
    let mut row = Row::default();
    m.finish(&mut row, f.sent, 0.0);
    let run = env.sink.take();
    let mut lat: Vec<f64> = run
        .latencies_us
        .iter()
        .map(|&u| u as f64 / 1000.0)
        .collect();
    (row.p50, row.p99, row.max) = percentiles(&mut lat);
    row.offered = if f.last_ns > f.first_ns {
        f.sent as f64 / ((f.last_ns - f.first_ns) as f64 / 1e9)
    } else {
        0.0
    };
    row.delivered = if run.last_ns > run.first_ns {
        got as f64 / ((run.last_ns - run.first_ns) as f64 / 1e9)
    } else {
        0.0
    };
    row.loss_pct = 100.0 * f.sent.saturating_sub(got) as f64 / f.sent.max(1) as f64;
    row.note = format!(
        "{} error stanzas back, {} duplicate MESSAGEs",
        env.flood_errors.errors.load(Ordering::SeqCst),
        run.duplicates
    );
    eprintln!(
        "XMPP->SIP {to} {rate}/s: {got}/{} delivered, p99 {:.1} ms, {:.3} s/1k",
        f.sent, row.p99, row.cpu_per_1k
    );
    Ok(row)
}

/// Both directions at `rate` for `secs`; stox's RSS sampled every second.
fn soak(
    env: &mut Env,
    dir: &Path,
    port: u16,
    pid: u32,
    rate: u64,
    secs: u64,
) -> anyhow::Result<String> {
    let rdir = dir.join("soak");
    std::fs::create_dir_all(&rdir)?;
    let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s2, st2) = (samples.clone(), stop.clone());
    let sampler = std::thread::spawn(move || {
        while !st2.load(Ordering::SeqCst) {
            s2.lock().unwrap().push(status_kb(pid, "VmRSS"));
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let count = rate * secs;
    let sdir = rdir.clone();
    let sipp = std::thread::spawn(move || run_sipp(&sdir, port, rate, count, secs));
    env.sink.take();
    let f = xmpp::flood(
        &mut env.flood,
        "bob\\40sip.test@sip.localhost",
        rate,
        count,
        Duration::from_secs(secs + 10),
    )?;
    let _ = sipp.join();
    let got = drain(f.sent, || env.sink.count());
    stop.store(true, Ordering::SeqCst);
    let _ = sampler.join();
    let s = samples.lock().unwrap().clone();
    anyhow::ensure!(s.len() >= 8, "too few RSS samples");
    let csv: String = s
        .iter()
        .enumerate()
        .map(|(i, kb)| format!("{i},{kb}\n"))
        .collect();
    std::fs::write(rdir.join("rss.csv"), format!("second,rss_kb\n{csv}"))?;
    // Under load the RSS follows the transactions in timer J and the heap trims (every
    // 10 s), so whole windows are compared, not two single samples: the median of the
    // second quarter (past warm-up: timer J is 32 s) against that of the last quarter.
    let median = |w: &[u64]| {
        let mut w = w.to_vec();
        w.sort_unstable();
        w[w.len() / 2]
    };
    let q = s.len() / 4;
    let warm = median(&s[q..2 * q]);
    let late = median(&s[s.len() - q..]);
    let end = *s.last().unwrap();
    let peak = *s.iter().max().unwrap();
    Ok(format!(
        "{secs} s at {rate}/s each way ({got}/{} XMPP->SIP delivered): RSS median {:.1} MB in the second quarter (after warm-up), {:.1} MB in the last quarter ({:+.1} %); {:.1} MB at the end, peak {:.1} MB (samples: soak/rss.csv)",
        f.sent,
        warm as f64 / 1024.0,
        late as f64 / 1024.0,
        (late as f64 - warm as f64) / warm as f64 * 100.0,
        end as f64 / 1024.0,
        peak as f64 / 1024.0
    ))
}

/// SIP -> XMPP at `rate` for `secs` while Prosody is killed (SIGKILL) a third of the way in
/// and started again 2 s later; then the sink and the flooder log in again.
fn restart_run(
    env: &mut Env,
    dir: &Path,
    gw: &str,
    port: u16,
    rate: u64,
    secs: u64,
) -> anyhow::Result<String> {
    let rdir = dir.join(format!("{gw}-restart"));
    std::fs::create_dir_all(&rdir)?;
    let collector = restart::Collector::start(env.c2s, "rsink");
    std::thread::sleep(Duration::from_secs(1));
    let count = rate * secs;
    let sdir = rdir.clone();
    let sipp = std::thread::spawn(move || {
        run_sipp_to(&sdir, port, rate, count, secs, "rsink", &["-trace_msg"])
    });
    std::thread::sleep(Duration::from_secs(secs / 3));
    let _ = env.prosody.child.kill();
    let _ = env.prosody.child.wait();
    std::thread::sleep(Duration::from_secs(2));
    env.prosody = spawn_prosody(&env.dir.join("prosody"), env.c2s)?;
    let _ = sipp.join();
    let log = std::fs::read_dir(&rdir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("_messages.log"))
        .context("SIPp wrote no message log")?;
    let (ok, refused) = restart::sipp_answers(&log);
    drain(ok.len() as u64, || collector.count());
    let delivered = collector.finish();
    let out = restart::outcome(count, &ok, &refused, &delivered);
    eprintln!("{gw} Prosody restart: {out}");
    // The sink and the flooder lost their sessions with Prosody.
    env.xsink = xmpp::count(xmpp::login(env.c2s, "sink", "pw")?);
    env.flood = xmpp::login(env.c2s, "flood", "pw")?;
    env.flood_errors = xmpp::count(env.flood.try_clone()?);
    Ok(format!("{gw}: {out}"))
}

/// Subscriptions in stox's store by kind: (XMPP -> SIP, of them active, SIP -> XMPP). The
/// presence core writes each before it acts (write-ahead), so these are the core's own.
fn stored_subscriptions(db: &Path) -> anyhow::Result<(u64, u64, u64)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let count = |sql: &str| -> anyhow::Result<u64> {
        Ok(conn.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64)
    };
    Ok((
        count("SELECT count(*) FROM subscriptions WHERE kind = 'xmpp-to-sip'")?,
        count(
            "SELECT count(*) FROM subscriptions WHERE kind = 'xmpp-to-sip' \
             AND json_extract(data, '$.state') = 'Active'",
        )?,
        count("SELECT count(*) FROM subscriptions WHERE kind = 'sip-to-xmpp'")?,
    ))
}

/// RSS of a fresh stox with `--subs` idle subscriptions: half SIP watchers of XMPP users,
/// half XMPP users subscribed to SIP contacts, read right after the setup and again once
/// the setup's SIP transactions are gone.
fn presence_memory(
    env: &mut Env,
    dir: &Path,
    bin: &Path,
    args: &Args,
    users: u64,
) -> anyhow::Result<String> {
    let rate = args.subs_rate.max(1);
    let per_user = args.subs_per_user.max(1);
    let ((stox, port), _) = start_stox(env, dir, bin, "stox-presence", "")?;
    std::thread::sleep(Duration::from_secs(1));
    let base = status_kb(stox.pid(), "VmRSS");
    let half = args.subs / 2;
    let t0 = Instant::now();
    let target: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let watchers = sip::subscribe_watchers(
        target,
        half,
        users,
        rate,
        // stox answers slower than `rate` on a loaded box: room for a quarter of it.
        Duration::from_secs(half / rate * 4 + 60),
    )?;
    let sip_secs = t0.elapsed().as_secs_f64();
    let watchers_done = now_ns();
    eprintln!(
        "presence: {} SIP watchers subscribed ({} notified) in {sip_secs:.0} s",
        watchers.ok, watchers.notified
    );
    // XMPP users subscribe to SIP contacts, `per_user` each.
    env.sink.take();
    let t1 = Instant::now();
    let sessions = xmpp::Sessions::new();
    let mut asked = 0u64;
    for u in 0..users {
        if asked >= half {
            break;
        }
        let mut s = xmpp::login(env.c2s, &format!("x{u}"), "pw")?;
        let mut batch = String::new();
        for c in 0..per_user.min(half - asked) {
            write!(
                batch,
                "<presence to='c{u}_{c}\\40sip.test@sip.localhost' type='subscribe'/>"
            )?;
            asked += 1;
        }
        std::io::Write::write_all(&mut s, batch.as_bytes())?;
        sessions.add(s)?;
        let behind =
            Duration::from_secs_f64(asked as f64 / rate as f64).saturating_sub(t1.elapsed());
        std::thread::sleep(behind);
    }
    let sent_secs = t1.elapsed().as_secs_f64();
    // Prosody is the slow part: wait while it makes progress (bounded).
    let deadline = Instant::now() + Duration::from_secs(half / rate * 4 + 600);
    let mut last = (0, 0);
    let mut progress_at = Instant::now();
    loop {
        let (subscribes, notify_ok, _) = env.sink.subscription_counts();
        if subscribes >= asked && notify_ok >= asked {
            break;
        }
        if (subscribes, notify_ok) != last {
            last = (subscribes, notify_ok);
            progress_at = Instant::now();
        }
        if progress_at.elapsed() > Duration::from_secs(15) || Instant::now() > deadline {
            eprintln!("presence: XMPP -> SIP stalled at {subscribes} SUBSCRIBEs, {notify_ok} NOTIFY 200s of {asked}");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let xmpp_secs = t1.elapsed().as_secs_f64();
    // The contact's presence (from the NOTIFY's PIDF) follows through Prosody.
    let told_deadline = Instant::now() + Duration::from_secs(30);
    while sessions.presences.load(Ordering::SeqCst) < asked && Instant::now() < told_deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (subscribes, notify_ok, last_request) = env.sink.subscription_counts();
    let setup_rss = status_kb(stox.pid(), "VmRSS");
    let last_sip = last_request.max(watchers_done);
    let wait = Duration::from_nanos(
        (last_sip + SETUP_TRANSACTIONS_GONE.as_nanos() as u64).saturating_sub(now_ns()),
    );
    eprintln!(
        "presence: setup done ({setup_rss} kB); waiting {:.0} s for its SIP transactions to end",
        wait.as_secs_f64()
    );
    std::thread::sleep(wait);
    let rss = status_kb(stox.pid(), "VmRSS");
    let hwm = status_kb(stox.pid(), "VmHWM");
    let (outs, active, ins) = stored_subscriptions(&dir.join("stox-presence").join("stox.db"))
        .unwrap_or_else(|e| {
            eprintln!("presence: cannot read stox's store: {e}");
            (0, 0, 0)
        });
    let told = sessions.presences.load(Ordering::SeqCst);
    let logged_in = sessions.len();
    drop(sessions);
    let total = outs + ins;
    let mb = |kb: u64| kb as f64 / 1024.0;
    let per_sub = |kb: u64| (kb.saturating_sub(base) * 1024) as f64 / total.max(1) as f64;
    Ok(format!(
        "{total} idle subscriptions in stox's store ({ins} SIP -> XMPP: {} SUBSCRIBE 2xx, {} first NOTIFYs, in {sip_secs:.0} s at {rate}/s; \
         {outs} XMPP -> SIP, {active} active: {logged_in} users x {per_user}, sent in {sent_secs:.0} s, \
         {subscribes} SUBSCRIBEs and {notify_ok} NOTIFY 200s at the SIP sink, {told} contact presences to the users, in {xmpp_secs:.0} s). \
         RSS from {:.1} MB fresh: {:.1} MB right after setup ({:.0} bytes per subscription), \
         {:.1} MB idle once the setup's transactions ended ({:.0} s after its last SIP request; {:.0} bytes per subscription); peak {:.1} MB",
        watchers.ok,
        watchers.notified,
        mb(base),
        mb(setup_rss),
        per_sub(setup_rss),
        mb(rss),
        SETUP_TRANSACTIONS_GONE.as_secs_f64(),
        per_sub(rss),
        mb(hwm)
    ))
}

/// RSS of a fresh stox holding `chats` open, idle MSRP chat sessions from SIP users to
/// `users` XMPP users (logged in, each message counted where it arrives).
fn chat_memory(
    env: &mut Env,
    dir: &Path,
    bin: &Path,
    chats: u64,
    users: u64,
) -> anyhow::Result<String> {
    let (soft, _) = rlimit::Resource::NOFILE.get()?;
    anyhow::ensure!(
        chats + 1000 <= soft,
        "{chats} chat sessions need as many sockets here and in stox: the open file limit is {soft}"
    );
    let msrp = free_port();
    // The sessions must outlive the measurement: an idle timeout far beyond it.
    let extra = format!(
        "\n[msrp]\nlisten = \"127.0.0.1:{msrp}\"\n\n[chat]\nmax_sessions = {}\n\
         max_sessions_per_user = {CHATS_PER_USER}\nidle_timeout_ms = 3600000\n",
        chats + 100
    );
    let ((stox, port), _) = start_stox(env, dir, bin, "stox-chats", &extra)?;
    let mut counters = Vec::new();
    for u in 0..users {
        counters.push(xmpp::count(xmpp::login(env.c2s, &format!("c{u}"), "pw")?));
    }
    std::thread::sleep(Duration::from_secs(1));
    let base = status_kb(stox.pid(), "VmRSS");
    let target: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let t_open = Instant::now();
    let opened = chat::open(
        target,
        chats,
        users,
        1000,
        Duration::from_secs(chats / 200 + 60),
    )?;
    let delivered = drain(opened.sends_ok, || {
        counters
            .iter()
            .map(|c| c.messages.load(Ordering::SeqCst))
            .sum()
    });
    std::thread::sleep(Duration::from_secs(3));
    let rss = status_kb(stox.pid(), "VmRSS");
    let hwm = status_kb(stox.pid(), "VmHWM");
    let fds = std::fs::read_dir(format!("/proc/{}/fd", stox.pid()))
        .map(|d| d.count())
        .unwrap_or(0);
    // Again once the INVITE server transactions have ended (Timer L, 64*T1 = 32 s after
    // the 200, RFC 6026): what the idle sessions themselves hold.
    let since_last = (t_open.elapsed().as_secs_f64() - opened.secs).max(0.0);
    std::thread::sleep(Duration::from_secs(35).saturating_sub(Duration::from_secs_f64(since_last)));
    let rss_idle = status_kb(stox.pid(), "VmRSS");
    let errors: u64 = counters
        .iter()
        .map(|c| c.errors.load(Ordering::SeqCst))
        .sum();
    for c in &counters {
        c.stop();
    }
    let open = opened.streams.len() as u64;
    drop(opened.streams);
    drop(stox);
    let mut refused: Vec<_> = opened.refused.into_iter().collect();
    refused.sort();
    let mut why: Vec<_> = opened.why_failed.into_iter().collect();
    why.sort();
    eprintln!(
        "chats: {open} open, RSS {:.1} MB from {:.1} MB",
        rss as f64 / 1024.0,
        base as f64 / 1024.0
    );
    Ok(format!(
        "{open} open chat sessions: RSS {:.1} MB (from {:.1} MB at start; {:.0} bytes per session), peak {:.1} MB; \
         {:.1} MB ({:.0} bytes per session) 35 s after the last INVITE; \
         {} INVITEs to {users} XMPP users in {:.0} s, {} answered 200, refused {refused:?}, \
         {} SENDs answered 200 ({} not: {why:?}), {delivered} messages delivered at the XMPP users, \
         {errors} error stanzas, {} BYEs; stox held {fds} file descriptors",
        rss as f64 / 1024.0,
        base as f64 / 1024.0,
        (rss.saturating_sub(base) * 1024) as f64 / open.max(1) as f64,
        hwm as f64 / 1024.0,
        rss_idle as f64 / 1024.0,
        (rss_idle.saturating_sub(base) * 1024) as f64 / open.max(1) as f64,
        opened.invited,
        opened.secs,
        opened.answered,
        opened.sends_ok,
        opened.sends_failed,
        opened.byes,
    ))
}
