//! `stox --config PATH [--check-config]`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// A SIP <-> XMPP gateway, run as an XMPP external component.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The configuration file.
    #[arg(long, short, default_value = "component.toml")]
    config: PathBuf,
    /// Validate the configuration and exit: 0 when valid, 78 with one line naming the key otherwise.
    #[arg(long)]
    check_config: bool,
}

/// sysexits.h EX_CONFIG.
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match stox::config::Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stox: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    if args.check_config {
        println!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // One worker: the current-thread scheduler, which wakes tasks without the cross-thread
    // queues and atomics the multi-thread one needs.
    let mut builder = match config.runtime.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("stox: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    runtime.spawn(trim_heap());
    let result = runtime.block_on(stox::gateway::run(config, shutdown_signal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "stox stopped.");
            eprintln!("stox: {e}");
            ExitCode::FAILURE
        }
    }
}

/// glibc keeps the pages a burst freed (its SIP transactions, queued stanzas) resident
/// for good; giving them back now and then makes RSS follow what is in use.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
async fn trim_heap() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // SAFETY: malloc_trim has no preconditions; it only returns free memory.
        let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
