//! `gf`: the Gigafactory operator CLI. Parses arguments and hands over to the library,
//! which loads the configuration, sets up logging and the shutdown signal.

use clap::Parser;

/// mimalloc rather than glibc's malloc: a coordinator under load spent about a quarter
/// of its CPU in glibc's malloc and free (decoding and encoding job records), and the
/// coordinator's CPU per job is what bounds throughput on a small machine
/// (BENCHMARKS.md, issue 20).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = gf_cli::Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(gf_cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
