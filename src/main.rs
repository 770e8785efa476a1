//! The `azr` binary: parse the command line, run, and turn errors into a message and exit code.

mod cli;

use clap::Parser;

/// glibc hands freed blocks of over 128 KiB straight back to the kernel, and a training step
/// frees and re-allocates gigabytes of activations per micro-batch, each page faulted in and
/// zeroed anew. Serving blocks up to 32 MiB from the heap and never trimming it cuts the
/// update's system time in half and its wall time by ~9% (BENCHMARKS.md, "Policy update").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 1 << 30);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// candle's elementwise ops run on its own thread pool, whose workers spin 25,000 times after
/// each op before parking, while matmuls run on rayon's: on a 2-core machine the spinner takes
/// a core from the next product. 500 spins made SmolLM2's update ~6% faster and generation no
/// slower (BENCHMARKS.md, "Policy update"). A value set in the environment wins.
fn park_idle_pool_workers_sooner() {
    const VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(VAR).is_none() {
        // Before any thread exists, so nothing reads the environment concurrently.
        std::env::set_var(VAR, "500");
    }
}

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    park_idle_pool_workers_sooner();
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose, args.log_file());
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::from(2)
        }
    }
}
