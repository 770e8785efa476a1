//! `cargo bench --bench sandbox [-- --checks N --native-checks N --threads N]`: the same
//! benchmark as `azr bench sandbox`, printed as a Markdown table for BENCHMARKS.md.

use clap::Parser;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    options: azr::bench::sandbox::Options,
}

fn main() -> anyhow::Result<()> {
    // cargo passes `--bench` to harness-less benches; it is not ours.
    let args = std::env::args().filter(|a| a != "--bench");
    let args = Args::parse_from(args);
    let report = azr::bench::sandbox::run(&args.options, &Default::default())?;
    println!("{report}");
    Ok(())
}
