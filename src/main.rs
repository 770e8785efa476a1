//! The `azr` binary: parse the command line, run, and turn errors into a message and exit code.

mod cli;

use clap::Parser;

/// glibc hands freed blocks of over 128 KiB straight back to the kernel, and a training step
/// or a prompt pass frees and re-allocates gigabytes of activations, each page faulted in and
/// zeroed anew. Every block is served from the heap (none mapped on its own: a prompt pass's
/// products and the LM head's logits are 30-80 MB each), from one arena (passes run on rayon's
/// workers, whose own arenas would map blocks over 64 MB apart again), and the heap is never
/// trimmed on free: `azr bench generate` at 660-token prompts takes 1.4 M page faults instead
/// of 7.9 M and prefills ~10% faster (BENCHMARKS.md, "Generation", fourteenth session).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
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
