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

/// glibc keeps the pages of freed chunks inside its heap: transactions held for timer J
/// (32 s) interleave with short-lived message buffers, and the holes between them made RSS
/// grow by ~75 % over a 10-minute soak while the bytes in use stayed flat. `malloc_trim`
/// hands those pages back (README, Benchmark).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn start_heap_trimmer() {
    let _ = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_secs(10));
            // SAFETY: malloc_trim takes no pointers; glibc locks its arenas itself.
            unsafe {
                libc::malloc_trim(0);
            }
        });
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn start_heap_trimmer() {}

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
    stox::log::init(&config.log);
    // Every MSRP chat session and SIP TCP/TLS connection is a descriptor: the soft limit
    // (1024 under many init systems) would cap chat sessions far below chat.max_sessions
    // while the hard limit allows them.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "Open file limit."),
        Err(e) => tracing::warn!(error = %e, "Cannot raise the open file limit."),
    }
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
    start_heap_trimmer();
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
